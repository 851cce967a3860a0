"""Metrics (OpenTelemetry instruments, also served as Prometheus text) and the health endpoint:
/healthz, /readyz, /metrics. Names are listed in docs/observability.md."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from aiohttp import web
from opentelemetry.metrics import CallbackOptions, Observation
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eventflow_contracts.telemetry import Telemetry, metrics_only
from eventflow_subscriber.forwarding import ForwarderObserver

SERVICE, METER = (
    "subscriber",
    "eventflow_subscriber",
)  # the names its spans, logs and instruments carry


class SubscriberMetrics(ForwarderObserver):
    def __init__(self, telemetry: Telemetry | None = None) -> None:
        telemetry = telemetry or metrics_only(METER)
        self.registry = telemetry.registry
        meter = telemetry.meter
        self._received = meter.create_counter(
            "eventflow_subscriber_events_received", description="events read from the hub"
        )
        self._forwarded = meter.create_counter(
            "eventflow_subscriber_events_forwarded", description="events put into the inbox"
        )
        self._filtered = meter.create_counter(
            "eventflow_subscriber_events_filtered", description="events of types not subscribed"
        )
        self._markers = meter.create_counter(
            "eventflow_subscriber_markers", description="unroutable events sent as markers"
        )
        self._retries = meter.create_counter(
            "eventflow_subscriber_send_retries", description="inbox sends retried"
        )
        meter.create_observable_gauge(
            "eventflow_subscriber_checkpoint_age_seconds", [self._checkpoint_ages],
            description="seconds since the last checkpoint",
        )  # fmt: skip
        self._checkpointed: dict[str, float] = {}
        for counter in (self._received, self._forwarded, self._filtered, self._markers):
            counter.add(0)  # scraped as 0 from the start, not absent until the first event

    def _checkpoint_ages(self, _: CallbackOptions) -> Iterable[Observation]:
        now = time.monotonic()
        for partition, at in list(self._checkpointed.items()):
            yield Observation(round(now - at, 3), {"partition": partition})

    def received(self, events: int) -> None:
        self._received.add(events)

    def forwarded(self, messages: int) -> None:
        self._forwarded.add(messages)

    def filtered(self, events: int) -> None:
        self._filtered.add(events)

    def markers(self, messages: int) -> None:
        self._markers.add(messages)

    def send_retry(self, *, busy: bool) -> None:
        self._retries.add(1, {"busy": str(busy).lower()})

    def checkpointed(self, partition: str) -> None:
        self._checkpointed[partition] = time.monotonic()

    def render(self) -> bytes:
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
