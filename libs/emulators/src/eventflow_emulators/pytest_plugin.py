"""Pytest fixtures of the emulators and the npm test servers, loaded wherever this package is
installed (entry point `pytest11`): one of each per test session.

- `cosmos_emulator_server`, `messaging_emulator_server` (the repository's emulators/*.json configs);
- `azurite_server` (Azurite's Blob service) and `cosmos_server` (@vercel/cosmosdb-server), which skip
  with the reason when node or the packages are missing, unless EVENTFLOW_REQUIRE_SERVERS=1 (CI),
  where they fail instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventflow_emulators.cosmos.pytest_fixtures import cosmos_emulator_server
from eventflow_emulators.messaging.pytest_fixtures import messaging_emulator_server
from eventflow_emulators.servers import (
    RunningServer,
    ServerUnavailableError,
    azurite,
    cosmosdb_server,
    servers_required,
)

__all__ = ["azurite_server", "cosmos_emulator_server", "cosmos_server", "messaging_emulator_server"]


def _unavailable(error: ServerUnavailableError) -> None:
    if servers_required():
        pytest.fail(f"EVENTFLOW_REQUIRE_SERVERS=1 but the server is unavailable: {error}")
    pytest.skip(f"server unavailable: {error}")


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    try:
        with azurite(tmp_path_factory.mktemp("azurite")) as server:
            yield server
    except ServerUnavailableError as error:
        _unavailable(error)


@pytest.fixture(scope="session")
def cosmos_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    try:
        with cosmosdb_server(tmp_path_factory.mktemp("cosmos")) as server:
            yield server
    except ServerUnavailableError as error:
        _unavailable(error)
