"""What a conformance case set needs: one abstract class of cases run against several backends
(the project's emulators, the npm servers, the official emulators or Azure by setting)."""

from __future__ import annotations

import os
from typing import ClassVar

import pytest


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
