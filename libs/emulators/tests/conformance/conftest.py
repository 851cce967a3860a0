"""The conformance suite's fixtures: Azurite comes from eventflow_local's pytest plugin, the
messaging emulator from eventflow_emulators.messaging.pytest_fixtures."""

from __future__ import annotations

from eventflow_emulators.messaging.pytest_fixtures import messaging_emulator_server

__all__ = ["messaging_emulator_server"]
