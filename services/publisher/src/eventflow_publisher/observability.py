"""Metrics (Prometheus) and the health endpoint: /healthz, /readyz, /metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from eventflow_publisher.changefeed.processor import ProcessorObserver
from eventflow_publisher.publishing import PublisherObserver


class PublisherMetrics(ProcessorObserver, PublisherObserver):
    """Every count the publisher reports, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.leases = Gauge(
            "eventflow_publisher_leases_owned", "leases this instance owns", registry=self.registry
        )
        self.events = Counter(
            "eventflow_publisher_events_published",
            "events accepted by the hub",
            registry=self.registry,
        )
        self.batches = Histogram(
            "eventflow_publisher_batch_events", "events per batch sent", registry=self.registry,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
        )  # fmt: skip
        self.pages = Counter(
            "eventflow_publisher_pages",
            "change feed pages handled and checkpointed",
            registry=self.registry,
        )
        self.retries = Counter(
            "eventflow_publisher_send_retries", "sends refused and retried", registry=self.registry
        )
        self.poison = Counter(
            "eventflow_publisher_poison",
            "events recorded as poison",
            ["reason"],
            registry=self.registry,
        )
        self.handler_failures = Counter(
            "eventflow_publisher_handler_failures",
            "pages whose handling failed (read again)",
            registry=self.registry,
        )
        self.lag_changes = Gauge(
            "eventflow_publisher_estimated_lag",
            "changes waiting per lease (LSN steps)",
            ["lease"],
            registry=self.registry,
        )

    def leases_owned(self, lease_ids: Sequence[str]) -> None:
        self.leases.set(len(lease_ids))

    def page_handled(self, lease_id: str, items: int) -> None:  # noqa: ARG002
        self.pages.inc()

    def handler_failed(self, lease_id: str, error: BaseException) -> None:
        super().handler_failed(lease_id, error)
        self.handler_failures.inc()

    def lag(self, lease_id: str, changes: int) -> None:
        self.lag_changes.labels(lease=lease_id).set(changes)

    def published(self, events: int, batch_sizes: Sequence[int]) -> None:
        self.events.inc(events)
        for size in batch_sizes:
            self.batches.observe(size)

    def send_retry(self, error: BaseException) -> None:  # noqa: ARG002
        self.retries.inc()

    def poisoned(self, reason: str) -> None:
        self.poison.labels(reason=reason).inc()


def health_app(metrics: PublisherMetrics, ready: Callable[[], bool]) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    async def prometheus(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app
