"""Fixtures for the producer's tests: a fake store (unit) and the app on a real store (integration)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from eventflow_contracts import CloudEvent, to_json_dict
from eventflow_producer.api import WriteStrategy, create_app
from eventflow_producer.domain import Order
from eventflow_producer.ports import (
    ConcurrentChangeError,
    IdempotencyRecord,
    OrderExistsError,
    OrderStore,
    Stored,
    StoreUnavailableError,
)
from eventflow_producer.settings import Settings


class FakeOrderStore:
    """The OrderStore port in memory, with assertable state and a switch to refuse service."""

    def __init__(self) -> None:
        self.orders: dict[str, tuple[Order, int]] = {}
        self.outbox: dict[str, list[dict[str, Any]]] = {}
        self.records: dict[str, IdempotencyRecord] = {}
        self.writes = 0
        self.unavailable = False

    def _guard(self) -> None:
        if self.unavailable:
            raise StoreUnavailableError("refused by the test", retry_after_seconds=2.5)

    async def create(
        self, order: Order, events: Sequence[CloudEvent[Any]], idempotency: IdempotencyRecord | None
    ) -> str:
        self._guard()
        if order.id in self.orders:
            raise OrderExistsError(order.id)
        self.writes += 1
        self.orders[order.id] = (order, 1)
        self.outbox[order.id] = [to_json_dict(event) for event in events]
        if idempotency is not None:
            self.records[order.id] = idempotency
        return "1"

    async def load(self, order_id: str) -> Stored | None:
        self._guard()
        found = self.orders.get(order_id)
        return None if found is None else Stored(found[0], str(found[1]))

    async def update(self, order: Order, token: str, events: Sequence[CloudEvent[Any]]) -> str:
        self._guard()
        _, generation = self.orders[order.id]
        if str(generation) != token:
            raise ConcurrentChangeError(order.id)
        self.writes += 1
        self.orders[order.id] = (order, generation + 1)
        self.outbox[order.id] += [to_json_dict(event) for event in events]
        return str(generation + 1)

    async def events(self, order_id: str) -> list[dict[str, Any]]:
        self._guard()
        return copy.deepcopy(self.outbox.get(order_id, []))

    async def idempotency_record(self, order_id: str) -> IdempotencyRecord | None:
        return self.records.get(order_id)

    async def check(self) -> None:
        self._guard()


@asynccontextmanager
async def running(settings: Settings, strategy: WriteStrategy) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, behind an httpx client."""
    app = create_app(settings, strategy)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://producer") as client:
            yield client


@pytest.fixture
def fake_store() -> FakeOrderStore:
    return FakeOrderStore()


@pytest.fixture
async def client(fake_store: FakeOrderStore) -> AsyncIterator[httpx.AsyncClient]:
    @asynccontextmanager
    async def open_store() -> AsyncIterator[OrderStore]:
        yield fake_store

    async with running(Settings(max_body_bytes=8192), WriteStrategy(open_store)) as http:
        yield http
