"""The turns of calls on one Service Bus receiver: one at a time, in arrival order, except the lock
renewal, which goes before every waiting settlement (a held lane queues the settlements of many
orders at once; a renewal behind them came after the lock it was meant to keep)."""

from __future__ import annotations

import asyncio

from eventflow_consumer.adapters.servicebus_sessions import Turns


async def test_one_call_at_a_time_in_arrival_order_and_the_renewal_first() -> None:
    turns, order, inside = Turns(), [], []
    release = asyncio.Event()

    async def call(name: str, *, urgent: bool = False) -> None:
        async with turns.turn(urgent=urgent):
            inside.append(name)
            assert len(inside) == 1, inside
            if name == "receive":
                await release.wait()
            await asyncio.sleep(0)
            order.append(name)
            inside.remove(name)

    tasks = [asyncio.create_task(call("receive"))]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(call(f"settle-{n}")) for n in range(5)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(call("renew", urgent=True)))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["receive", "renew", *(f"settle-{n}" for n in range(5))]


async def test_a_waiter_cancelled_before_or_after_its_turn_passes_it_on() -> None:
    turns = Turns()
    release, done = asyncio.Event(), []

    async def call(name: str) -> None:
        async with turns.turn():
            if name == "first":
                await release.wait()
            done.append(name)

    first = asyncio.create_task(call("first"))
    await asyncio.sleep(0)
    cancelled_early = asyncio.create_task(call("early"))
    handed = asyncio.create_task(call("handed"))
    last = asyncio.create_task(call("last"))
    await asyncio.sleep(0)
    cancelled_early.cancel()
    release.set()
    await asyncio.sleep(0)  # "first" ends and hands the turn to "handed"
    handed.cancel()  # cancelled once handed the turn: it must pass it on
    await asyncio.wait_for(asyncio.gather(first, last), 1)
    assert done == ["first", "last"]
    assert cancelled_early.cancelled()
    assert handed.cancelled()
    async with turns.turn():  # free again
        pass
