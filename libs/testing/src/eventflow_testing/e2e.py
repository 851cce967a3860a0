"""The whole system as OS processes on the real Azure SDKs against the project's emulators, a
REST load, kills, and the checks of every guarantee in ARCHITECTURE.md. Used by the e2e tests
(tests/e2e), the short chaos test, `make chaos` (tools/chaos.py), tools/verify_azure.py and the
benchmarks. It runs from a checkout of the repository (the emulators' configs in emulators/)."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from azure.cosmos.aio import CosmosClient
from azure.cosmos.exceptions import CosmosResourceNotFoundError
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubProducerClient
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import OperationTimeoutError

from eventflow_contracts import ContractError, read_routing
from eventflow_contracts.auth import WRITE_ROLE
from eventflow_contracts.auth_testing import LocalIssuer
from eventflow_contracts.orders_container import WRITE_PATTERNS
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator, cosmos_emulator
from eventflow_emulators.messaging.reading import hub_contents
from eventflow_emulators.messaging.testing import RunningMessagingEmulator, messaging_emulator
from eventflow_emulators.servers import RunningServer, azurite
from eventflow_publisher.deriving import derived_event_id, state_event

REPOSITORY = Path(__file__).resolve().parents[4]
"""The checkout this module runs from (libs/testing/src/eventflow_testing/e2e.py)."""
FAST = {
    "PUBLISHER_ACQUIRE_INTERVAL_SECONDS": "1", "PUBLISHER_RENEW_INTERVAL_SECONDS": "1",
    "PUBLISHER_LEASE_EXPIRY_SECONDS": "4", "PUBLISHER_POLL_DELAY_SECONDS": "0.1",
    "SUBSCRIBER_LOAD_BALANCING_INTERVAL_SECONDS": "1", "CONSUMER_SESSION_IDLE_SECONDS": "0.3",
    "CONSUMER_SESSION_RENEW_SECONDS": "2",
}  # fmt: skip
COMMANDS = ("producer", "publisher", "subscriber", "consumer")
WORKER_KINDS = ("publisher", "subscriber", "consumer")
STATUS_EVENTS = ("OrderCreated", "OrderSubmitted", "OrderCancelled")


class GuaranteeBrokenError(Exception):
    """A check of the harness failed. Raised explicitly (not `assert`), so `python -O` cannot skip it."""


def require(condition: object, message: str) -> None:
    if not condition:
        raise GuaranteeBrokenError(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _inbox_config(folder: Path, *, lock_seconds: int) -> Path:
    """The repository's Service Bus emulator config with the inbox's lock shortened."""
    import json  # noqa: PLC0415

    config = json.loads((REPOSITORY / "emulators" / "servicebus.json").read_text())
    for namespace in config["UserConfig"]["Namespaces"]:
        for queue in namespace["Queues"]:
            if queue["Name"] == "inbox":
                queue["Properties"]["LockDuration"] = f"PT{lock_seconds}S"
    path = folder / "servicebus.json"
    path.write_text(json.dumps(config))
    return path


PATTERNS = WRITE_PATTERNS
"""The producer's write patterns (PRODUCER_WRITE_PATTERN, PUBLISHER_WRITE_PATTERN): docs/patterns.md."""


