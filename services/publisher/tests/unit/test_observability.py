import time

from aiohttp.test_utils import TestClient, TestServer

from eventflow_publisher.changefeed import Backlog, LeaseStatus
from eventflow_publisher.observability import PublisherMetrics, health_app


async def test_health_readiness_and_metrics() -> None:
    metrics, ready = PublisherMetrics(), [False]
    metrics.leases_owned(["l1", "l2"])
    metrics.published(5, [2, 3])
    metrics.page_handled("l1", 5)
    metrics.send_retry(RuntimeError("busy"))
    metrics.poisoned("too-large")
    metrics.handler_failed("l1", RuntimeError("boom"))
    status = LeaseStatus(acquired_at=100.0, checkpointed_at=110.0, consecutive_failures=2,
                         backlog=Backlog(7, int(time.time()) - 60), stalled="no progress")  # fmt: skip
    metrics.lease_status("l1", status, now=130.0)
    metrics.lease_status("l2", LeaseStatus(acquired_at=100.0), now=130.0)
    metrics.lease_released("l2")
    async with TestClient(TestServer(health_app(metrics, lambda: ready[0]))) as client:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 503
        ready[0] = True
        assert (await client.get("/readyz")).status == 200
        text = await (await client.get("/metrics")).text()
    for line in (
        "eventflow_publisher_leases_owned 2.0",
        "eventflow_publisher_events_published_total 5.0",
        "eventflow_publisher_batch_events_count 2.0",
        'eventflow_publisher_poison_total{reason="too-large"} 1.0',
        'eventflow_publisher_estimated_lag{lease="l1"} 7.0',
        "eventflow_publisher_send_retries_total 1.0",
        'eventflow_publisher_checkpoint_age_seconds{lease="l1"} 20.0',
        'eventflow_publisher_lease_consecutive_failures{lease="l1"} 2.0',
        'eventflow_publisher_lease_stalled{lease="l1"} 1.0',
    ):
        assert line in text
    assert 'lease="l2"' not in text, "a released lease's figures are dropped"
    (oldest,) = [
        line
        for line in text.splitlines()
        if line.startswith("eventflow_publisher_oldest_unpublished_age_seconds{")
    ]
    assert 59 <= float(oldest.split()[-1]) < 120
