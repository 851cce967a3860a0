"""The conformance suite's fixtures; the server fixtures come from eventflow_local.pytest_fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def environment_folder(tmp_path: Path) -> Path:
    return tmp_path / "local"
