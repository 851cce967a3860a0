"""Metrics (Prometheus) and the health endpoint: /healthz, /readyz, /metrics."""

from __future__ import annotations

import contextlib
import time
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

from eventflow_publisher.changefeed.processor import LeaseStatus, ProcessorObserver
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
        per_lease = ["lease"]
        self.lag_changes = Gauge(
            "eventflow_publisher_estimated_lag", "changes waiting per lease (LSN steps)",
            per_lease, registry=self.registry,
        )  # fmt: skip
        self.checkpoint_age = Gauge(
            "eventflow_publisher_checkpoint_age_seconds",
            "seconds since the lease last checkpointed (or was acquired)",
            per_lease, registry=self.registry,
        )  # fmt: skip
        self.oldest_unpublished = Gauge(
            "eventflow_publisher_oldest_unpublished_age_seconds",
            "age of the oldest change waiting in the lease's range (0: none waits)",
            per_lease, registry=self.registry,
        )  # fmt: skip
        self.consecutive_failures = Gauge(
            "eventflow_publisher_lease_consecutive_failures",
            "reads or handlings of the lease that failed in a row",
            per_lease, registry=self.registry,
        )  # fmt: skip
        self.stalled = Gauge(
            "eventflow_publisher_lease_stalled", "1 when the lease is not making progress",
            per_lease, registry=self.registry,
        )  # fmt: skip
        self._per_lease = (
            self.lag_changes, self.checkpoint_age, self.oldest_unpublished,
            self.consecutive_failures, self.stalled,
        )  # fmt: skip

    def leases_owned(self, lease_ids: Sequence[str]) -> None:
        self.leases.set(len(lease_ids))

    def page_handled(self, lease_id: str, items: int) -> None:  # noqa: ARG002
        self.pages.inc()

    def handler_failed(self, lease_id: str, error: BaseException) -> None:
        super().handler_failed(lease_id, error)
        self.handler_failures.inc()

    def lease_status(self, lease_id: str, status: LeaseStatus, now: float) -> None:
        backlog = status.backlog
        if backlog is not None:
            self.lag_changes.labels(lease=lease_id).set(backlog.changes)
            oldest = 0.0 if backlog.oldest_ts is None else max(0.0, time.time() - backlog.oldest_ts)
            self.oldest_unpublished.labels(lease=lease_id).set(oldest)
        progressed = status.checkpointed_at or status.acquired_at
        self.checkpoint_age.labels(lease=lease_id).set(max(0.0, now - progressed))
        self.consecutive_failures.labels(lease=lease_id).set(status.consecutive_failures)
        self.stalled.labels(lease=lease_id).set(1 if status.stalled else 0)

    def lease_released(self, lease_id: str) -> None:
        for gauge in self._per_lease:
            with contextlib.suppress(KeyError):
                gauge.remove(lease_id)

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
