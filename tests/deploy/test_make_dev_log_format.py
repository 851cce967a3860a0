"""make dev's log format, decided by make itself under a pseudo-terminal and through a pipe:
coloured console lines on a terminal, JSON lines otherwise. The decision is the Makefile's
DEV_LOG_FORMAT, which `make dev` runs before honcho and `make dev-log-format` prints."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="no make on PATH")


def clean_env(**extra: str) -> dict[str, str]:
    # Run as a make of its own, not a sub-make of `make test` (which would print "Entering directory").
    skip = {"EVENTFLOW_LOG_FORMAT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}
    env = {k: v for k, v in os.environ.items() if k not in skip}
    env.update(extra)
    return env


def under_a_terminal(command: list[str], env: dict[str, str]) -> str:
    """Run `command` with its standard output on a pseudo-terminal; what it printed."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                   stdout=follower, stderr=subprocess.PIPE)  # fmt: skip
    finally:
        os.close(follower)
    output = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: the terminal's other side is closed, all was read
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        assert process.wait(timeout=30) == 0, process.stderr.read() if process.stderr else ""
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
        if process.stderr:
            process.stderr.close()
    return output.decode().replace("\r\n", "\n")


def test_on_a_terminal_make_dev_logs_coloured_console_lines() -> None:
    assert MAKE
    printed = under_a_terminal([MAKE, "-s", "dev-log-format"], clean_env())
    assert printed == "console\n"


def test_through_a_pipe_make_dev_logs_json_lines() -> None:
    assert MAKE
    result = subprocess.run([MAKE, "-s", "dev-log-format"], cwd=ROOT, env=clean_env(),
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert result.stdout == "json\n"


def test_a_format_the_caller_sets_wins() -> None:
    assert MAKE
    printed = under_a_terminal(
        [MAKE, "-s", "dev-log-format"], clean_env(EVENTFLOW_LOG_FORMAT="json")
    )
    assert printed == "json\n"


def test_the_old_decision_inside_a_command_substitution_never_sees_the_terminal() -> None:
    """Why the decision moved: `$([ -t 1 ] ...)` tests the substitution's pipe, so it said json
    even on a terminal."""
    printed = under_a_terminal(
        ["bash", "-c", 'echo "$([ -t 1 ] && echo console || echo json)"'], clean_env()
    )
    assert printed == "json\n"


def test_make_dev_runs_that_decision_before_honcho() -> None:
    assert MAKE
    result = subprocess.run([MAKE, "-n", "dev"], cwd=ROOT, env=clean_env(),
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    dry = result.stdout
    decision = subprocess.run([MAKE, "-n", "dev-log-format"], cwd=ROOT, env=clean_env(),
                              capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    shared = decision.split('; echo "$EVENTFLOW_LOG_FORMAT"')[0].strip()
    assert shared.startswith("if [ -z ")
    assert "[ -t 1 ]" in shared
    assert shared in dry
    assert dry.index(shared) < dry.index("honcho -f Procfile start")
    assert "$([ -t 1 ]" not in dry
    assert "EVENTFLOW_LOG_FORMAT=$(" not in dry
