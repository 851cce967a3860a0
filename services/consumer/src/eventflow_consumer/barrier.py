"""The generation barrier: an early event in a lane does not start its gap wait while an earlier
event of its order may still wait in **another session** of the inbox. Pure: it talks to the
broker through the SessionProbe port and to the store through the LaneCounts port.

An order's events travel in the session its lane count names (`lanes<N>-<n>`,
eventflow_contracts.lanes). When N changes on a live system (or lanes are turned on after one
session per order), an order's event n may still sit in the old session's backlog while n+1 is
already in the new one. The gap wait (`GAP_WAIT_SECONDS`) is for events that are missing; an event
that waits behind a backlog is not missing, and under the skip policy treating it so would skip it
and dead-letter it later as `skipped-earlier`. So before the gap wait starts, the barrier asks
whether any other session this order may have used still holds one of its earlier events:

- the other sessions are the order's lane under every lane count **older** than the one its event
  came in (the LaneCounts record, oldest first: each consumer notes its own count when it takes its
  first lane, which makes that count the newest, and adds the count of every other lane session it
  takes as the oldest if it is not there yet), and the order's own session (one session per order,
  a release before lanes). Lanes of newer counts are never looked at: their holders hold them for
  good, and an event of an older lane cannot be waiting for one of them;
- a session is looked at by accepting it by id and peeking its messages (active, deferred and
  locked ones; the receiver is closed without receiving, so no delivery is counted); what it holds
  is kept for `poll_seconds` after the look ends, and a look under way is shared, so the early
  events of many orders cost one look per session and period;
- a session another receiver holds cannot be looked at: it is being drained (or held by a replica
  that still uses that count), and the early event waits on (the lane worker bounds the wait);
- only when no other session holds an earlier event of the order does the ordinary gap wait start.

The barrier never applies anything itself: the lane worker re-reads the order's summary at every
look, so an earlier event applied from the other session (by whichever replica drains it) releases
the waiting ones at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from eventflow_contracts.lanes import parse_lane, session_id_for

LOG = structlog.get_logger("eventflow_consumer.barrier")


class LaneCounts(Protocol):
    """The lane counts the inbox has been used with, in the consumer's store, oldest first."""

    async def counts(self) -> list[int]:
        """Every count noted, oldest first (at most the few newest). Raises on a store outage."""
        ...

    async def note(self, count: int, *, current: bool) -> None:
        """`current`: a consumer runs with `count`: it becomes the newest. Otherwise `count` is
        added as the oldest if it is not there (a session of it was seen). Raises on a store
        outage."""
        ...


class SessionProbe(Protocol):
    """A look into one session of the inbox without taking its messages."""

    async def orders_in(self, session_id: str) -> dict[str, int] | None:
        """For each order with a message in the session (active or deferred), the lowest event
        sequence among its messages; None when the session cannot be looked at (another receiver
        holds it, or it holds more than the probe reads). Raises the broker's errors."""
        ...


class GenerationBarrier:
    def __init__(
        self,
        counts: LaneCounts,
        probe: SessionProbe,
        *,
        current: int | None = None,
        poll_seconds: float = 1.0,
        counts_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counts = counts
        self._probe = probe
        self.poll_seconds = poll_seconds
        self._counts_seconds = counts_seconds
        self._clock = clock
        self._current = current  # this consumer's own lane count
        self._known: tuple[float, list[int]] | None = None
        self._noted: set[int] = set()
        # per session: when its last look ended (None: under way), and what it found
        self._looks: dict[str, tuple[float | None, asyncio.Future[dict[str, int] | None]]] = {}
        self.looks = 0  # sessions looked into (for tests and benchmarks)

    async def seen(self, session_id: str) -> None:
        """A session of the inbox was taken: the lane count it names is noted once per process.
        Never raises (a count not noted costs only the barrier's reach; it is noted again later)."""
        lane = parse_lane(session_id)
        if lane is None or lane.count in self._noted:
            return
        try:
            await self._counts.note(lane.count, current=lane.count == self._current)
        except Exception as error:  # noqa: BLE001 - noted again with the next session taken
            LOG.warning("could not note the lane count", count=lane.count, error=repr(error))
            return
        self._noted.add(lane.count)
        self._known = None

    async def earlier_elsewhere(
        self, order_id: str, session_id: str, sequence: int
    ) -> tuple[str, bool] | None:
        """Another session that holds an event of `order_id` before `sequence` (True: seen in it)
        or may hold one (False: it cannot be looked at), or None when none does and the gap wait
        may start. Raises on a store outage or a broker error (the caller looks again later)."""
        held: str | None = None
        for other in await self._others(order_id, session_id):
            found = await self._look(other)
            if found is None:
                held = held or other
                continue
            lowest = found.get(order_id)
            if lowest is not None and lowest < sequence:
                return other, True
        return None if held is None else (held, False)

    async def _others(self, order_id: str, session_id: str) -> list[str]:
        """The order's lanes under the counts older than `session_id`'s (all other counts when
        its count was never noted), then its own per-order session."""
        now = self._clock()
        if self._known is None or now - self._known[0] >= self._counts_seconds:
            counts = list(dict.fromkeys(await self._counts.counts()))
            if self._current is not None and counts[-1:] != [self._current]:
                # Not the newest yet (another count's replicas were still running when this one
                # noted it): noted again, which moves it once none of them runs.
                await self._counts.note(self._current, current=True)
                counts = list(dict.fromkeys(await self._counts.counts()))
            self._known = (now, counts)
        counts, lane = self._known[1], parse_lane(session_id)
        if lane is None:
            return []  # a per-order session: nothing older than it
        older = counts[: counts.index(lane.count)] if lane.count in counts else counts
        sessions = [session_id_for(order_id, count) for count in reversed(older)]
        sessions.append(order_id)  # one session per order: lanes off, or a release before lanes
        return [s for s in dict.fromkeys(sessions) if s != session_id]

    async def _look(self, session_id: str) -> dict[str, int] | None:
        """The session's orders: a look under way is shared, and what a look found is kept for
        `poll_seconds` after it ended, whoever asks."""
        cached = self._looks.get(session_id)
        if cached is not None:
            ended, shared = cached
            if ended is None or self._clock() - ended < self.poll_seconds:
                return await asyncio.shield(shared)
        future: asyncio.Future[dict[str, int] | None] = asyncio.get_running_loop().create_future()
        self._looks[session_id] = (None, future)
        self._forget_old()
        self.looks += 1
        try:
            found = await self._probe.orders_in(session_id)
        except asyncio.CancelledError:
            self._looks.pop(session_id, None)
            future.set_result(None)  # those who shared it cannot tell: they wait and look again
            raise
        except BaseException as error:
            self._looks.pop(session_id, None)
            future.set_exception(error)
            future.exception()  # retrieved: the waiters raise it, nobody else must
            raise
        future.set_result(found)
        self._looks[session_id] = (self._clock(), future)
        return found

    def _forget_old(self) -> None:
        now = self._clock()
        old = [
            s
            for s, (ended, _) in self._looks.items()
            if ended is not None and now - ended >= self.poll_seconds
        ]
        for session_id in old:
            del self._looks[session_id]
