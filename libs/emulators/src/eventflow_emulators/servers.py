"""Start the npm-installed test servers on 127.0.0.1: Azurite (Blob) and @vercel/cosmosdb-server.

For tests only. `make setup` installs both with `npm ci` at the repository root. When node or the
packages are missing, `ServerUnavailableError` says why, so a test can skip with that reason;
with EVENTFLOW_REQUIRE_SERVERS=1 (as in CI) the caller should fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
COSMOS_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)
START_TIMEOUT_S = 30.0


class ServerUnavailableError(RuntimeError):
    """The server cannot be started here (no node, packages not installed, did not listen)."""


def servers_required() -> bool:
    """Whether a missing server is a failure rather than a reason to skip (CI sets it)."""
    return os.environ.get("EVENTFLOW_REQUIRE_SERVERS", "") == "1"


@dataclass(frozen=True)
class RunningServer:
    port: int
    connection_string: str
    endpoint: str
    key: str


def repository_root() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "package.json").is_file() and (parent / "uv.lock").is_file():
            return parent
    raise ServerUnavailableError("cannot find the repository root (package.json beside uv.lock)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerUnavailableError(
                f"server exited with {process.returncode}: {log.read_text()[-500:]}"
            )
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServerUnavailableError(f"server did not listen on 127.0.0.1:{port} in {START_TIMEOUT_S}s")


@contextmanager
def _node_server(
    arguments: Sequence[str], port: int, log: Path, environment: dict[str, str] | None = None
) -> Iterator[None]:
    node = shutil.which("node")
    if node is None:
        raise ServerUnavailableError("node is not installed")
    root = repository_root()
    script = root / arguments[0]
    if not script.exists():
        raise ServerUnavailableError(f"{arguments[0]} is missing: run `make setup` (npm ci)")
    with log.open("wb") as output:
        process = subprocess.Popen(
            [node, str(script), *arguments[1:]],
            cwd=root,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(environment or {})},
        )
    try:
        _wait_for_port(port, process, log)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def azurite(workdir: Path, *, port: int = 0) -> Iterator[RunningServer]:
    """Azurite's Blob service, in memory, on `port` (0: a free one)."""
    port = port or free_port()
    arguments = [
        "node_modules/azurite/dist/src/blob/main.js",
        "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
        "--skipApiVersionCheck", "--disableTelemetry", "--silent",
    ]  # fmt: skip
    with _node_server(arguments, port, workdir / "azurite.log"):
        endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        yield RunningServer(
            port=port,
            connection_string=(
                f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
            ),
            endpoint=endpoint,
            key=AZURITE_KEY,
        )


@contextmanager
def cosmosdb_server(workdir: Path) -> Iterator[RunningServer]:
    """@vercel/cosmosdb-server over HTTPS (self-signed; the SDK skips verification on 127.0.0.1)."""
    port = free_port()
    arguments = ["tools/local-servers/cosmos-start.js"]
    with _node_server(arguments, port, workdir / "cosmosdb-server.log", {"COSMOS_PORT": str(port)}):
        endpoint = f"https://127.0.0.1:{port}/"
        yield RunningServer(
            port=port,
            connection_string=f"AccountEndpoint={endpoint};AccountKey={COSMOS_KEY};",
            endpoint=endpoint,
            key=COSMOS_KEY,
        )
