"""Event-first's read-model maintainer as a second change feed processor (its own lease prefix)
beside a publishing one, on the Cosmos DB emulator through the real SDK: both see every event, the
read models reach each order's version, and the store refuses stale writes."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from eventflow_contracts import OrderCreated, OrderItemAdded, OrderLine, new_event, to_json_dict
from eventflow_publisher.adapters.cosmos_changefeed import CosmosPoisonStore
from eventflow_publisher.adapters.cosmos_read_model import CosmosReadModelStore
from eventflow_publisher.changefeed import ChangeFeedProcessor, LeaseContext, ProcessorOptions
from eventflow_publisher.readmodel import ReadModelConflictError, ReadModelMaintainer
from eventflow_testing import eventually

from ..conftest import Collector, Store  # type: ignore[import-not-found]

# Renewals every 0.5 s: a lease's deadline span (0.675 s) outlasts a page on a loaded 2-core
# machine; at 0.2 s (a 0.27 s span) pages were cut at the deadline over and over under load.
FAST = {"poll_delay": 0.02, "acquire_interval": 0.1, "renew_interval": 0.5, "expiry": 2.0,
        "lag_interval": 0.1, "retry_delay": 0.01, "max_retry_delay": 0.05}  # fmt: skip
LINE = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("2.00"))
NOW = datetime(2026, 6, 1, tzinfo=UTC)


async def append(store: Store, order_id: str, sequence: int) -> str:
    """An event document as the event-first producer writes it (no TTL)."""
    data: Any = (
        OrderCreated(
            order_id=order_id, customer_id="c", currency="EUR", lines=(), total=Decimal("0.00")
        )
        if sequence == 1
        else OrderItemAdded(order_id=order_id, line=LINE)
    )
    event = new_event(data, source="/test", sequence=sequence, time=NOW)
    document = {"id": f"{order_id}:event:{sequence:020d}", "order_id": order_id, "kind": "event",
                "sequence": sequence, "event": to_json_dict(event)}  # fmt: skip
    await store.orders.create_item(document)
    return str(document["id"])


async def read_models_reach(models: CosmosReadModelStore, versions: dict[str, int]) -> None:
    deadline = time.monotonic() + 20
    while True:
        found = {order_id: (await models.load(order_id))[0] for order_id in versions}
        if all(state is not None and state.version == versions[o] for o, state in found.items()):
            return
        assert time.monotonic() < deadline, f"read models never caught up: {found}"
        await asyncio.sleep(0.05)


async def test_the_maintainer_and_the_publisher_each_read_every_event_with_their_own_leases(
    store: Store,
) -> None:
    written = [await append(store, f"o-{n}", s) for s in (1, 2, 3) for n in range(5)]
    models = CosmosReadModelStore(store.orders)
    poison = CosmosPoisonStore(store.leases_container, "read-model-poison")
    publishing, maintaining = Collector(), ReadModelMaintainer(models, poison)
    processors = [
        ChangeFeedProcessor(
            feed=store.feed(),
            leases=await store.lease_store(name),
            handler=handler,
            options=ProcessorOptions(instance_name=name, **FAST),
        )
        for name, handler in (("publisher", publishing), ("read-model", maintaining))
    ]
    tasks = [asyncio.create_task(processor.run()) for processor in processors]
    try:
        await read_models_reach(models, {f"o-{n}": 3 for n in range(5)})
        await eventually(
            lambda: set(written) <= set(publishing.ids()), what="every event published"
        )
        written.append(await append(store, "o-0", 4))  # a later change follows
        await read_models_reach(models, {"o-0": 4})
        state, _ = await models.load("o-0")
        assert state is not None
        assert (state.status, len(state.lines), f"{state.total}") == ("open", 3, "6.00")
    finally:
        for processor in processors:
            await processor.stop()
        await asyncio.gather(*tasks)
    assert await poison.list_records() == []
    for name in ("publisher", "read-model"):  # two independent sets of leases, both checkpointed
        leases = await (await store.lease_store(name)).list_leases()
        assert leases
        assert all(lease.continuation for lease in leases)


async def test_the_read_model_store_refuses_a_stale_or_a_second_first_write(store: Store) -> None:
    await append(store, "o-x", 1)
    models = CosmosReadModelStore(store.orders)
    maintainer = ReadModelMaintainer(models, CosmosPoisonStore(store.leases_container, "p"))
    page = [d async for d in store.orders.query_items("SELECT * FROM c", partition_key="o-x")]
    await maintainer(LeaseContext("lease", {"Range": {}}), page)
    state, etag = await models.load("o-x")
    assert state is not None
    assert etag is not None
    with pytest.raises(ReadModelConflictError):
        await models.save(state, None)  # it exists already
    await models.save(state, etag)
    with pytest.raises(ReadModelConflictError):
        await models.save(state, etag)  # the ETag is stale now
    assert await models.load("missing") == (None, None)
