"""The read API and the metrics endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from eventflow_consumer.handling import Decision
from eventflow_consumer.observability import ConsumerMetrics, http_app
from eventflow_consumer.ports import TransientStoreError


@asynccontextmanager
async def client(
    read: Callable[[str], Awaitable[dict[str, Any] | None]], metrics: ConsumerMetrics | None = None
) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(
        TestServer(http_app(metrics or ConsumerMetrics(), read, lambda: True))
    ) as c:
        yield c


async def test_a_throttled_store_is_a_problem_with_retry_after() -> None:
    async def throttled(order_id: str) -> dict[str, Any] | None:
        raise TransientStoreError("Cosmos DB answered 429", retry_after=2.5)

    async with client(throttled) as c:
        response = await c.get("/orders/o1")
        assert response.status == 503
        assert response.content_type == "application/problem+json"
        assert response.headers["Retry-After"] == "3"
        assert (await response.json())["type"] == "urn:eventflow:problem:store-unavailable"


async def test_an_invalid_order_id_is_refused_before_the_store_is_asked() -> None:
    asked: list[str] = []

    async def read(order_id: str) -> dict[str, Any] | None:
        asked.append(order_id)
        return None

    async with client(read) as c:
        for bad in ("-o1", "o" * 65, "o 1", "o%2F1"):
            response = await c.get(f"/orders/{bad}")
            assert response.status == 400, bad
            assert response.content_type == "application/problem+json"
        assert (await c.get("/orders/o1")).status == 404
    assert asked == ["o1"]


async def test_metrics_come_from_memory_and_never_ask_the_store() -> None:
    async def read(order_id: str) -> dict[str, Any] | None:
        raise AssertionError("a scrape must not read the store")

    metrics = ConsumerMetrics()
    metrics.settled(Decision("dead_letter", reason="session-mismatch"), 0.01)
    metrics.blocked()
    metrics.store_unavailable()
    async with client(read, metrics) as c:
        text = await (await c.get("/metrics")).text()
    assert 'eventflow_consumer_dead_lettered_total{reason="session-mismatch"} 1.0' in text
    assert "eventflow_consumer_sessions_blocked_total 1.0" in text
    assert "eventflow_consumer_store_available 0.0" in text
