"""Pytest fixtures for the messaging emulator. Not registered as a plugin: wire it in a conftest
with `from eventflow_emulators.messaging.pytest_fixtures import messaging_emulator_server`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import RunningMessagingEmulator, messaging_emulator


@pytest.fixture(scope="session")
def messaging_emulator_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningMessagingEmulator]:
    """One emulator for the test session, on a free port, with the repository's configs."""
    with messaging_emulator(tmp_path_factory.mktemp("messaging-emulator")) as emulator:
        yield emulator
