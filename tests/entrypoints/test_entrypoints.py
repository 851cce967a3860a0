"""Each service's entry point: invalid settings end the process with one line and exit 2 (naming
the variables, never their values); a stop signal while the backends are still being connected to
ends it at once with exit 0; started before its backends, it waits unready and then works; a setup
a backend refuses (a wrong key, a container it does not create) ends it with one line and exit 2.
One table of the four services, one set of cases."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventflow_emulators.cosmos.testing import cosmos_emulator
from eventflow_emulators.messaging.testing import connection_string, messaging_emulator
from eventflow_emulators.servers import AZURITE_ACCOUNT, AZURITE_KEY, azurite

EMULATOR_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _messaging(port: int) -> str:
    return f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=k;SharedAccessKey=a2V5;UseDevelopmentEmulator=true;"


@dataclass(frozen=True)
class Backends:
    """The ports the backends will listen on once they are started: the Cosmos DB emulator, the
    messaging emulator (Event Hubs and Service Bus) and Azurite."""

    cosmos: int
    messaging: int
    blobs: int

    @property
    def cosmos_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.cosmos}/"

    @property
    def storage(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.blobs}/{AZURITE_ACCOUNT};")  # fmt: skip


@dataclass(frozen=True)
class Service:
    module: str  # its package's main module
    program: str  # the name its one-line errors start with
    prefix: str
    azure_needs: tuple[str, ...]  # what mode=azure names when nothing is set
    azure_settings: dict[str, str]  # enough for mode=azure
    port_setting: str  # an integer setting, for a wrong value
    secret_setting: str  # a setting whose value must never be printed
    connecting: Callable[[int], dict[str, str]]  # emulator settings aimed at a silent port
    not_creating: dict[str, str]  # the setting that leaves creating the containers to others
    late: Callable[
        [Backends], dict[str, str]
    ]  # emulator settings aimed at backends not yet started

    @property
    def id(self) -> str:
        return self.program.removeprefix("eventflow-")


SERVICES = [
    Service(
        "eventflow_producer.main", "eventflow-producer-api", "PRODUCER_", ("PRODUCER_COSMOS_ENDPOINT",),
        {"PRODUCER_COSMOS_ENDPOINT": "https://account.documents.azure.com/"}, "PRODUCER_PORT", "PRODUCER_COSMOS_KEY",
        lambda port: {"PRODUCER_COSMOS_ENDPOINT": f"http://127.0.0.1:{port}/", "PRODUCER_COSMOS_KEY": EMULATOR_KEY,
                      "PRODUCER_PORT": _free_port()},
        {"PRODUCER_CREATE_CONTAINERS": "false"},
        lambda b: {"PRODUCER_COSMOS_ENDPOINT": b.cosmos_endpoint, "PRODUCER_COSMOS_KEY": EMULATOR_KEY,
                   "PRODUCER_STARTUP_WAIT_SECONDS": "0"},
    ),
    Service(
        "eventflow_publisher.main", "eventflow-publisher", "PUBLISHER_",
        ("PUBLISHER_COSMOS_ENDPOINT", "PUBLISHER_EVENTHUBS_NAMESPACE"),
        {"PUBLISHER_COSMOS_ENDPOINT": "https://account.documents.azure.com/",
         "PUBLISHER_EVENTHUBS_NAMESPACE": "ns.servicebus.windows.net"}, "PUBLISHER_HEALTH_PORT", "PUBLISHER_COSMOS_KEY",
        lambda port: {"PUBLISHER_COSMOS_ENDPOINT": f"http://127.0.0.1:{port}/", "PUBLISHER_COSMOS_KEY": EMULATOR_KEY,
                      "PUBLISHER_EVENTHUBS_CONNECTION_STRING": _messaging(port), "PUBLISHER_HEALTH_PORT": "0"},
        {"PUBLISHER_CREATE_CONTAINERS": "false"},
        lambda b: {"PUBLISHER_COSMOS_ENDPOINT": b.cosmos_endpoint, "PUBLISHER_COSMOS_KEY": EMULATOR_KEY,
                   "PUBLISHER_EVENTHUBS_CONNECTION_STRING": connection_string("127.0.0.1", b.messaging),
                   "PUBLISHER_ACQUIRE_INTERVAL_SECONDS": "1", "PUBLISHER_POLL_DELAY_SECONDS": "0.1"},
    ),
    Service(
        "eventflow_subscriber.main", "eventflow-subscriber", "SUBSCRIBER_",
        ("SUBSCRIBER_EVENTHUBS_NAMESPACE", "_STORAGE_ACCOUNT_URL", "_SERVICEBUS_NAMESPACE"),
        {"SUBSCRIBER_EVENTHUBS_NAMESPACE": "ns.servicebus.windows.net",
         "SUBSCRIBER_STORAGE_ACCOUNT_URL": "https://account.blob.core.windows.net",
         "SUBSCRIBER_SERVICEBUS_NAMESPACE": "ns.servicebus.windows.net"}, "SUBSCRIBER_HEALTH_PORT",
        "SUBSCRIBER_STORAGE_CONNECTION_STRING",
        lambda port: {"SUBSCRIBER_EVENTHUBS_CONNECTION_STRING": _messaging(port),
                      "SUBSCRIBER_SERVICEBUS_CONNECTION_STRING": _messaging(port),
                      "SUBSCRIBER_STORAGE_CONNECTION_STRING": (
                          "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
                          f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"),
                      "SUBSCRIBER_HEALTH_PORT": "0"},
        {"SUBSCRIBER_CREATE_CHECKPOINT_CONTAINER": "false"},
        lambda b: {"SUBSCRIBER_EVENTHUBS_CONNECTION_STRING": connection_string("127.0.0.1", b.messaging),
                   "SUBSCRIBER_SERVICEBUS_CONNECTION_STRING": connection_string("127.0.0.1", b.messaging),
                   "SUBSCRIBER_STORAGE_CONNECTION_STRING": b.storage, "SUBSCRIBER_LOAD_BALANCING_INTERVAL_SECONDS": "1"},
    ),
    Service(
        "eventflow_consumer.main", "eventflow-consumer", "CONSUMER_",
        ("CONSUMER_SERVICEBUS_NAMESPACE", "CONSUMER_COSMOS_ENDPOINT"),
        {"CONSUMER_SERVICEBUS_NAMESPACE": "ns.servicebus.windows.net",
         "CONSUMER_COSMOS_ENDPOINT": "https://account.documents.azure.com/"}, "CONSUMER_HTTP_PORT", "CONSUMER_COSMOS_KEY",
        lambda port: {"CONSUMER_COSMOS_ENDPOINT": f"http://127.0.0.1:{port}/", "CONSUMER_COSMOS_KEY": EMULATOR_KEY,
                      "CONSUMER_SERVICEBUS_CONNECTION_STRING": _messaging(port), "CONSUMER_HTTP_PORT": "0"},
        {"CONSUMER_CREATE_CONTAINERS": "false"},
        lambda b: {"CONSUMER_COSMOS_ENDPOINT": b.cosmos_endpoint, "CONSUMER_COSMOS_KEY": EMULATOR_KEY,
                   "CONSUMER_SERVICEBUS_CONNECTION_STRING": connection_string("127.0.0.1", b.messaging),
                   "CONSUMER_SESSION_IDLE_SECONDS": "0.3"},
    ),
]  # fmt: skip
BY_ID = pytest.mark.parametrize("service", SERVICES, ids=[s.id for s in SERVICES])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in os.environ:
        if name.startswith(tuple(s.prefix for s in SERVICES)):
            monkeypatch.delenv(name)
    return monkeypatch


@BY_ID
def test_missing_settings_end_the_process_with_one_line_naming_them_and_exit_2(
    service: Service, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv(f"{service.prefix}MODE", "azure")
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(service.module).main()
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"{service.program}: invalid settings: ")
    assert all(name in err for name in service.azure_needs), err
    assert "Traceback" not in err


@BY_ID
def test_a_wrong_value_is_named_by_its_variable_and_no_value_is_shown(
    service: Service, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv(f"{service.prefix}MODE", "azure")
    for name, value in service.azure_settings.items():
        clean_env.setenv(name, value)
    clean_env.setenv(service.secret_setting, "not-to-be-printed")
    clean_env.setenv(service.port_setting, "eighty")
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(service.module).main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{service.port_setting}: Input should be a valid integer" in err
    assert "not-to-be-printed" not in err
    assert "eighty" not in err


@pytest.fixture
def silent_backend() -> Iterator[tuple[int, threading.Event]]:
    """A port that accepts connections and never answers: a backend still starting."""
    listener = socket.create_server(("127.0.0.1", 0))
    connected, held = threading.Event(), []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return
            connected.set()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1], connected
    listener.close()
    for connection in held:
        connection.close()


@pytest.mark.slow
@BY_ID
def test_a_stop_signal_while_connecting_ends_the_process_at_once_with_exit_0(
    service: Service, silent_backend: tuple[int, threading.Event]
) -> None:
    port, connected = silent_backend
    env = {name: value for name, value in os.environ.items() if not name.startswith(service.prefix)}
    env |= {f"{service.prefix}MODE": "emulator", **service.connecting(port)}
    process = subprocess.Popen(
        [sys.executable, "-c", f"from {service.module} import main; main()"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert connected.wait(timeout=60), "the service never connected"
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        output = process.communicate(timeout=10)[0]
        elapsed = time.monotonic() - started
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert elapsed < 5
    # What the attempt had opened (the SDK client's session, a half-open connection) is closed.
    assert "Unclosed" not in output, output


LATE_BY_S = 10.0
DEADLINE_S = 120.0
ORDER = {"customer_id": "c-1", "currency": "EUR",
         "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": "5.00"}]}  # fmt: skip


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}"
        await asyncio.sleep(0.25)


async def _status(client: httpx.AsyncClient, url: str) -> int | None:
    try:
        return (await client.get(url)).status_code
    except httpx.TransportError:
        return None


def _process(service: Service, env: dict[str, str]) -> subprocess.Popen[str]:
    """The service's entry point with `env`, its stderr kept (its log lines are dropped)."""
    return subprocess.Popen(
        [sys.executable, "-c", f"from {service.module} import main; main()"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _started(service: Service, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-c", f"from {service.module} import main; main()"],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def _works(client: httpx.AsyncClient, http: dict[str, str]) -> None:
    """An order through the four: taken, published, forwarded, applied."""
    created = await client.post(f"http://127.0.0.1:{http['producer-api']}/orders", json=ORDER)
    assert created.status_code == 201, created.text
    order_id = created.json()["id"]

    async def counted(service_id: str, metric: str) -> bool:
        """Whether the service's /metrics counts at least one."""
        lines = (await client.get(f"http://127.0.0.1:{http[service_id]}/metrics")).text.splitlines()
        return any(line.startswith(f"{metric} ") and float(line.split()[1]) >= 1 for line in lines)

    async def applied() -> bool:
        url = f"http://127.0.0.1:{http['consumer']}/orders/{order_id}"
        return await _status(client, url) == 200

    await _until(lambda: counted("publisher", "eventflow_publisher_events_published_total"),
                 "the publisher put the order's event on the hub")  # fmt: skip
    await _until(lambda: counted("subscriber", "eventflow_subscriber_events_forwarded_total"),
                 "the subscriber forwarded it to the inbox")  # fmt: skip
    await _until(applied, "the consumer applied it")


@pytest.mark.slow
async def test_each_service_started_before_its_backends_waits_unready_then_works(
    tmp_path: Path,
) -> None:
    """All four at once (one pipeline, and one wait for all): the Cosmos DB emulator is started
    LATE_BY_S after the services, on the port they were given, and the messaging emulator and
    Azurite once the publisher and the consumer wait for them in turn. Meanwhile each service is
    alive and unready and says what it waits for; then each turns ready and does its work: the producer takes an order, the publisher puts its event on
    the hub, the subscriber forwards it to the inbox, the consumer applies it (its read API shows
    the order). None ends with exit code 1: each stops with 0 at SIGTERM."""
    backends = Backends(*(int(_free_port()) for _ in range(3)))
    http = {service.id: _free_port() for service in SERVICES}
    database = f"late-{uuid.uuid4().hex[:8]}"
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for service in SERVICES:
        env = {
            name: value for name, value in os.environ.items() if not name.startswith(service.prefix)
        }
        env |= {f"{service.prefix}MODE": "emulator", **service.late(backends),
                service.port_setting: http[service.id]}  # fmt: skip
        if service.prefix != "SUBSCRIBER_":
            env[f"{service.prefix}DATABASE"] = database
        processes[service.id] = _started(service, env, tmp_path / f"{service.id}.log")
    started = time.monotonic()

    def log_of(service_id: str) -> str:
        return (tmp_path / f"{service_id}.log").read_text(errors="replace")

    try:
        async with httpx.AsyncClient(timeout=10) as client:

            async def waiting(service: Service) -> None:
                base = f"http://127.0.0.1:{http[service.id]}"

                async def alive_unready_and_saying_so() -> bool:
                    process = processes[service.id]
                    assert process.poll() is None, f"{service.id} ended: {log_of(service.id)}"
                    statuses = (await _status(client, f"{base}/healthz"),
                                await _status(client, f"{base}/readyz"))  # fmt: skip
                    return statuses == (200, 503) and "still waiting for" in log_of(service.id)

                await _until(alive_unready_and_saying_so, f"{service.id} alive, unready, waiting")

            await asyncio.gather(*(waiting(service) for service in SERVICES))
            for service_id, process in processes.items():
                assert process.poll() is None, f"{service_id} ended: {log_of(service_id)}"
            await asyncio.sleep(max(0.0, LATE_BY_S - (time.monotonic() - started)))
            with ExitStack() as running:
                running.enter_context(cosmos_emulator(tmp_path / "cosmos", port=backends.cosmos))

                async def on_to(service_id: str, backend: str) -> None:
                    url = f"http://127.0.0.1:{http[service_id]}/readyz"

                    async def waiting_for_it_unready() -> bool:
                        said = f"still waiting for {backend}" in log_of(service_id)
                        return said and await _status(client, url) == 503

                    await _until(waiting_for_it_unready, f"{service_id} waiting for {backend}")

                # Cosmos DB alone first: the publisher and the consumer go on to wait for the rest.
                await on_to("publisher", "Event Hubs")
                await on_to("consumer", "Service Bus")
                running.enter_context(
                    messaging_emulator(tmp_path / "messaging", port=backends.messaging)
                )
                running.enter_context(azurite(tmp_path, port=backends.blobs))

                async def ready(service: Service) -> None:
                    url = f"http://127.0.0.1:{http[service.id]}/readyz"

                    async def answers_ready() -> bool:
                        return await _status(client, url) == 200

                    await _until(answers_ready, f"{service.id} ready")

                await asyncio.gather(*(ready(service) for service in SERVICES))
                await _works(client, http)
                for process in processes.values():
                    process.send_signal(signal.SIGTERM)
                for service_id, process in processes.items():
                    code = await asyncio.to_thread(process.wait, 60)
                    assert code == 0, f"{service_id} exited {code}: {log_of(service_id)}"
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
    for service in SERVICES:
        assert "Traceback" not in log_of(service.id), log_of(service.id)


WRONG_KEY = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="


@pytest.mark.slow
@pytest.mark.parametrize("case", ["a wrong key", "a missing container"])
async def test_a_setup_the_backends_refuse_ends_each_service_with_one_line_and_exit_2(
    case: str, cosmos_emulator_server: Any, azurite_server: Any
) -> None:
    """Not an outage, so not waited for: Cosmos DB and Azurite answer, but refuse the key, or the
    database has no containers and the service is not the one to create them. Each of the four,
    at once: exit 2 with one line naming the cause (never the key), no traceback."""
    backends = Backends(int(cosmos_emulator_server.endpoint.rstrip("/").rsplit(":", 1)[1]),
                        int(_free_port()), azurite_server.port)  # fmt: skip
    database = f"refused-{uuid.uuid4().hex[:8]}"
    processes: dict[str, subprocess.Popen[str]] = {}
    for service in SERVICES:
        env = {
            name: value for name, value in os.environ.items() if not name.startswith(service.prefix)
        }
        env |= {f"{service.prefix}MODE": "emulator", **service.late(backends),
                service.port_setting: "0" if service.prefix != "PRODUCER_" else _free_port(),
                f"{service.prefix}CHECKPOINT_CONTAINER" if service.prefix == "SUBSCRIBER_"
                else f"{service.prefix}DATABASE": database}  # fmt: skip
        if case == "a wrong key":
            env = {name: value.replace(EMULATOR_KEY, WRONG_KEY).replace(AZURITE_KEY, WRONG_KEY)
                   for name, value in env.items()}  # fmt: skip
        else:
            env |= service.not_creating
        processes[service.id] = _process(service, env)
    try:
        ended = {service_id: await asyncio.to_thread(process.communicate, timeout=90)
                 for service_id, process in processes.items()}  # fmt: skip
    finally:
        for process in processes.values():
            process.kill()
    cause = "refused this service" if case == "a wrong key" else "has no container"
    for service in SERVICES:
        err = ended[service.id][1]
        assert processes[service.id].returncode == 2, err
        lines = [line for line in err.splitlines() if line.startswith(service.program)]
        assert len(lines) == 1, err
        assert lines[0].startswith(f"{service.program}: cannot start: "), err
        assert cause in lines[0], err
        assert WRONG_KEY not in err, err
        assert "Traceback" not in err, err
