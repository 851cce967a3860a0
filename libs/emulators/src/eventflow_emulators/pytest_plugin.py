"""Pytest fixtures of the emulators, loaded wherever this package is installed (entry point
`pytest11`): `cosmos_emulator_server`, one Cosmos DB emulator per test session."""

from eventflow_emulators.cosmos.pytest_fixtures import cosmos_emulator_server

__all__ = ["cosmos_emulator_server"]
