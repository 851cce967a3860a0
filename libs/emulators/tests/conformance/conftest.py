"""Conformance fixtures: the emulator (session-wide); the npm servers come from eventflow_local's
pytest plugin."""

from eventflow_emulators.cosmos.pytest_fixtures import cosmos_emulator_server

__all__ = ["cosmos_emulator_server"]
