"""The entry point: invalid settings end the process with one line and exit 2; a stop signal while
the backends are still being connected to ends it at once with exit 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from eventflow_producer.main import main

PREFIX = "PRODUCER_"
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
    clean_env.setenv("PRODUCER_MODE", "azure")
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("eventflow-producer-api: invalid settings: ")
    assert "PRODUCER_COSMOS_ENDPOINT" in err
    assert "Traceback" not in err


def test_a_wrong_value_is_named_by_its_variable_and_no_value_is_shown(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("PRODUCER_MODE", "azure")
    clean_env.setenv("PRODUCER_COSMOS_ENDPOINT", "https://account.documents.azure.com/")
    clean_env.setenv("PRODUCER_COSMOS_KEY", "not-to-be-printed")
    clean_env.setenv("PRODUCER_PORT", "eighty")
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "PRODUCER_PORT: Input should be a valid integer" in err
    assert "not-to-be-printed" not in err
    assert "eighty" not in err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
    env = {name: value for name, value in os.environ.items() if not name.startswith(PREFIX)}
    env |= {"PRODUCER_MODE": "emulator", "PRODUCER_COSMOS_ENDPOINT": f"http://127.0.0.1:{port}/", "PRODUCER_COSMOS_KEY": EMULATOR_KEY, "PRODUCER_PORT": str(free_port())}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-c", "from eventflow_producer.main import main; main()"],
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
