"""Cosmos DB emulator: the REST protocol over HTTP."""
