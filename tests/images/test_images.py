"""The four service images, built (make images) and run on a local Docker engine: the entrypoint is
the service as PID 1, uid 10001, on a read-only root filesystem; no settings -> one line and exit 2;
SIGTERM while the backends are still being reached -> exit 0 at once; nothing but the service's
environment inside; with backends given (EVENTFLOW_IMAGES_BACKEND_ENV), healthy, then stopped with
exit 0. Run by `make test-images` (EVENTFLOW_TEST_IMAGES=1), which starts the engine, builds the
images and gives them the project's emulators as containers (cosmos, messaging and azurite of
docker-compose.local.yml, on that project's network); skipped in plain `make test`."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("EVENTFLOW_TEST_IMAGES") != "1",
    reason="image tests need a Docker engine and the built images: run `make test-images`",
)

TAG = os.environ.get("EVENTFLOW_IMAGE_TAG", "dev")
SIZE_BUDGET_MB = 350  # the service's environment on python:3.11-slim-bookworm
STOP_SECONDS = 5  # "at once": well inside the 10 s docker stop grants by default
BACKEND_ENV = os.environ.get("EVENTFLOW_IMAGES_BACKEND_ENV", "")
BACKEND_NETWORK = os.environ.get("EVENTFLOW_IMAGES_BACKEND_NETWORK", "host")
# A port that accepts connections and never answers, in the service's own network namespace (the
# container has no other network): every backend looks like it is still starting.
SILENT_PORT = 9999
SILENT_BACKEND = f"""
import socket
listener = socket.create_server(("127.0.0.1", {SILENT_PORT}))
held = []
print("listening", flush=True)
while True:
    held.append(listener.accept()[0])
    print("accepted", flush=True)
"""
# The connection-string settings (today's `emulator` mode) point the services at that port.
CONNECTING_MODE = "emulator"
KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
HTTP = f"http://127.0.0.1:{SILENT_PORT}/"
AMQP = f"Endpoint=sb://127.0.0.1:{SILENT_PORT};SharedAccessKeyName=k;SharedAccessKey=a2V5;UseDevelopmentEmulator=true;"
BLOB = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint={HTTP}devstoreaccount1;"
# What the image must not hold: the build tool, a compiler, tests, the local stand-ins.
CONTENTS_PROBE = """
import importlib.util, json, os, shutil
found = {"uv": [], "compiler": [], "tests": [], "eventflow_emulators": None, "build_tree": os.path.exists("/src")}
for tool in ("gcc", "cc", "c++", "g++", "clang", "tcc"):
    if shutil.which(tool):
        found["compiler"].append(shutil.which(tool))
for top, dirs, files in os.walk("/"):
    if top == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    for name in files:
        path = os.path.join(top, name)
        if name in ("uv", "uvx"):
            found["uv"].append(path)
        if name == "conftest.py" or ("eventflow" in path and (name.startswith("test_") or "/tests/" in path)):
            found["tests"].append(path)
