"""Start the emulator as a subprocess for tests and local tools.

with messaging_emulator(tmp_path) as emulator:
    EventHubProducerClient.from_connection_string(emulator.connection_string, eventhub_name="orders")
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .admin import MessagingEmulatorAdmin
from .server import DEFAULT_KEY, DEFAULT_KEY_NAME

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_LISTENING = re.compile(r"listening on amqp://([^:\s]+):(\d+)")
_ADMIN = re.compile(r"admin on (http://\S+)")


@dataclass(frozen=True)
class RunningMessagingEmulator:
    port: int
    connection_string: (
        str  # sb://127.0.0.1:<port>;SharedAccessKeyName=...;UseDevelopmentEmulator=true
    )
    admin: MessagingEmulatorAdmin
    pid: int


def repository_config(name: str) -> Path | None:
    """`emulators/<name>` of the repository this package is checked out in, if there is one."""
    for folder in [Path.cwd(), *Path(__file__).resolve().parents]:
        candidate = folder / "emulators" / name
        if candidate.is_file():
            return candidate
    return None


def connection_string(host: str, port: int, key: str = DEFAULT_KEY) -> str:
    return (
        f"Endpoint=sb://{host}:{port};SharedAccessKeyName={DEFAULT_KEY_NAME};"
        f"SharedAccessKey={key};UseDevelopmentEmulator=true"
    )


@contextmanager
def messaging_emulator(
    data_dir: Path,
    *,
    eventhubs_config: Path | None = None,
    servicebus_config: Path | None = None,
    port: int = 0,
    frame_timeout: float | None = None,
) -> Iterator[RunningMessagingEmulator]:
    """Run the emulator until the block ends (SIGTERM, then SIGKILL after 10 s).

    Configs default to the repository's emulators/eventhubs.json and emulators/servicebus.json.
    Raises RuntimeError with the emulator's output if it does not print its listening line in
    30 s or exits first.
    """
    eventhubs_config = eventhubs_config or repository_config("eventhubs.json")
    servicebus_config = servicebus_config or repository_config("servicebus.json")
    command = [sys.executable, "-m", "eventflow_emulators.messaging.server", "--host", "127.0.0.1",
               "--port", str(port), "--admin-port", "0", "--data", str(data_dir)]  # fmt: skip
    if eventhubs_config is not None:
        command += ["--eventhubs-config", str(eventhubs_config)]
    if servicebus_config is not None:
        command += ["--servicebus-config", str(servicebus_config)]
    if frame_timeout is not None:
        command += ["--frame-timeout", str(frame_timeout)]
    kept = os.environ.get("EVENTFLOW_MESSAGING_EMULATOR_LOG")  # keep the log there, for debugging
    log = (
        open(kept, "wb")  # noqa: SIM115
        if kept
        else tempfile.NamedTemporaryFile(prefix="messaging-emulator-", suffix=".log", delete=False)  # noqa: SIM115
    )
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    log_path = Path(log.name)
    try:
        bound_port, admin_url = _wait_for_start(process, log_path)
        yield RunningMessagingEmulator(
            port=bound_port,
            connection_string=connection_string("127.0.0.1", bound_port),
            admin=MessagingEmulatorAdmin(admin_url),
            pid=process.pid,
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        if not kept:
            log_path.unlink(missing_ok=True)


def _wait_for_start(process: subprocess.Popen[bytes], log_path: Path) -> tuple[int, str]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        listening, admin = _LISTENING.search(text), _ADMIN.search(text)
        if listening and admin:
            return int(listening.group(2)), admin.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"the messaging emulator exited with {process.returncode}:\n{text}")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(
        f"the messaging emulator did not start in {START_TIMEOUT_S} s:\n"
        + log_path.read_text(errors="replace")
    )
