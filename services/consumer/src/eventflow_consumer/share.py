"""Fair sharing of the inbox's lanes between the consumer's replicas. Pure: it talks to the store
through the Membership port and to the lanes through the LaneControl port.

Every `period` seconds each replica writes its membership record (a heartbeat; a record not
written for `EXPIRY_PERIODS` periods no longer counts) and reads the live members. From the same
member list every replica computes the same assignment of lanes to members:
- each member gets at most its fair share, ceil(lanes / live members);
- lanes go by rendezvous hashing with bounded loads: every (member, lane) pair has a fixed score,
  and pairs are taken best score first while the member has room. A member that joins or leaves
  moves about the lanes it gains or loses, not a reshuffle of all of them.
A replica then tries to hold its assigned lanes (the broker gives a lane to one holder at a time)
and releases, at a message boundary, every lane it holds that is assigned to another member.

While the membership cannot be read or written (a store outage), a replica keeps every lane it
holds and tries every lane it does not: the broker's exclusive session locks keep a lane to one
holder, no lane stays unheld because of the outage, and nobody holds more than all the lanes. The
fair share returns with the first membership read after the outage.

A replica that stops leaves first (its record is deleted) and, when other members are live,
keeps its lanes for one more period, so that the others have read the new membership and are
already trying those lanes when it lets them go: a planned scale-in leaves no lane unheld for
longer than the others' retry period.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

import structlog

LOG = structlog.get_logger("eventflow_consumer.share")
EXPIRY_PERIODS = 3
"""A member whose last heartbeat is older than this many periods is not counted."""


class Membership(Protocol):
    """The replicas of one inbox, in the consumer's store."""

    member_id: str

    async def beat(self) -> frozenset[str]:
        """Writes this member's heartbeat and returns the live members (this one included).
        Raises on a store outage (the caller keeps its lanes)."""
        ...

    async def leave(self) -> None:
        """Removes this member's record (idempotent; raises on a store outage: the record then
        expires on its own)."""
        ...


class LaneControl(Protocol):
    """The holder of this replica's lanes."""

    def plan(self, wanted: frozenset[str] | None) -> None:
        """Hold the lanes in `wanted` and release, at a message boundary, the held ones not in it;
        None: keep every held lane and try every other one."""
        ...


def fair_share(lanes: int, members: int) -> int:
    """ceil(lanes / members): the most lanes one member holds."""
    return -(-lanes // max(members, 1))


def _score(member: str, lane: str) -> int:
    digest = hashlib.blake2b(f"{member}\x00{lane}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assignment(lanes: Sequence[str], members: Iterable[str]) -> dict[str, frozenset[str]]:
    """Every lane to one member, none above the fair share (rendezvous hashing with bounded
    loads). Deterministic: every replica computes the same from the same member list."""
    everyone = sorted(set(members))
    if not everyone:
        raise ValueError("an assignment needs at least one member")
    share = fair_share(len(lanes), len(everyone))
    pairs = sorted(
        ((_score(m, lane), m, lane) for m in everyone for lane in lanes), reverse=True
    )  # fmt: skip
    owner: dict[str, str] = {}
    taken = dict.fromkeys(everyone, 0)
    for _, member, lane in pairs:
        if lane not in owner and taken[member] < share:
            owner[lane] = member
            taken[member] += 1
    assigned: dict[str, set[str]] = {m: set() for m in everyone}
    for lane, member in owner.items():
        assigned[member].add(lane)
    return {m: frozenset(held) for m, held in assigned.items()}


class LaneShare:
    """Keeps this replica's heartbeat and its lanes' plan, every `period` seconds, until `leave`."""

    def __init__(
        self, lanes: Sequence[str], membership: Membership, control: LaneControl, *, period: float
    ) -> None:
        self._lanes = list(lanes)
        self._membership = membership
        self._control = control
        self.period = period
        self._stopping = asyncio.Event()
        self._round: asyncio.Task[None] | None = None  # the round in progress
        self.members: frozenset[str] | None = None  # None: unknown (no read yet, or an outage)
        self.wanted: frozenset[str] | None = None
        self.rounds = 0  # membership rounds done (read or failed)

    async def step(self) -> None:
        """One round: heartbeat, read the members, plan the lanes."""
        me = self._membership.member_id
        try:
            members = await self._membership.beat()
        except Exception as error:  # noqa: BLE001 - any failure: the membership is unknown
            if self.members is not None or self.rounds == 0:
                LOG.warning("lane membership unreadable: keeping every held lane, trying the "
                            "others", error=repr(error))  # fmt: skip
            self.members, self.wanted = None, None
        else:
            members = members | {me}
            wanted = assignment(self._lanes, members)[me]
            if members != self.members or wanted != self.wanted:
                LOG.info("lane share", members=len(members), share=fair_share(len(self._lanes),
                         len(members)), assigned=len(wanted))  # fmt: skip
            self.members, self.wanted = members, wanted
        self.rounds += 1
        self._control.plan(self.wanted)

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._round = asyncio.create_task(self.step())
            try:
                await asyncio.shield(self._round)
            finally:
                self._round = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.period)

    async def leave(self) -> bool:
        """Stops the heartbeat and removes this member's record; True when other members were live
        at the last read (the caller then keeps its lanes one more period before releasing)."""
        self._stopping.set()
        if self._round is not None:  # a heartbeat written after the removal would keep the record
            with contextlib.suppress(Exception):
                await self._round
        try:
            await self._membership.leave()
        except Exception as error:  # noqa: BLE001 - the record expires on its own
            LOG.warning("could not remove the lane membership record; it expires on its own",
                        error=repr(error))  # fmt: skip
        me = self._membership.member_id
        return self.members is not None and bool(self.members - {me})
