"""docker-compose.local.yml, run: the four service images on the project's own emulators as
containers (eventflow-emulators, eventflow-azurite), every image built here, none pulled. `up`,
then orders made through the producer's REST API (as `make demo` does) must reach the consumer's
read API; then every container stops with exit 0 and `down` leaves nothing behind. Run by `make
test-images` (EVENTFLOW_TEST_IMAGES=1) after the builds; skipped in plain `make test`."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import compose
import httpx
import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("EVENTFLOW_TEST_IMAGES") != "1",
    reason="the compose stack needs a Docker engine and the built images: run `make test-images`",
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = Path(compose.__file__).parent / "docker-compose"  # the binary: its wrapper always exits 0
PROJECT = "eventflow-images-stack"
# Host ports picked by the engine: the stack runs beside `make dev` or another stack.
PORTS = {f"EVENTFLOW_LOCAL_{name}_PORT": "0"
         for name in ("COSMOS", "MESSAGING", "MESSAGING_ADMIN", "AZURITE", "PRODUCER", "CONSUMER")}  # fmt: skip
CONTAINERS = {"cosmos", "messaging", "azurite", "producer", "publisher", "subscriber", "consumer"}
ARRIVAL_SECONDS = 60
TAG = os.environ.get("EVENTFLOW_IMAGE_TAG", "dev")


@dataclass(frozen=True)
class Stack:
    producer: str
    consumer: str


def compose_run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **PORTS, "EVENTFLOW_IMAGE_TAG": TAG}
    return subprocess.run(
        [str(COMPOSE), "-p", PROJECT, "-f", str(ROOT / "docker-compose.local.yml"), *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT, env=env,
    )  # fmt: skip


def logs() -> str:
    return compose_run("logs", "--no-color", "--tail", "40").stdout[-6000:]


def published(service: str, port: int) -> str:
    result = compose_run("port", service, str(port))
    assert result.returncode == 0, result.stderr
    return f"http://{result.stdout.strip()}"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    compose_run("down", "-v", "--timeout", "5")  # what an interrupted run may have left
    started = time.monotonic()
    up = compose_run("up", "-d", "--wait", "--wait-timeout", "120", "--no-build", "--pull", "never")
    assert up.returncode == 0, f"{up.stderr[-3000:]}\n{logs()}"
    took = time.monotonic() - started
    print(f"compose up: all {len(CONTAINERS)} containers healthy in {took:.1f} s")  # noqa: T201
    try:
        yield Stack(published("producer", 8000), published("consumer", 8003))
    finally:
        compose_run("down", "-v", "--timeout", "30")


def arrived(client: httpx.Client, stack: Stack, order_id: str, version: int) -> dict[str, object]:
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while time.monotonic() < deadline:
        response = client.get(f"{stack.consumer}/orders/{order_id}")
        if response.status_code == 200 and response.json()["last_sequence"] >= version:
            summary: dict[str, object] = response.json()
            return summary
        time.sleep(0.1)
    pytest.fail(f"no {order_id} v{version} at the consumer within {ARRIVAL_SECONDS} s\n{logs()}")


def test_orders_made_through_the_api_arrive_at_the_consumer_and_the_stack_stops_cleanly(
    stack: Stack,
) -> None:
    with httpx.Client(timeout=10) as client:
        orders = []
        for n in range(3):
            body = {"customer_id": f"stack-{n}", "currency": "EUR",
                    "lines": [{"sku": f"SKU-{n}", "quantity": n + 1, "unit_price": "4.50"}]}  # fmt: skip
            created = client.post(f"{stack.producer}/orders", json=body,
                                  headers={"Idempotency-Key": uuid.uuid4().hex})  # fmt: skip
            assert created.status_code == 201, created.text
            order_id, etag = created.json()["id"], created.headers["etag"]
            assert arrived(client, stack, order_id, 1)["status"] == "open"
            for path, payload in (("items", {"sku": "SKU-X", "quantity": 1, "unit_price": "1.00"}),
                                  ("submit", None)):  # fmt: skip
                changed = client.post(f"{stack.producer}/orders/{order_id}/{path}", json=payload,
                                      headers={"If-Match": etag})  # fmt: skip
                assert changed.status_code == 200, changed.text
                etag = changed.headers["etag"]
            orders.append((order_id, changed.json()["version"], Decimal("4.50") * (n + 1) + 1))
        for order_id, version, total in orders:
            summary = arrived(client, stack, order_id, version)
            assert summary["status"] == "submitted"
            assert Decimal(str(summary["total"])) == total

    stop = compose_run("stop", "--timeout", "30")
    assert stop.returncode == 0, stop.stderr
    states = compose_run("ps", "-a", "--format", "{{.Service}} {{.State}} {{.ExitCode}}").stdout
    exits = dict(line.split(" ", 1) for line in states.splitlines() if line)
    assert set(exits) == CONTAINERS, states
    assert all(state == "exited 0" for state in exits.values()), f"{states}\n{logs()}"

    down = compose_run("down", "-v", "--timeout", "30")
    assert down.returncode == 0, down.stderr
    assert compose_run("ps", "-a", "-q").stdout.strip() == ""
    networks = subprocess.run(["docker", "network", "ls", "-q", "--filter", f"name={PROJECT}"],
                              capture_output=True, text=True, check=False).stdout  # fmt: skip
    assert networks.strip() == ""
