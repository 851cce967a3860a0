"""Pytest fixtures for the Cosmos emulator. Load them from a conftest.py:

    from eventflow_emulators.cosmos.pytest_fixtures import cosmos_emulator_server  # noqa: F401

`cosmos_emulator_server` runs one emulator per test session (4 partition key ranges, data in a
session temporary folder); tests should use their own database or container names.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventflow_emulators.cosmos.testing import RunningCosmosEmulator, cosmos_emulator


@pytest.fixture(scope="session")
def cosmos_emulator_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningCosmosEmulator]:
    with cosmos_emulator(tmp_path_factory.mktemp("cosmos-emulator")) as emulator:
        yield emulator
