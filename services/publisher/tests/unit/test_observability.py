from aiohttp.test_utils import TestClient, TestServer

from eventflow_publisher.observability import PublisherMetrics, health_app


async def test_health_readiness_and_metrics() -> None:
    metrics, ready = PublisherMetrics(), [False]
    metrics.leases_owned(["l1", "l2"])
    metrics.published(5, [2, 3])
    metrics.page_handled("l1", 5)
    metrics.send_retry(RuntimeError("busy"))
    metrics.poisoned("too-large")
    metrics.handler_failed("l1", RuntimeError("boom"))
    metrics.lag("l1", 7)
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
    ):
        assert line in text
