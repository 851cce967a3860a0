"""Pytest fixtures of the emulators, loaded wherever this package is installed (entry point
`pytest11`): `cosmos_emulator_server` and `messaging_emulator_server`, one emulator of each per test
session (the messaging one with the repository's emulators/*.json configs)."""

from eventflow_emulators.cosmos.pytest_fixtures import cosmos_emulator_server
from eventflow_emulators.messaging.pytest_fixtures import messaging_emulator_server

__all__ = ["cosmos_emulator_server", "messaging_emulator_server"]