@dataclass
class System:
    folder: Path
    pattern: str = "outbox"
    replicas: dict[str, int] = field(
        default_factory=lambda: {"publisher": 1, "subscriber": 1, "consumer": 1}
    )
    producer_port: int = field(default_factory=free_port)
    consumer_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kills: int = 0
    emulators: ExitStack = field(default_factory=ExitStack)
    cosmos: RunningCosmosEmulator | None = None
    messaging: RunningMessagingEmulator | None = None
    blobs: RunningServer | None = None
    trace_dir: Path | None = None
    """When set, every service writes its finished spans there (one JSON-lines file each)."""
    log_levels: dict[str, str] = field(default_factory=dict)
    """Per service kind, a log level other than the default (producer INFO, workers WARNING)."""
    env: dict[str, str] = field(default_factory=dict)
    """More settings for every service process (the benchmarks' tracing on and off)."""
    issuer: LocalIssuer | None = None
    """When set, the producer API and the consumer's read API take only its tokens, and the
    harness's calls send a writer's (`headers`); without it they authenticate nobody."""

    @property
    def headers(self) -> dict[str, str]:
        """What a call to the APIs sends: a fresh Orders.ReadWrite token when `issuer` is set."""
        if self.issuer is None:
            return {}
        return {"Authorization": f"Bearer {self.issuer.token(WRITE_ROLE)}"}

    def backends(self) -> tuple[RunningCosmosEmulator, RunningMessagingEmulator, RunningServer]:
        """The running emulators (Cosmos DB, messaging, Azurite); start() first."""
        if self.cosmos is None or self.messaging is None or self.blobs is None:
            raise GuaranteeBrokenError("the emulators are not running: start() first")
        return self.cosmos, self.messaging, self.blobs

    def cosmos_client(self) -> CosmosClient:
        cosmos = self.backends()[0]
        return CosmosClient(cosmos.endpoint, credential=cosmos.key)

    def servicebus_client(self) -> ServiceBusClient:
        return ServiceBusClient.from_connection_string(self._messaging().connection_string)

    def _messaging(self) -> RunningMessagingEmulator:
        return self.backends()[1]

    async def prepare(self) -> None:
        """The emulators, with what infrastructure does in Azure: the hub (4 partitions) and the
        inbox (sessions, duplicate detection; short locks for fast recovery), from config files in
        the official emulators' format."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cosmos = self.emulators.enter_context(cosmos_emulator(self.folder / "cosmos"))
        self.messaging = self.emulators.enter_context(messaging_emulator(
            self.folder / "messaging", servicebus_config=_inbox_config(self.folder, lock_seconds=5),
        ))  # fmt: skip
        self.blobs = self.emulators.enter_context(azurite(self.folder))

    def _backends(self, kind: str) -> dict[str, str]:
        cosmos, bus, blobs = self.backends()
        prefix, messaging = kind.upper(), bus.connection_string
        if kind == "subscriber":
            return {"SUBSCRIBER_EVENTHUBS_CONNECTION_STRING": messaging,
                    "SUBSCRIBER_SERVICEBUS_CONNECTION_STRING": messaging,
                    "SUBSCRIBER_STORAGE_CONNECTION_STRING": blobs.connection_string}  # fmt: skip
        settings = {
            f"{prefix}_COSMOS_ENDPOINT": cosmos.endpoint,
            f"{prefix}_COSMOS_KEY": cosmos.key,
        }
        if kind == "publisher":
            settings["PUBLISHER_EVENTHUBS_CONNECTION_STRING"] = messaging
        if kind == "consumer":
            settings["CONSUMER_SERVICEBUS_CONNECTION_STRING"] = messaging
        return settings

    def _start(self, name: str) -> None:
        kind = name.split("-", maxsplit=1)[0]
        settings = {**FAST, f"{kind.upper()}_MODE": "emulator", **self._backends(kind),
                    f"{kind.upper()}_LOG_LEVEL": self.log_levels.get(kind, "INFO" if kind == "producer" else "WARNING")}  # fmt: skip
        if kind in ("producer", "publisher"):
            settings[f"{kind.upper()}_WRITE_PATTERN"] = self.pattern
        if self.issuer is not None and kind in ("producer", "consumer"):
            settings.update(self.issuer.environment(f"{kind.upper()}_"))
        settings.update(self.env)
        if self.trace_dir is not None:
            settings[f"{kind.upper()}_TRACE_DIR"] = str(self.trace_dir)
        if kind == "producer":
            settings["PRODUCER_PORT"] = str(self.producer_port)
        elif kind == "consumer":
            settings["CONSUMER_HTTP_PORT"] = (
                str(self.consumer_port) if name == "consumer-0" else "0"
            )
        else:
            settings[f"{kind.upper()}_HEALTH_PORT"] = "0"
        module = {"producer": "eventflow_producer.main", "publisher": "eventflow_publisher.main",
                  "subscriber": "eventflow_subscriber.main", "consumer": "eventflow_consumer.main"}[kind]  # fmt: skip
        log = (self.folder / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **settings},
                                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    async def start(self) -> None:
        """Starts everything; a start that fails stops what it started (no process outlives it)."""
        try:
            await self.prepare()
            self._start("producer-0")
            for kind, count in self.replicas.items():
                for n in range(count):
                    self._start(f"{kind}-{n}")
            await self.wait_ready()
        except BaseException:
            self.stop()
            raise

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            for url in (f"{self.producer_url}/readyz", f"{self.consumer_url}/healthz"):
                while True:
                    try:
                        if (await client.get(url)).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    require(time.monotonic() < deadline, f"{url} never answered")
                    await asyncio.sleep(0.1)

    @property
    def producer_url(self) -> str:
        return f"http://127.0.0.1:{self.producer_port}"

    @property
    def consumer_url(self) -> str:
        return f"http://127.0.0.1:{self.consumer_port}"

    def workers(self) -> list[str]:
        return [name for name in self.processes if not name.startswith("producer")]

    def kill_random_worker(self, rng: random.Random) -> str:
        """kill -9 a publisher, subscriber or consumer process (consumer-0, which serves the reads,
        included) and start it again."""
        return self.kill(rng.choice(self.workers()))

    def kill(self, name: str) -> str:
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait()
        self.kills += 1
        self._start(name)
        return name

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = None
        self.emulators.close()
        return codes


@dataclass
class Load:
    """Commands over orders, as REST calls; remembers what the producer committed."""

    committed_events: int = 0
    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[int] = field(default_factory=Counter)
    orders: list[str] = field(default_factory=list)
    statuses: dict[str, dict[int, str]] = field(default_factory=dict)
    """Per order, the status the producer answered at each version it committed."""

    pace: float = 0.0

    async def run(
        self,
        url: str,
        orders: int,
        commands_per_order: int,
        rng: random.Random,
        concurrency: int = 8,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`headers`: sent with every call (the Authorization the producer needs)."""
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as client:
            await asyncio.gather(
                *(self._order(client, n, commands_per_order, rng, gate) for n in range(orders))
            )

    async def _order(
        self,
        client: httpx.AsyncClient,
        n: int,
        commands: int,
        rng: random.Random,
        gate: asyncio.Semaphore,
    ) -> None:
        await asyncio.sleep(0)
        async with gate:
            line = {"sku": f"SKU-{n}", "quantity": 1 + n % 5, "unit_price": f"{1 + n % 7}.25"}
            created = await client.post("/orders", json={"customer_id": f"c-{n}", "currency": "EUR", "lines": [line] if n % 3 else []},
                                        headers={"Idempotency-Key": f"load-{n}-{rng.random()}"})  # fmt: skip
            require(created.status_code == 201, created.text)
            order_id, etag = created.json()["id"], created.headers["etag"]
            self.orders.append(order_id)
            self.statuses[order_id] = {1: created.json()["status"]}
            self.committed_events += 1
            self.accepted["create"] += 1
            for step in range(commands - 1):
                choice = rng.random()
                body: Any
                if step == commands - 3:
                    path, body = (
                        ("cancel", {"reason": "load test"}) if choice < 0.3 else ("submit", None)
                    )
                elif step == commands - 2:
                    path, body = "items", line  # after submit or cancel: a broken rule, 409
                elif choice < 0.1:
                    path, body, etag = "items", line, '"999"'  # a stale ETag: 412
                else:
                    path, body = "items", line
                await asyncio.sleep(self.pace)  # a steady load rather than a burst
                response = await client.post(
                    f"/orders/{order_id}/{path}", json=body, headers={"If-Match": etag}
                )
                if response.status_code == 200:
                    etag = response.headers["etag"]
                    self.statuses[order_id][response.json()["version"]] = response.json()["status"]
                    self.committed_events += 1
                    self.accepted[path] += 1
                else:
                    require(response.status_code in (409, 412), response.text)
                    self.rejected[response.status_code] += 1
                    etag = (await client.get(f"/orders/{order_id}")).headers["etag"]


