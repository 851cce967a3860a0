"""`--shutdown-delay`: after SIGTERM the emulator keeps serving for that long (make dev stops every
process at once; the services still settle and release in that time), then exits 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_the_emulator_serves_through_its_shutdown_delay_then_exits(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "eventflow_emulators.messaging.server", "--port", "0",
         "--admin-port", "0", "--data", str(tmp_path), "--shutdown-delay", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on amqp://" in line, line
        port = int(line.rsplit(":", 1)[1])
        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert _accepts(port), "still serving right after SIGTERM"
        assert process.wait(timeout=15) == 0
        assert time.monotonic() - stopped_at >= 1.5, "it kept serving for its delay"
        assert not _accepts(port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