spec = importlib.util.find_spec("eventflow_emulators")
found["eventflow_emulators"] = spec and spec.origin
print(json.dumps(found))
"""


@dataclass(frozen=True)
class Service:
    directory: str
    prefix: str
    missing: tuple[str, ...]  # what a bare start in Azure mode must name
    connecting: dict[str, str]
    http_env: tuple[str, str]  # host and port settings
    port: int

    @property
    def image(self) -> str:
        return f"eventflow-{self.directory}:{TAG}"

    @property
    def script(self) -> str:
        return f"eventflow-{self.directory}"


SERVICES = [
    Service("producer-api", "PRODUCER_", ("PRODUCER_COSMOS_ENDPOINT",),
            {"PRODUCER_COSMOS_ENDPOINT": HTTP, "PRODUCER_COSMOS_KEY": KEY},
            ("PRODUCER_HOST", "PRODUCER_PORT"), 8000),
    Service("publisher", "PUBLISHER_", ("PUBLISHER_COSMOS_ENDPOINT", "PUBLISHER_EVENTHUBS_NAMESPACE"),
            {"PUBLISHER_COSMOS_ENDPOINT": HTTP, "PUBLISHER_COSMOS_KEY": KEY,
             "PUBLISHER_EVENTHUBS_CONNECTION_STRING": AMQP},
            ("PUBLISHER_HEALTH_HOST", "PUBLISHER_HEALTH_PORT"), 8001),
    Service("subscriber", "SUBSCRIBER_", ("SUBSCRIBER_EVENTHUBS_NAMESPACE", "_STORAGE_ACCOUNT_URL", "_SERVICEBUS_NAMESPACE"),
            {"SUBSCRIBER_EVENTHUBS_CONNECTION_STRING": AMQP, "SUBSCRIBER_STORAGE_CONNECTION_STRING": BLOB,
             "SUBSCRIBER_SERVICEBUS_CONNECTION_STRING": AMQP},
            ("SUBSCRIBER_HEALTH_HOST", "SUBSCRIBER_HEALTH_PORT"), 8002),
    Service("consumer", "CONSUMER_", ("CONSUMER_SERVICEBUS_NAMESPACE", "CONSUMER_COSMOS_ENDPOINT"),
            {"CONSUMER_COSMOS_ENDPOINT": HTTP, "CONSUMER_COSMOS_KEY": KEY,
             "CONSUMER_SERVICEBUS_CONNECTION_STRING": AMQP},
            ("CONSUMER_HTTP_HOST", "CONSUMER_HTTP_PORT"), 8003),
]  # fmt: skip


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def inspect(name: str) -> dict[str, object]:
    result = docker("inspect", name)
    assert result.returncode == 0, result.stderr
    info: dict[str, object] = json.loads(result.stdout)[0]
    return info


def wait_for(what: str, check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.2)


def state(name: str) -> dict[str, object]:
    value = inspect(name)["State"]
    assert isinstance(value, dict)
    return value


@pytest.fixture(scope="session", autouse=True)
def engine() -> None:
    result = docker("info", "--format", "{{.ServerVersion}}")
    assert result.returncode == 0, f"no Docker engine answers: {result.stderr.strip()}"


@pytest.fixture(params=SERVICES, ids=[service.directory for service in SERVICES])
def service(request: pytest.FixtureRequest) -> Service:
    value: Service = request.param
    assert docker("image", "inspect", value.image).returncode == 0, f"{value.image} not built"
    return value


@pytest.fixture
def containers() -> Iterator[Callable[..., str]]:
    """Starts detached containers (labelled, named uniquely) and removes them after the test."""
    names: list[str] = []

    def start(*args: str) -> str:
        name = f"eventflow-test-{uuid.uuid4().hex[:12]}"
        result = docker("run", "-d", "--name", name, "--label", "eventflow-test-images=1", *args)
        assert result.returncode == 0, result.stderr
        names.append(name)
        return name

    yield start
    if names:
        docker("rm", "-f", *names)


@pytest.fixture
def connecting(service: Service, containers: Callable[..., str]) -> str:
    """The service on a read-only root filesystem, with no network but a silent backend in its own
    namespace; returned once it has connected to that backend (signal handlers are in place)."""
    backend = containers(
        "--network", "none", "--entrypoint", "python", service.image, "-c", SILENT_BACKEND
    )
    wait_for("silent backend", lambda: "listening" in docker("logs", backend).stdout, 30)
    env = {f"{service.prefix}MODE": CONNECTING_MODE, **service.connecting}
    name = containers("--network", f"container:{backend}", "--read-only",
                      *(f"--env={key}={value}" for key, value in env.items()), service.image)  # fmt: skip
    wait_for("connection to the backend", lambda: "accepted" in docker("logs", backend).stdout, 60)
    assert state(name)["Running"], docker("logs", name).stderr
    return name


def test_the_image_runs_its_service_as_10001_in_azure_mode_unless_told_otherwise(
    service: Service,
) -> None:
    config = inspect(service.image)["Config"]
    assert isinstance(config, dict)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == [service.script]
    assert f"{service.prefix}MODE=azure" in config["Env"]
    assert config["Healthcheck"]["Test"][0] == "CMD"


def test_with_no_settings_it_exits_2_with_one_line_naming_the_missing_ones(
    service: Service,
) -> None:
    result = docker("run", "--rm", "--network", "none", "--read-only", service.image)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{service.script}: invalid settings: mode=azure needs")
    for setting in service.missing:
        assert setting in lines[0]


def test_the_service_is_pid_1_as_uid_10001_on_a_read_only_root(
    service: Service, connecting: str
) -> None:
    command = docker("exec", connecting, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert f"/app/.venv/bin/{service.script}" in command
    status = dict(
        line.split(":", 1)
        for line in docker("exec", connecting, "cat", "/proc/1/status").stdout.splitlines()
    )
    assert status["Uid"].split() == ["10001"] * 4
    assert status["Gid"].split() == ["10001"] * 4
    host_config = inspect(connecting)["HostConfig"]
    assert isinstance(host_config, dict)
    assert host_config["ReadonlyRootfs"] is True
    assert not host_config.get("Tmpfs"), "no writable scratch space is needed"
    assert docker("exec", connecting, "touch", "/app/probe").returncode != 0


def test_sigterm_while_still_connecting_stops_it_at_once_with_exit_0(connecting: str) -> None:
    started = time.monotonic()
    assert docker("stop", "--time", "10", connecting).returncode == 0
    elapsed = time.monotonic() - started
    final = state(connecting)
    logs = docker("logs", connecting).stderr[-2000:]
    assert final["ExitCode"] == 0, logs
    assert elapsed < STOP_SECONDS, (
        f"took {elapsed:.1f} s: the engine killed it after the grace period"
    )


def test_the_image_holds_no_uv_compiler_tests_or_emulators(service: Service) -> None:
    result = docker("run", "--rm", "--network", "none", "--read-only", "--entrypoint", "python", service.image, "-c", CONTENTS_PROBE)  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found == {
        "uv": [],
        "compiler": [],
        "tests": [],
        "eventflow_emulators": None,
        "build_tree": False,
    }


def test_the_image_stays_within_its_size_budget(service: Service) -> None:
    size_mb = int(docker("image", "inspect", "--format", "{{.Size}}", service.image).stdout) / 1e6
    print(f"{service.image}: {size_mb:.0f} MB")  # noqa: T201 - the size table of the run
    assert size_mb < SIZE_BUDGET_MB


@pytest.mark.skipif(
    not BACKEND_ENV,
    reason="needs reachable backends (make test-images starts the emulator containers): or set "
    "EVENTFLOW_IMAGES_BACKEND_ENV to a docker --env-file with the four services' connection settings "
    "(and EVENTFLOW_IMAGES_BACKEND_NETWORK, default host)",
)
def test_with_its_backends_it_turns_healthy_and_stops_cleanly(
    service: Service, containers: Callable[..., str]
) -> None:
    given = [line.split("=", 1)[0] for line in Path(BACKEND_ENV).read_text().splitlines()]
    if not any(name.startswith(service.prefix) for name in given):
        pytest.skip(
            f"no backend for the {service.directory} here yet: no {service.prefix}* settings in {BACKEND_ENV}"
        )
    host, port = service.http_env
    local = ("--env", f"{host}=127.0.0.1") if BACKEND_NETWORK == "host" else ()
    # the image's own HEALTHCHECK, run every 2 s rather than 10: healthy sooner, nothing else changed
    name = containers("--read-only", "--network", BACKEND_NETWORK, "--env-file", BACKEND_ENV, *local,
                      "--health-interval", "2s", "--env", f"{port}={service.port}", service.image)  # fmt: skip

    def healthy() -> bool:
        current = state(name)
        assert current["Running"], docker("logs", name).stderr[-2000:]
        health = current.get("Health")
        return isinstance(health, dict) and health["Status"] == "healthy"

    wait_for("healthy state", healthy, 120)
    started = time.monotonic()
    assert docker("stop", "--time", "30", name, timeout=60).returncode == 0
    assert state(name)["ExitCode"] == 0, docker("logs", name).stderr[-2000:]
    assert time.monotonic() - started < 30
