"""Kept only until the last tests move off this package: the fixtures and case-set helpers now live
in `eventflow_emulators` (its pytest plugin serves `azurite_server` and `cosmos_server`)."""

from eventflow_emulators.conformance import BackendCases, setting_or_skip

__all__ = ["BackendCases", "setting_or_skip"]