async def inject_malformed(system: System) -> None:
    """One malformed event straight into the hub, one straight into the inbox."""
    async with EventHubProducerClient.from_connection_string(
        system._messaging().connection_string, eventhub_name="orders"
    ) as producer:
        batch = await producer.create_batch(partition_key="malformed")
        batch.add(EventData(b"{this is not json"))
        await producer.send_batch(batch)
    async with (
        system.servicebus_client() as client,
        client.get_queue_sender("inbox") as sender,
    ):
        await sender.send_messages(
            ServiceBusMessage(
                b'{"specversion": "1.0"}', session_id="malformed", message_id="malformed-inbox"
            )
        )


async def settle(system: System, orders: list[str], wait: float) -> float:
    """Poll (with a deadline) until every order's projection reached the producer's version."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10, headers=system.headers) as client:
        versions = {
            o: (await client.get(f"{system.producer_url}/orders/{o}")).json()["version"]
            for o in orders
        }
        pending = set(orders)
        while pending:
            require(
                time.monotonic() - started < wait,
                f"{len(pending)} orders never settled, e.g. {sorted(pending)[:3]}",
            )
            for order_id in list(pending):
                try:
                    response = await client.get(f"{system.consumer_url}/orders/{order_id}")
                except httpx.TransportError:
                    break  # consumer-0 is restarting after a kill: ask again on the next round
                if (
                    response.status_code == 200
                    and response.json()["last_sequence"] == versions[order_id]
                ):
                    pending.discard(order_id)
            if pending:
                await asyncio.sleep(0.2)
    return time.monotonic() - started


async def check_orders(
    producer_url: str,
    orders: list[str],
    summary_of: Callable[[str], Awaitable[dict[str, Any]]],
    summaries: Any,
    headers: Mapping[str, str] | None = None,
) -> int:
    """Every committed event of `orders` handled once, in order, and each projection equal to the
    producer's entity: `summary_of` reads an order's projection (the consumer's read API, or its
    store), `summaries` is the consumer's Cosmos DB container (for the inbox marks), `headers` go
    with each call to the producer. Returns the events handled."""
    handled = 0
    async with httpx.AsyncClient(timeout=10, headers=headers) as client:
        for order_id in orders:
            entity = (await client.get(f"{producer_url}/orders/{order_id}")).json()
            summary = await summary_of(order_id)
            events = (await client.get(f"{producer_url}/orders/{order_id}/events")).json()
            require(
                summary["last_sequence"] == entity["version"],
                f"{order_id}: projection behind the entity",
            )
            require(
                (summary["status"], summary["total"], summary["currency"])
                == (entity["status"], entity["total"], entity["currency"]),
                f"{order_id}: projection differs from the entity",
            )
            require(
                summary["lines"] == entity["lines"], f"{order_id}: an effect applied twice or lost"
            )
            require(
                summary.get("skipped", []) == [],
                f"{order_id}: events skipped: {summary.get('skipped')}",
            )
            # The status history must follow the producer's own events, not merely be sorted.
            transitions = [
                int(e["sequence"]) for e in events if e["type"].split(".")[-2] in STATUS_EVENTS
            ]
            history = [h["sequence"] for h in summary["status_history"]]
            require(
                history == transitions,
                f"{order_id}: status history {history} != events {transitions}",
            )
            marks = [m async for m in summaries.query_items(
                "SELECT * FROM c WHERE c.order_id = @o AND c.kind = 'inbox-mark'",
                parameters=[{"name": "@o", "value": order_id}], partition_key=order_id)]  # fmt: skip
            # One mark per committed event id, and none for anything else: a lost event, an effect
            # applied under another id, or an event applied twice under two ids would all show here.
            committed = sorted(f"inbox:{e['id']}" for e in events)
            require(
                len(events) == entity["version"],
                f"{order_id}: the outbox lists {len(events)} events",
            )
            require(
                sorted(m["id"] for m in marks) == committed,
                f"{order_id}: inbox marks differ from the events",
            )
            handled += len(marks)
    return handled


async def check_derived_orders(
    producer_url: str,
    statuses: dict[str, dict[int, str]],
    summary_of: Callable[[str], Awaitable[dict[str, Any]]],
    summaries: Any,
    headers: Mapping[str, str] | None = None,
) -> int:
    """What entity-first promises, and no more: the producer stored no events, and the publisher
    derived one OrderStateChanged per order version it read, where the change feed may have
    coalesced versions. So each projection equals the producer's entity at its latest version; every
    status in its history is the status the producer answered at that version, in version order
    (statuses that were coalesced away are missing, never wrong or out of order); every inbox mark
    is the derived event of one version, the latest among them; nothing skipped. Returns the
    derived events handled (at most the versions committed)."""
    handled = 0
    async with httpx.AsyncClient(timeout=10, headers=headers) as client:
        for order_id, truth in statuses.items():
            entity = (await client.get(f"{producer_url}/orders/{order_id}")).json()
            summary = await summary_of(order_id)
            kept = await client.get(f"{producer_url}/orders/{order_id}/events")
            require(kept.status_code == 404, f"{order_id}: entity-first stores no events")
            require(
                entity["version"] == max(truth), f"{order_id}: the entity is not at the last commit"
            )
            require(
                summary["last_sequence"] == entity["version"],
                f"{order_id}: projection behind the entity",
            )
            require(
                (summary["status"], summary["total"], summary["currency"], summary["lines"])
                == (entity["status"], entity["total"], entity["currency"], entity["lines"]),
                f"{order_id}: projection differs from the entity",
            )
            require(summary.get("skipped", []) == [], f"{order_id}: versions skipped")
            history = [(h["sequence"], h["status"]) for h in summary["status_history"]]
            require(
                all(truth.get(version) == status for version, status in history)
                and [v for v, _ in history] == sorted({v for v, _ in history})
                and all(a[1] != b[1] for a, b in itertools.pairwise(history)),
                f"{order_id}: status history {history} disagrees with the commits {truth}",
            )
            marks = [m["id"] async for m in summaries.query_items(
                "SELECT c.id FROM c WHERE c.order_id = @o AND c.kind = 'inbox-mark'",
                parameters=[{"name": "@o", "value": order_id}], partition_key=order_id)]  # fmt: skip
            versions = {f"inbox:{derived_event_id(order_id, v)}": v for v in truth}
            require(
                marks and all(m in versions for m in marks) and len(set(marks)) == len(marks),
                f"{order_id}: inbox marks that are no derived event of a committed version",
            )
            require(
                max(versions[m] for m in marks) == entity["version"],
                f"{order_id}: the latest version's event was not handled",
            )
            handled += len(marks)
    return handled


async def check_read_models(system: System, orders: list[str], wait: float) -> None:
    """event-first: poll (with a deadline) until the read-model maintainer has folded every order's
    events into its read model, and that read model equals what the API answers (which folds
    the events the read model has not absorbed yet)."""
    deadline = time.monotonic() + wait
    async with (
        httpx.AsyncClient(timeout=10, headers=system.headers) as client,
        system.cosmos_client() as cosmos,
    ):
        container = cosmos.get_database_client("eventflow").get_container_client("orders")
        for order_id in orders:
            entity = (await client.get(f"{system.producer_url}/orders/{order_id}")).json()
            while True:
                model: dict[str, Any]
                try:
                    model = await container.read_item(order_id, partition_key=order_id)
                except CosmosResourceNotFoundError:
                    model = {"version": 0}
                if model["version"] == entity["version"]:
                    break
                require(time.monotonic() < deadline, f"{order_id}: the read model never caught up")
                await asyncio.sleep(0.2)
            fields = ("status", "total", "currency", "lines", "cancel_reason")
            require(
                all(model[f] == entity[f] for f in fields),
                f"{order_id}: the read model differs from the API's answer",
            )


async def check_guarantees(
    system: System, orders: list[str], statuses: dict[str, dict[int, str]] | None = None
) -> dict[str, Any]:
    """Every committed event handled once, in order; each projection equals the producer's entity;
    the injected malformed events dead-lettered with their reasons, and nothing else. In
    entity-first (`statuses`, from the Load, needed), what derived events promise instead
    (check_derived_orders); in event-first, the read models too."""
    async with (
        httpx.AsyncClient(timeout=10, headers=system.headers) as client,
        system.cosmos_client() as cosmos,
    ):
        summaries = cosmos.get_database_client("eventflow").get_container_client("order-summaries")

        async def summary_of(order_id: str) -> dict[str, Any]:
            summary: dict[str, Any] = (
                await client.get(f"{system.consumer_url}/orders/{order_id}")
            ).json()
            return summary

        if system.pattern == "entity-first":
            require(statuses is not None, "entity-first is checked against the Load's statuses")
            assert statuses is not None
            handled = await check_derived_orders(
                system.producer_url, statuses, summary_of, summaries, system.headers
            )
        else:
            handled = await check_orders(
                system.producer_url, orders, summary_of, summaries, system.headers
            )
    if system.pattern == "event-first":
        await check_read_models(system, orders, wait=60)
    async with (
        system.servicebus_client() as bus,
        bus.get_queue_receiver("inbox", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq,
    ):
        dead = {
            m.session_id: m.dead_letter_reason
            for m in await dlq.peek_messages(max_message_count=100)
        }
    expected = {"eventflow.unroutable": "unroutable:invalid-json", "malformed": "not-a-cloudevent"}
    require(dead == expected, f"dead-letters: {dead}")
    return {"events_handled": handled, "dead_lettered": dead}


async def inject_duplicates(
    system: System, orders: list[str], rng: random.Random, count: int
) -> int:
    """Copies of committed events straight into the inbox under new message ids (as a publisher or
    subscriber replay past the duplicate-detection window would send them): only the consumer's own
    duplicate handling can absorb them. Returns how many were sent."""
    copies: list[ServiceBusMessage] = []
    async with httpx.AsyncClient(timeout=10, headers=system.headers) as client:
        for order_id in rng.sample(orders, min(count, len(orders))):
            if system.pattern == "entity-first":  # no events stored: the current version's, derived
                order = (await client.get(f"{system.producer_url}/orders/{order_id}")).json()
                event = state_event({**order, "order_id": order["id"]})
            else:
                events = (
                    await client.get(f"{system.producer_url}/orders/{order_id}/events")
                ).json()
                event = rng.choice(events)
            copies.append(ServiceBusMessage(orjson.dumps(event), session_id=order_id,
                                            message_id=f"chaos-copy:{event['id']}"))  # fmt: skip
    async with system.servicebus_client() as bus, bus.get_queue_sender("inbox") as sender:
        await sender.send_messages(copies)
    return len(copies)


async def inbox_drained(system: System, wait: float) -> None:
    """Poll (with a deadline) until no session of the inbox has a message to receive: an accept of
    the next available session (no SDK retries, short wait) times out."""
    deadline = time.monotonic() + wait
    # No SDK retries: an accept that finds no session fails after max_wait_time, not after ~20 s.
    connection = system._messaging().connection_string
    async with ServiceBusClient.from_connection_string(connection, retry_total=0) as bus:
        while True:
            receiver = bus.get_queue_receiver(
                "inbox", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1
            )
            try:
                async with receiver:
                    session = receiver.session.session_id
            except OperationTimeoutError:
                return
            require(time.monotonic() < deadline, f"the inbox never drained (session {session})")
            await asyncio.sleep(0.5)


def kill_plan(system: System, rng: random.Random) -> list[str]:
    """The first kills: one worker of every kind, consumer-0 (which serves the reads) among them."""
    plan = [rng.choice([w for w in system.workers() if w.startswith(kind) and w != "consumer-0"])
            for kind in WORKER_KINDS]  # fmt: skip
    plan.append("consumer-0")
    rng.shuffle(plan)
    return plan


async def chaos(
    folder: Path,
    *,
    pattern: str = "outbox",
    orders: int,
    commands_per_order: int,
    kill_every: float,
    pace: float = 0.1,
    seed: int | None = None,
) -> dict[str, Any]:
    """Two replicas of each worker, a REST load, a kill -9 (and restart) of a worker every
    `kill_every` seconds while the load runs — every kind of worker at least once —, injected
    duplicates; then the e2e checks and a summary. The load and the kills draw from separate RNGs,
    both derived from `seed` (random when None, and reported in the summary to replay a run)."""
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    sys.stderr.write(f"chaos seed: {seed}\n")
    load_rng, kill_rng = random.Random(f"load-{seed}"), random.Random(f"kills-{seed}")
    system = System(folder, pattern, replicas={"publisher": 2, "subscriber": 2, "consumer": 2})
    await system.start()
    killed: list[str] = []
    try:
        await inject_malformed(system)
        load = Load(pace=pace)
        started = time.monotonic()
        running = asyncio.create_task(
            load.run(
                system.producer_url,
                orders,
                commands_per_order,
                load_rng,
                concurrency=4,
                headers=system.headers,
            )
        )
        plan = kill_plan(system, kill_rng)
        while not running.done() or plan:
            await asyncio.sleep(kill_every)
            killed.append(system.kill(plan.pop(0)) if plan else system.kill_random_worker(kill_rng))
        await running
        load_seconds = time.monotonic() - started
        injected = await inject_duplicates(system, load.orders, load_rng, count=max(1, orders // 4))
        drain_seconds = await settle(system, load.orders, wait=300)
        await inbox_drained(system, wait=120)
        result = await check_guarantees(system, load.orders, load.statuses)
        duplicates = await _duplicates_on_the_hub(system)  # while the emulators still run
    finally:
        system.stop()
    return {
        "seed": seed, "pattern": pattern, "orders": orders, "commands": sum(load.accepted.values()) + sum(load.rejected.values()),
        "events_committed": load.committed_events, "events_handled": result["events_handled"],
        "kills": len(killed), "killed": dict(Counter(name.split("-")[0] for name in killed)),
        "consumer_0_killed": "consumer-0" in killed, "inbox_duplicates_injected": injected,
        "load_seconds": round(load_seconds, 1), "drain_seconds": round(drain_seconds, 1), **duplicates,
    }  # fmt: skip


async def _duplicates_on_the_hub(system: System) -> dict[str, int]:
    """Replays the pipeline absorbed upstream: event ids the hub holds more than once (a publisher
    that re-published after a kill), read from the CloudEvents themselves."""
    seen: Counter[str] = Counter()
    contents = await hub_contents(system._messaging().connection_string, "orders", wait_seconds=60)
    for events in contents.values():
        for event in events:
            try:
                seen[read_routing(b"".join(event.body)).id] += 1
            except ContractError:
                seen[f"unroutable:{event.sequence_number}"] += 1
    return {
        "hub_events": sum(seen.values()),
        "hub_duplicates_absorbed": sum(count - 1 for count in seen.values()),
    }
