"""Start the emulator as a child process for a test or a local run.

with cosmos_emulator(tmp_path / "cosmos") as cosmos:
    async with CosmosClient(cosmos.endpoint, credential=cosmos.key) as client: ...
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eventflow_emulators.cosmos.admin import CosmosEmulatorAdmin
from eventflow_emulators.cosmos.server import EMULATOR_KEY

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_LISTENING = "eventflow-cosmos-emulator listening on "


class EmulatorStartError(RuntimeError):
    """The emulator exited or did not print its listening line in time; the message has its log."""


@dataclass(frozen=True)
class RunningCosmosEmulator:
    endpoint: str  # "http://127.0.0.1:<port>/"
    key: str
    connection_string: str  # "AccountEndpoint=...;AccountKey=...;"
    admin: CosmosEmulatorAdmin
    pid: int


@contextmanager
def cosmos_emulator(
    data_dir: Path,
    *,
    partition_key_ranges: int = 4,
    port: int = 0,
    extra_args: Sequence[str] = (),
) -> Iterator[RunningCosmosEmulator]:
    """Run `python -m eventflow_emulators.cosmos` on 127.0.0.1 with its data in `data_dir`;
    SIGTERM it on exit. Raises EmulatorStartError (with the log) if it does not start."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "emulator.log"
    command = [
        sys.executable, "-m", "eventflow_emulators.cosmos", "--host", "127.0.0.1",
        "--port", str(port), "--data", str(data_dir),
        "--partition-key-ranges", str(partition_key_ranges), *extra_args,
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
    try:
        endpoint = _wait_for_listening(process, log_path)
        yield RunningCosmosEmulator(
            endpoint=endpoint,
            key=_key(extra_args),
            connection_string=f"AccountEndpoint={endpoint};AccountKey={_key(extra_args)};",
            admin=CosmosEmulatorAdmin(endpoint),
            pid=process.pid,
        )
    finally:
        _stop(process)


def _key(extra_args: Sequence[str]) -> str:
    arguments = list(extra_args)
    if "--key" in arguments:
        return arguments[arguments.index("--key") + 1]
    return EMULATOR_KEY


def _wait_for_listening(process: subprocess.Popen[bytes], log_path: Path) -> str:
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    deadline = time.monotonic() + START_TIMEOUT_S
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            selector.select(timeout=0.1)
            output += process.stdout.read() or b""
            for line in output.decode(errors="replace").splitlines():
                if line.startswith(_LISTENING):
                    return line[len(_LISTENING) :].strip()
            if process.poll() is not None:
                break
    _stop(process)
    raise EmulatorStartError(
        f"the Cosmos emulator did not start (exit code {process.returncode}); stdout: "
        f"{output.decode(errors='replace')[-2000:]!r}; log: {log_path.read_text()[-4000:]}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
