"""Each service's entry point: invalid settings end the process with one line and exit 2 (naming
the variables, never their values); a stop signal while the backends are still being connected to
ends it at once with exit 0. One table of the four services, one set of cases."""

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

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
class Service:
    module: str  # its package's main module
    program: str  # the name its one-line errors start with
    prefix: str
    azure_needs: tuple[str, ...]  # what mode=azure names when nothing is set
    azure_settings: dict[str, str]  # enough for mode=azure
    port_setting: str  # an integer setting, for a wrong value
    secret_setting: str  # a setting whose value must never be printed
    connecting: Callable[[int], dict[str, str]]  # emulator settings aimed at a silent port

    @property
    def id(self) -> str:
        return self.program.removeprefix("eventflow-")


SERVICES = [
    Service(
        "eventflow_producer.main", "eventflow-producer-api", "PRODUCER_", ("PRODUCER_COSMOS_ENDPOINT",),
        {"PRODUCER_COSMOS_ENDPOINT": "https://account.documents.azure.com/"}, "PRODUCER_PORT", "PRODUCER_COSMOS_KEY",
        lambda port: {"PRODUCER_COSMOS_ENDPOINT": f"http://127.0.0.1:{port}/", "PRODUCER_COSMOS_KEY": EMULATOR_KEY,
                      "PRODUCER_PORT": _free_port()},
    ),
    Service(
        "eventflow_publisher.main", "eventflow-publisher", "PUBLISHER_",
        ("PUBLISHER_COSMOS_ENDPOINT", "PUBLISHER_EVENTHUBS_NAMESPACE"),
        {"PUBLISHER_COSMOS_ENDPOINT": "https://account.documents.azure.com/",
         "PUBLISHER_EVENTHUBS_NAMESPACE": "ns.servicebus.windows.net"}, "PUBLISHER_HEALTH_PORT", "PUBLISHER_COSMOS_KEY",
        lambda port: {"PUBLISHER_COSMOS_ENDPOINT": f"http://127.0.0.1:{port}/", "PUBLISHER_COSMOS_KEY": EMULATOR_KEY,
                      "PUBLISHER_EVENTHUBS_CONNECTION_STRING": _messaging(port), "PUBLISHER_HEALTH_PORT": "0"},
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
    ),
    Service(
        "eventflow_consumer.main", "eventflow-consumer", "CONSUMER_",
        ("CONSUMER_SERVICEBUS_NAMESPACE", "CONSUMER_COSMOS_ENDPOINT"),
        {"CONSUMER_SERVICEBUS_NAMESPACE": "ns.servicebus.windows.net",
         "CONSUMER_COSMOS_ENDPOINT": "https://account.documents.azure.com/"}, "CONSUMER_HTTP_PORT", "CONSUMER_COSMOS_KEY",
        lambda port: {"CONSUMER_COSMOS_ENDPOINT": f"http://127.0.0.1:{port}/", "CONSUMER_COSMOS_KEY": EMULATOR_KEY,
                      "CONSUMER_SERVICEBUS_CONNECTION_STRING": _messaging(port), "CONSUMER_HTTP_PORT": "0"},
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


@pytest.mark.parametrize("service", SERVICES[1:], ids=[s.id for s in SERVICES[1:]])
async def test_unless_stopped_gives_the_result_or_cancels_the_start(service: Service) -> None:
    unless_stopped = importlib.import_module(service.module).unless_stopped
    assert await unless_stopped(asyncio.Event(), asyncio.sleep(0, "ready")) == "ready"
    stop, cleaned_up = asyncio.Event(), asyncio.Event()

    async def never_ready() -> str:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()
        return "unreachable"

    asyncio.get_running_loop().call_soon(stop.set)
    assert await unless_stopped(stop, never_ready()) is None
    assert cleaned_up.is_set()


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
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert connected.wait(timeout=60), "the service never connected"
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.wait(timeout=10) == 0, process.communicate()[1]
        assert time.monotonic() - started < 5
    finally:
        process.kill()
        process.communicate()
