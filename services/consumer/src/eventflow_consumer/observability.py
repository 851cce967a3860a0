"""Metrics, health and the read API: GET /orders/{id}, /healthz, /readyz, /metrics.

The read API takes Entra ID bearer tokens with the app role Orders.Read (or Orders.ReadWrite):
eventflow_contracts.auth, the same validation as the producer's; health and metrics take none.

Metrics are OpenTelemetry instruments kept in memory by this process (a scrape never queries the
store), served here as Prometheus text; names are listed in docs/observability.md."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from aiohttp import web
from opentelemetry.metrics import CallbackOptions, Observation
from prometheus_client.aiohttp import make_aiohttp_handler
from pydantic import TypeAdapter, ValidationError

from eventflow_consumer.handling import Decision
from eventflow_consumer.ports import TransientStoreError
from eventflow_consumer.sessions import ConsumerObserver
from eventflow_contracts.auth import READ_ROLE, Authenticator, AuthError, authorize
from eventflow_contracts.telemetry import Telemetry, metrics_only
from eventflow_contracts.values import OrderId

LOG = structlog.get_logger("eventflow_consumer.observability")
PROBLEM = "application/problem+json"
_ORDER_ID: TypeAdapter[str] = TypeAdapter(OrderId)
READ_TIMEOUT_S = 10.0
"""The read API's bound on one store read (the SDK's own read timeout is 65 s, retried): past it,
503 store-unavailable."""
READINESS_PROBE_ID = "readyz"
"""The document /readyz reads (a point read that finds nothing: the store answers)."""


SERVICE, METER = "consumer", "eventflow_consumer"  # the names its spans, logs and instruments carry


class ConsumerMetrics(ConsumerObserver):
    def __init__(self, telemetry: Telemetry | None = None) -> None:
        telemetry = telemetry or metrics_only(METER)
        self.registry = telemetry.registry
        meter = telemetry.meter
        self._handled = meter.create_counter(
            "eventflow_consumer_handled", description="messages whose effect was applied"
        )
        self._duplicates = meter.create_counter(
            "eventflow_consumer_duplicates", description="duplicates completed without effect"
        )
        self._dead = meter.create_counter(
            "eventflow_consumer_dead_lettered", description="messages dead-lettered"
        )
        self._deferred = meter.create_counter(
            "eventflow_consumer_deferred",
            description="messages deferred: of blocked sessions and orders, and past an order's cap",
        )
        self._waited = meter.create_counter(
            "eventflow_consumer_waited",
            description="early events held to wait for their predecessor",
        )
        self._abandoned = meter.create_counter(
            "eventflow_consumer_abandoned",
            description="messages abandoned after an unexpected error",
        )
        self._blocked = meter.create_counter(
            "eventflow_consumer_sessions_blocked",
            description="sessions, and orders inside lanes, this process blocked",
        )
        self._store_up = 1
        meter.create_observable_gauge(
            "eventflow_consumer_store_available", [self._store_available],
            description="1 while the projection store answers",
        )  # fmt: skip
        self._store_failures = meter.create_counter(
            "eventflow_consumer_store_failures",
            description="store calls that failed transiently (retried)",
        )
        self._outages = meter.create_histogram(
            "eventflow_consumer_store_outage_seconds", description="how long store outages lasted",
            explicit_bucket_boundaries_advisory=[1, 5, 15, 60, 300, 900, 3600],
        )  # fmt: skip
        self._latency = meter.create_histogram(
            "eventflow_consumer_handler_seconds", description="time to handle one message",
            explicit_bucket_boundaries_advisory=[.005, .01, .025, .05, .075, .1, .25, .5, .75, 1, 2.5, 5, 7.5, 10],
        )  # fmt: skip
        for counter in (self._handled, self._deferred, self._waited, self._abandoned,
                        self._blocked, self._store_failures):  # fmt: skip
            counter.add(0)  # scraped as 0 from the start, not absent until the first event

    def _store_available(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._store_up)

    def settled(self, decision: Decision, seconds: float) -> None:
        self._latency.record(seconds)
        if decision.action == "dead_letter":
            self._dead.add(1, {"reason": decision.reason or "unknown"})
        elif decision.duplicate:
            self._duplicates.add(1, {"by": decision.duplicate})
        elif decision.effect:
            self._handled.add(1)

    def deferred(self) -> None:
        self._deferred.add(1)

    def waited(self) -> None:
        self._waited.add(1)

    def blocked(self) -> None:
        self._blocked.add(1)

    def abandoned(self) -> None:
        self._abandoned.add(1)

    def store_unavailable(self) -> None:
        self._store_up = 0
        self._store_failures.add(1)

    def store_available(self, outage_seconds: float) -> None:
        self._store_up = 1
        self._outages.record(outage_seconds)


def problem(
    status: int, kind: str, title: str, detail: str | None = None, **headers: str
) -> web.Response:
    """An RFC 9457 problem document."""
    body: dict[str, Any] = {
        "type": f"urn:eventflow:problem:{kind}",
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    return web.json_response(body, status=status, content_type=PROBLEM, headers=headers or None)


async def store_answer(
    read_order: Callable[[str], Awaitable[dict[str, Any] | None]], order_id: str, within_s: float
) -> dict[str, Any] | None:
    """`read_order(order_id)` within `within_s` seconds. The id is valid by now, so no failure is the
    caller's: each one (an outage, a stall, a refused identity, anything unforeseen: logged) is
    raised as TransientStoreError, for a 503 rather than a 500."""
    try:
        async with asyncio.timeout(within_s):
            return await read_order(order_id)
    except TransientStoreError:
        raise
    except TimeoutError as error:
        raise TransientStoreError(f"Cosmos DB did not answer within {within_s} s") from error
    except Exception as error:
        LOG.exception("the read API's store read failed", error=type(error).__name__)
        raise TransientStoreError(f"the store read failed ({type(error).__name__})") from error


def store_unavailable(error: TransientStoreError) -> web.Response:
    retry = max(1, math.ceil(error.retry_after or 1))
    return problem(503, "store-unavailable", "The projection store is unavailable", str(error),
                   **{"Retry-After": str(retry)})  # fmt: skip


def http_app(
    metrics: ConsumerMetrics,
    read_order: Callable[[str], Awaitable[dict[str, Any] | None]],
    ready: Callable[[], bool],
    auth: Authenticator | None = None,
    *,
    read_timeout_seconds: float = READ_TIMEOUT_S,
) -> web.Application:
    """`auth` None: authentication off (the emulator modes' default)."""
    authenticator = auth or Authenticator(None)

    async def order(request: web.Request) -> web.Response:
        try:
            authorize(await authenticator.caller(request.headers.get("Authorization")), READ_ROLE)
        except AuthError as error:
            return problem(error.status, error.code, error.title, error.detail, **error.headers)
        order_id = request.match_info["order_id"]
        try:
            _ORDER_ID.validate_python(order_id)
        except ValidationError:
            return problem(400, "invalid-order-id", "Invalid order id",
                           "an order id is 1-64 letters, digits, '_' or '-', starting with a letter or digit")  # fmt: skip
        try:
            found = await store_answer(read_order, order_id, read_timeout_seconds)
        except TransientStoreError as error:
            return store_unavailable(error)
        if found is None:
            return problem(404, "order-not-found", "No such order")
        return web.json_response(found)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        """Ready: the store answers a point read and the inbox is being worked (`ready`)."""
        try:
            await store_answer(read_order, READINESS_PROBE_ID, read_timeout_seconds)
        except TransientStoreError as error:
            return store_unavailable(error)
        if not ready():
            return problem(503, "not-ready", "Not ready", "not yet receiving from the inbox, or "
                           "holding messages while the store fails", **{"Retry-After": "5"})  # fmt: skip
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/orders/{order_id}", order)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    return app
