"""Metrics, health and the read API: GET /orders/{id}, /healthz, /readyz, /metrics.

Metrics come from counters kept in memory by this process: a scrape never queries the store."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import TypeAdapter, ValidationError

from eventflow_consumer.handling import Decision
from eventflow_consumer.ports import TransientStoreError
from eventflow_consumer.sessions import ConsumerObserver
from eventflow_contracts.values import OrderId

PROBLEM = "application/problem+json"
_ORDER_ID: TypeAdapter[str] = TypeAdapter(OrderId)


class ConsumerMetrics(ConsumerObserver):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._handled = Counter(
            "eventflow_consumer_handled", "messages whose effect was applied", registry=r
        )
        self._duplicates = Counter(
            "eventflow_consumer_duplicates",
            "duplicates completed without effect",
            ["by"],
            registry=r,
        )
        self._dead = Counter(
            "eventflow_consumer_dead_lettered", "messages dead-lettered", ["reason"], registry=r
        )
        self._deferred = Counter(
            "eventflow_consumer_deferred", "messages deferred in blocked sessions", registry=r
        )
        self._waited = Counter(
            "eventflow_consumer_waited",
            "early events held to wait for their predecessor",
            registry=r,
        )
        self._abandoned = Counter(
            "eventflow_consumer_abandoned",
            "messages abandoned after an unexpected error",
            registry=r,
        )
        self._blocked = Counter(
            "eventflow_consumer_sessions_blocked", "sessions this process blocked", registry=r
        )
        self._store_up = Gauge(
            "eventflow_consumer_store_available", "1 while the projection store answers", registry=r
        )
        self._store_up.set(1)
        self._store_failures = Counter(
            "eventflow_consumer_store_failures",
            "store calls that failed transiently (retried)",
            registry=r,
        )
        self._outages = Histogram(
            "eventflow_consumer_store_outage_seconds", "how long store outages lasted",
            buckets=(1, 5, 15, 60, 300, 900, 3600, math.inf), registry=r,
        )  # fmt: skip
        self._latency = Histogram(
            "eventflow_consumer_handler_seconds", "time to handle one message", registry=r
        )

    def settled(self, decision: Decision, seconds: float) -> None:
        self._latency.observe(seconds)
        if decision.action == "dead_letter":
            self._dead.labels(reason=decision.reason or "unknown").inc()
        elif decision.duplicate:
            self._duplicates.labels(by=decision.duplicate).inc()
        elif decision.effect:
            self._handled.inc()

    def deferred(self) -> None:
        self._deferred.inc()

    def waited(self) -> None:
        self._waited.inc()

    def blocked(self) -> None:
        self._blocked.inc()

    def abandoned(self) -> None:
        self._abandoned.inc()

    def store_unavailable(self) -> None:
        self._store_up.set(0)
        self._store_failures.inc()

    def store_available(self, outage_seconds: float) -> None:
        self._store_up.set(1)
        self._outages.observe(outage_seconds)


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


def http_app(
    metrics: ConsumerMetrics,
    read_order: Callable[[str], Awaitable[dict[str, Any] | None]],
    ready: Callable[[], bool],
) -> web.Application:
    async def order(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        try:
            _ORDER_ID.validate_python(order_id)
        except ValidationError:
            return problem(400, "invalid-order-id", "Invalid order id",
                           "an order id is 1-64 letters, digits, '_' or '-', starting with a letter or digit")  # fmt: skip
        try:
            found = await read_order(order_id)
        except TransientStoreError as error:
            retry = max(1, math.ceil(error.retry_after or 1))
            return problem(503, "store-unavailable", "The projection store is unavailable",
                           str(error), **{"Retry-After": str(retry)})  # fmt: skip
        if found is None:
            return problem(404, "order-not-found", "No such order")
        return web.json_response(found)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        return (
            web.json_response({"status": "ready"})
            if ready()
            else web.json_response({"status": "not ready"}, status=503)
        )

    async def prometheus(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/orders/{order_id}", order)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app
