"""Fixtures of the emulator's own tests."""

from eventflow_emulators.cosmos.pytest_fixtures import cosmos_emulator_server

__all__ = ["cosmos_emulator_server"]
