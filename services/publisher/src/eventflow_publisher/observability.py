"""Metrics (OpenTelemetry instruments, also served as Prometheus text) and the health endpoint:
/healthz, /readyz, /metrics. Names are listed in docs/observability.md."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from aiohttp import web
from opentelemetry.metrics import CallbackOptions, Observation
from prometheus_client.aiohttp import make_aiohttp_handler

from eventflow_contracts.telemetry import Telemetry, metrics_only
from eventflow_publisher.changefeed.processor import LeaseStatus, ProcessorObserver
from eventflow_publisher.publishing import PublisherObserver

PER_LEASE = {
    "eventflow_publisher_estimated_lag": "changes waiting per lease (LSN steps)",
    "eventflow_publisher_checkpoint_age_seconds": "seconds since the lease last checkpointed (or was acquired)",
    "eventflow_publisher_oldest_unpublished_age_seconds": "age of the oldest change waiting in the lease's range (0: none waits)",
    "eventflow_publisher_lease_consecutive_failures": "reads or handlings of the lease that failed in a row",
    "eventflow_publisher_lease_stalled": "1 when the lease is not making progress",
}  # fmt: skip


SERVICE, METER = (
    "publisher",
    "eventflow_publisher",
)  # the names its spans, logs and instruments carry


class PublisherMetrics(ProcessorObserver, PublisherObserver):
    """Every count the publisher reports. Per-lease figures are observed from the last status of
    each owned lease, so a released lease's figures are gone from the next collection."""

    def __init__(self, telemetry: Telemetry | None = None) -> None:
        telemetry = telemetry or metrics_only(METER)
        self.registry = telemetry.registry
        meter = telemetry.meter
        self._owned = 0
        self._per_lease: dict[str, dict[str, float]] = {}
        meter.create_observable_gauge("eventflow_publisher_leases_owned", [self._leases_owned],
                                      description="leases this instance owns")  # fmt: skip
        self.events = meter.create_counter(
            "eventflow_publisher_events_published", description="events accepted by the hub"
        )
        self.batches = meter.create_histogram(
            "eventflow_publisher_batch_events", description="events per batch sent",
            explicit_bucket_boundaries_advisory=[1, 2, 5, 10, 20, 50, 100, 200, 500],
        )  # fmt: skip
        self.pages = meter.create_counter(
            "eventflow_publisher_pages", description="change feed pages handled and checkpointed"
        )
        self.retries = meter.create_counter(
            "eventflow_publisher_send_retries", description="sends refused and retried"
        )
        self.poison = meter.create_counter(
            "eventflow_publisher_poison", description="events recorded as poison"
        )
        self.handler_failures = meter.create_counter(
            "eventflow_publisher_handler_failures",
            description="pages whose handling failed (read again)",
        )
        for name, description in PER_LEASE.items():
            meter.create_observable_gauge(name, [self._lease_figure(name)], description=description)
        for counter in (self.events, self.pages, self.retries, self.handler_failures):
            counter.add(0)  # scraped as 0 from the start, not absent until the first event

    def _leases_owned(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._owned)

    def _lease_figure(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            for lease_id, figures in list(self._per_lease.items()):
                if name in figures:
                    yield Observation(figures[name], {"lease": lease_id})

        return observe

    def leases_owned(self, lease_ids: Sequence[str]) -> None:
        self._owned = len(lease_ids)

    def page_handled(self, lease_id: str, items: int) -> None:  # noqa: ARG002
        self.pages.add(1)

    def handler_failed(self, lease_id: str, error: BaseException) -> None:
        super().handler_failed(lease_id, error)
        self.handler_failures.add(1)

    def lease_status(self, lease_id: str, status: LeaseStatus, now: float) -> None:
        figures = self._per_lease.setdefault(lease_id, {})
        backlog = status.backlog
        if backlog is not None:
            figures["eventflow_publisher_estimated_lag"] = backlog.changes
            oldest = 0.0 if backlog.oldest_ts is None else max(0.0, time.time() - backlog.oldest_ts)
            figures["eventflow_publisher_oldest_unpublished_age_seconds"] = oldest
        progressed = status.checkpointed_at or status.acquired_at
        figures["eventflow_publisher_checkpoint_age_seconds"] = max(0.0, now - progressed)
        figures["eventflow_publisher_lease_consecutive_failures"] = status.consecutive_failures
        figures["eventflow_publisher_lease_stalled"] = 1 if status.stalled else 0

    def lease_released(self, lease_id: str) -> None:
        self._per_lease.pop(lease_id, None)

    def published(self, events: int, batch_sizes: Sequence[int]) -> None:
        self.events.add(events)
        for size in batch_sizes:
            self.batches.record(size)

    def send_retry(self, error: BaseException) -> None:  # noqa: ARG002
        self.retries.add(1)

    def poisoned(self, reason: str) -> None:
        self.poison.add(1, {"reason": reason})


def health_app(metrics: PublisherMetrics, ready: Callable[[], bool]) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    return app
