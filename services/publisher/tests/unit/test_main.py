"""The entry point: invalid settings end the process with one line and exit 2; a stop signal while
the backends are still being connected to ends it at once with exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from eventflow_publisher.main import main, unless_stopped

PREFIX = "PUBLISHER_"
EMULATOR_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in os.environ:
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def test_missing_settings_end_the_process_with_one_line_naming_them_and_exit_2(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("PUBLISHER_MODE", "azure")
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("eventflow-publisher: invalid settings: ")
    assert "PUBLISHER_COSMOS_ENDPOINT" in err
    assert "PUBLISHER_EVENTHUBS_NAMESPACE" in err
    assert "Traceback" not in err


def test_a_wrong_value_is_named_by_its_variable_and_no_value_is_shown(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("PUBLISHER_MODE", "azure")
    clean_env.setenv("PUBLISHER_COSMOS_ENDPOINT", "https://account.documents.azure.com/")
    clean_env.setenv("PUBLISHER_EVENTHUBS_NAMESPACE", "ns.servicebus.windows.net")
    clean_env.setenv("PUBLISHER_COSMOS_KEY", "not-to-be-printed")
    clean_env.setenv("PUBLISHER_HEALTH_PORT", "eighty")
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "PUBLISHER_HEALTH_PORT: Input should be a valid integer" in err
    assert "not-to-be-printed" not in err
    assert "eighty" not in err


async def test_unless_stopped_gives_the_result_when_it_comes_first() -> None:
    assert await unless_stopped(asyncio.Event(), asyncio.sleep(0, "ready")) == "ready"


async def test_unless_stopped_cancels_the_start_when_stopped_first() -> None:
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

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], connected
    listener.close()
    for connection in held:
        connection.close()


@pytest.mark.slow
def test_a_stop_signal_while_connecting_ends_the_process_at_once_with_exit_0(
    silent_backend: tuple[int, threading.Event],
) -> None:
    port, connected = silent_backend
    endpoint = f"sb://127.0.0.1:{port};SharedAccessKeyName=k;SharedAccessKey=a2V5;UseDevelopmentEmulator=true;"
    env = {name: value for name, value in os.environ.items() if not name.startswith(PREFIX)}
    env |= {"PUBLISHER_MODE": "emulator", "PUBLISHER_COSMOS_ENDPOINT": f"http://127.0.0.1:{port}/", "PUBLISHER_COSMOS_KEY": EMULATOR_KEY, "PUBLISHER_EVENTHUBS_CONNECTION_STRING": f"Endpoint={endpoint}", "PUBLISHER_HEALTH_PORT": "0"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-c", "from eventflow_publisher.main import main; main()"],
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
