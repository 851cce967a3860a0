"""Metrics, health and the read API: GET /orders/{id}, /healthz, /readyz, /metrics."""

from __future__ import annotations

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

from eventflow_consumer.adapters.servicebus_sessions import ConsumerObserver
from eventflow_consumer.handling import Decision


class ConsumerMetrics(ConsumerObserver):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._handled = Counter(
            "eventflow_consumer_handled",
            "messages whose effect was applied",
            registry=self.registry,
        )
        self._duplicates = Counter(
            "eventflow_consumer_duplicates",
            "duplicates completed without effect",
            ["by"],
            registry=self.registry,
        )
        self._dead = Counter(
            "eventflow_consumer_dead_lettered",
            "messages dead-lettered",
            ["reason"],
            registry=self.registry,
        )
        self._abandoned = Counter(
            "eventflow_consumer_abandoned",
            "messages abandoned after transient failures",
            registry=self.registry,
        )
        self._deferred = Counter(
            "eventflow_consumer_deferred",
            "messages deferred in blocked sessions",
            registry=self.registry,
        )
        self.blocked_sessions = Gauge(
            "eventflow_consumer_blocked_sessions",
            "sessions blocked by a poison message",
            registry=self.registry,
        )
        self._latency = Histogram(
            "eventflow_consumer_handler_seconds",
            "time to handle one message",
            registry=self.registry,
        )

    def settled(self, decision: Decision, seconds: float) -> None:
        self._latency.observe(seconds)
        if decision.action == "dead_letter":
            self._dead.labels(reason=decision.reason or "unknown").inc()
        elif decision.action == "abandon":
            self._abandoned.inc()
        elif decision.duplicate:
            self._duplicates.labels(by=decision.duplicate).inc()
        elif decision.effect:
            self._handled.inc()

    def deferred(self) -> None:
        self._deferred.inc()


def http_app(
    metrics: ConsumerMetrics,
    read_order: Callable[[str], Awaitable[dict[str, Any] | None]],
    count_blocked: Callable[[], Awaitable[int]],
    ready: Callable[[], bool],
) -> web.Application:
    async def order(request: web.Request) -> web.Response:
        found = await read_order(request.match_info["order_id"])
        if found is None:
            return web.json_response(
                {"type": "urn:eventflow:problem:order-not-found", "title": "No such order", "status": 404},
                status=404, content_type="application/problem+json",
            )  # fmt: skip
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
        metrics.blocked_sessions.set(await count_blocked())
        response = web.Response(body=generate_latest(metrics.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/orders/{order_id}", order)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app
