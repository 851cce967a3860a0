"""The files make test hands out first (conftest.py) are files of the suite: a file renamed or
removed there would silently drop out of the order and be handed out late again."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_file_started_first_is_a_test_file_of_the_suite() -> None:
    start_first = runpy.run_path(str(ROOT / "conftest.py"))["START_FIRST"]
    assert start_first, "the longest files are listed"
    missing = [path for path in start_first if not (ROOT / path).is_file()]
    assert not missing, f"no such test files: {missing}"
    assert len(set(start_first)) == len(start_first), "each file once"
