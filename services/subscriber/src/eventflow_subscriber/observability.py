"""Metrics (Prometheus) and the health endpoint: /healthz, /readyz, /metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from eventflow_subscriber.forwarding import ForwarderObserver


class SubscriberMetrics(ForwarderObserver):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._received = Counter(
            "eventflow_subscriber_events_received",
            "events read from the hub",
            registry=self.registry,
        )
        self._forwarded = Counter(
            "eventflow_subscriber_events_forwarded",
            "events put into the inbox",
            registry=self.registry,
        )
        self._filtered = Counter(
            "eventflow_subscriber_events_filtered",
            "events of types not subscribed",
            registry=self.registry,
        )
        self._markers = Counter(
            "eventflow_subscriber_markers",
            "unroutable events sent as markers",
            registry=self.registry,
        )
        self._retries = Counter(
            "eventflow_subscriber_send_retries",
            "inbox sends retried",
            ["busy"],
            registry=self.registry,
        )
        self._checkpoint_age = Gauge(
            "eventflow_subscriber_checkpoint_age_seconds", "seconds since the last checkpoint", ["partition"],
            registry=self.registry,
        )  # fmt: skip
        self._checkpointed: dict[str, float] = {}

    def received(self, events: int) -> None:
        self._received.inc(events)

    def forwarded(self, messages: int) -> None:
        self._forwarded.inc(messages)

    def filtered(self, events: int) -> None:
        self._filtered.inc(events)

    def markers(self, messages: int) -> None:
        self._markers.inc(messages)

    def send_retry(self, *, busy: bool) -> None:
        self._retries.labels(busy=str(busy).lower()).inc()

    def checkpointed(self, partition: str) -> None:
        self._checkpointed[partition] = time.monotonic()

    def render(self) -> bytes:
        now = time.monotonic()
        for partition, at in self._checkpointed.items():
            self._checkpoint_age.labels(partition=partition).set(round(now - at, 3))
        return generate_latest(self.registry)


def health_app(metrics: SubscriberMetrics, ready: Callable[[], bool]) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        return (
            web.json_response({"status": "ready"})
            if ready()
            else web.json_response({"status": "not ready"}, status=503)
        )

    async def prometheus(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app
