"""Pytest fixtures for the npm test servers, loaded as a plugin wherever this package is installed.

`azurite_server` and `cosmos_server` start once per test session on free 127.0.0.1 ports. When a
server cannot start they skip with the reason, unless EVENTFLOW_REQUIRE_SERVERS=1 (CI), where they
fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import ClassVar

import pytest

from eventflow_local.servers import (
    RunningServer,
    ServerUnavailableError,
    azurite,
    cosmosdb_server,
    servers_required,
)


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


def setting_or_skip(name: str) -> str:
    """A connection setting for the emulator / Azure backends, or skip saying which is missing."""
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: no emulator or Azure backend for this run")
    return value


class BackendCases:
    """Base of a case set run against several backends: a subclass names its backend and the cases
    that backend cannot run, with why; those skip with the reason instead of failing."""

    backend: ClassVar[str]
    not_applicable: ClassVar[dict[str, str]] = {}

    @pytest.fixture(autouse=True)
    def _applicable(self, request: pytest.FixtureRequest) -> None:
        reason = self.not_applicable.get(request.node.originalname)
        if reason:
            pytest.skip(f"not applicable to {self.backend}: {reason}")
