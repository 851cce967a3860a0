"""Metrics (OpenTelemetry instruments, also served as Prometheus text) and the health endpoint:
/healthz, /readyz, /metrics. Names are listed in docs/observability.md."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from aiohttp import web
from opentelemetry.metrics import CallbackOptions, Observation
from prometheus_client import generate_latest
from prometheus_client.aiohttp import make_aiohttp_handler

from eventflow_contracts.telemetry import Telemetry, metrics_only
from eventflow_subscriber.forwarding import ForwarderObserver

SERVICE, METER = (
    "subscriber",
    "eventflow_subscriber",
)  # the names its spans, logs and instruments carry


class SubscriberMetrics(ForwarderObserver):
    """Counters of the flow, and the checkpoint age of each partition this replica owns.

    The age gauge shows only owned partitions: one lost in a rebalance (or released at shutdown)
    leaves it, or its age would grow here while another replica moves it, and fire the alert. A
    partition claimed counts from its claim until its first checkpoint here. One closed after its
    batch failed is kept, with the age of its last checkpoint, for `failed_hold_seconds`: the SDK
    closes it and this replica normally claims it again at its next load-balancing cycle, so a batch
    that fails every time keeps aging instead of looking fresh at each claim; if another replica
    claims it instead, it leaves the gauge once that time has passed."""

    def __init__(
        self, telemetry: Telemetry | None = None, *, failed_hold_seconds: float = 120.0
    ) -> None:
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
            description="seconds since the partition's last checkpoint (or claim) by this replica",
        )  # fmt: skip
        self._checkpointed: dict[str, float] = {}  # owned partitions: last checkpoint (or claim)
        self._failed: dict[str, float] = {}  # closed after a failed batch, not claimed again yet
        self._failed_hold = failed_hold_seconds
        for counter in (self._received, self._forwarded, self._filtered, self._markers):
            counter.add(0)  # scraped as 0 from the start, not absent until the first event

    def _checkpoint_ages(self, _: CallbackOptions) -> Iterable[Observation]:
        now = time.monotonic()
        for partition, failed_at in list(self._failed.items()):
            if now - failed_at > self._failed_hold:  # claimed by another replica meanwhile
                del self._failed[partition]
                self._checkpointed.pop(partition, None)
        for partition, at in list(self._checkpointed.items()):
            yield Observation(round(now - at, 3), {"partition": partition})

    def claimed(self, partition: str) -> None:
        """This replica owns the partition now (its age goes on if it was kept after a failure)."""
        self._failed.pop(partition, None)
        self._checkpointed.setdefault(partition, time.monotonic())

    def released(self, partition: str) -> None:
        """This replica no longer owns the partition: lost to another, failed, or shutting down."""
        if partition not in self._failed:
            self._checkpointed.pop(partition, None)

    def failed(self, partition: str) -> None:
        """A batch of the partition failed: the SDK closes the partition and it is claimed again."""
        if partition in self._checkpointed:
            self._failed[partition] = time.monotonic()

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

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    return app
