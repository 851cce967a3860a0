"""Adapters: the only modules that import an Azure SDK."""
