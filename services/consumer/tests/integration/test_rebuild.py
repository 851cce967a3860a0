"""Rebuilding the projection (docs/operations.md): `clear-projection` deletes the summaries and inbox
marks and keeps the blocked records; the events replayed afterwards rebuild the same summaries."""

from __future__ import annotations

from typing import Any

import pytest

from eventflow_consumer.admin import run as admin
from eventflow_testing import eventually as until

from ..conftest import Backends, inbox_message, order_events  # type: ignore[import-not-found]
from .test_sessions import at_sequence, consumer


async def test_clear_projection_then_a_replay_rebuilds_the_same_summaries(
    backends: Backends, capsys: Any
) -> None:
    orders = ["o1", "o2", "o3"]
    events = {order_id: order_events(order_id)[:3] for order_id in orders}
    for order_id in orders:
        await backends.send(*(inbox_message(raw, order_id) for raw in events[order_id]))
    await backends.send(inbox_message(b"{not json", "o9", "poison"))
    async with consumer(backends, poison_policy="block") as resources:
        for order_id in orders:
            await until(at_sequence(resources, order_id, 3), f"{order_id} projected")
        await until(backends.has_dead_letters, "o9 blocked by its poison message")
        before = {order_id: await resources.store.get(order_id) for order_id in orders}

    with pytest.raises(SystemExit) as exit_:
        await admin(["clear-projection"])
    assert exit_.value.code == 2
    capsys.readouterr()
    assert await admin(["clear-projection", "--confirm", "not-the-container"]) == 2
    assert "--confirm must name the projection container" in capsys.readouterr().err

    assert await admin(["clear-projection", "--confirm", "order-summaries"]) == 0
    output = capsys.readouterr().out
    assert '"documents_deleted":12' in output, output  # 3 summaries + 9 inbox marks

    async with consumer(backends, poison_policy="block") as resources:
        assert [await resources.store.get(order_id) for order_id in orders] == [None] * 3
        (blocked,) = await resources.store.list_blocked()
        assert blocked["order_id"] == "o9", "blocked records are the broker's state: kept"
        # The replay after a rewind, past the duplicate-detection window: the same events again.
        for order_id in orders:
            await backends.send(*(
                inbox_message(raw, order_id, f"replay-{order_id}-{n}")
                for n, raw in enumerate(events[order_id])
            ))  # fmt: skip
        for order_id in orders:
            await until(at_sequence(resources, order_id, 3), f"{order_id} rebuilt")
        after = {order_id: await resources.store.get(order_id) for order_id in orders}

    def content(summary: dict[str, Any] | None) -> dict[str, Any]:
        assert summary is not None
        return {k: v for k, v in summary.items() if not k.startswith("_") and k != "updated_at"}

    for order_id in orders:
        rebuilt, original = content(after[order_id]), content(before[order_id])
        assert rebuilt == original, {k: (rebuilt.get(k), original.get(k)) for k in rebuilt | original
                                     if rebuilt.get(k) != original.get(k)}  # fmt: skip
