"""The fair share of lanes between replicas against fakes of its ports (Membership, LaneControl): the
assignment (every lane once, none above ceil(lanes / members), few moves when a member joins or
leaves), the plan each round, a store outage that keeps every held lane, and replicas that converge
on a broker that gives each lane to one holder."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from eventflow_consumer.ports import TransientStoreError
from eventflow_consumer.share import EXPIRY_PERIODS, LaneShare, assignment, fair_share

LANES = [f"lanes32-{n}" for n in range(32)]


class Records:
    """The membership records of one inbox, with a clock in periods."""

    def __init__(self) -> None:
        self.beats: dict[str, int] = {}
        self.now = 0
        self.down = False

    def live(self) -> frozenset[str]:
        return frozenset(m for m, at in self.beats.items() if at > self.now - EXPIRY_PERIODS)


class FakeMembership:
    def __init__(self, records: Records, member_id: str) -> None:
        self.records, self.member_id = records, member_id

    async def beat(self) -> frozenset[str]:
        if self.records.down:
            raise TransientStoreError("store down")
        self.records.beats[self.member_id] = self.records.now
        return self.records.live()

    async def leave(self) -> None:
        if self.records.down:
            raise TransientStoreError("store down")
        self.records.beats.pop(self.member_id, None)


class Broker:
    """Each lane to one holder at a time, as Service Bus gives a session."""

    def __init__(self) -> None:
        self.holder: dict[str, str] = {}


class FakeHolder:
    """A LaneControl that holds, on the broker, what its plan says (a lane held elsewhere is not
    taken; a released lane is free for the others at once)."""

    def __init__(self, broker: Broker, name: str) -> None:
        self.broker, self.name = broker, name
        self.wanted: frozenset[str] | None = frozenset()
        self.plans: list[frozenset[str] | None] = []

    def plan(self, wanted: frozenset[str] | None) -> None:
        self.wanted = wanted
        self.plans.append(wanted)
        for lane in self.held():
            if wanted is not None and lane not in wanted:
                del self.broker.holder[lane]

    def try_lanes(self) -> None:
        for lane in LANES if self.wanted is None else sorted(self.wanted):
            self.broker.holder.setdefault(lane, self.name)

    def held(self) -> set[str]:
        return {lane for lane, name in self.broker.holder.items() if name == self.name}


def owner_of(assigned: dict[str, frozenset[str]]) -> dict[str, str]:
    return {lane: member for member, lanes in assigned.items() for lane in lanes}


@pytest.mark.parametrize(("lanes", "members", "share"), [(32, 1, 32), (32, 3, 11), (32, 4, 8),
                                                         (4, 5, 1), (0, 2, 0)])  # fmt: skip
def test_the_fair_share_is_the_lanes_over_the_members_rounded_up(
    lanes: int, members: int, share: int
) -> None:
    assert fair_share(lanes, members) == share


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 32, 40])
def test_every_lane_goes_to_one_member_and_none_above_the_fair_share(count: int) -> None:
    members = [f"m{n}" for n in range(count)]
    assigned = assignment(LANES, members)
    held = [lane for lanes in assigned.values() for lane in lanes]
    assert sorted(held) == sorted(LANES)
    assert max(len(lanes) for lanes in assigned.values()) <= fair_share(32, count)
    assert assignment(LANES, reversed(members)) == assigned  # the same on every replica


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 3), (3, 4), (4, 3), (4, 5), (8, 9)])
def test_a_member_joining_or_leaving_moves_few_lanes(before: int, after: int) -> None:
    """About the lanes the joining member takes (or the leaving one gives up), 32/9 to 16 here;
    never a reshuffle (a modulo spread would move most lanes)."""
    moves = []
    for trial in range(40):
        members = [f"replica-{trial}-{n}" for n in range(max(before, after))]
        old = owner_of(assignment(LANES, members[:before]))
        new = owner_of(assignment(LANES, members[:after]))
        moves.append(sum(old[lane] != new[lane] for lane in LANES))
    taken = len(LANES) / max(before, after)
    assert sum(moves) / len(moves) <= 1.5 * taken + 1, moves
    assert max(moves) <= len(LANES) // 2, moves


async def test_each_round_plans_the_members_assignment() -> None:
    records, broker = Records(), Broker()
    holder = FakeHolder(broker, "a")
    share = LaneShare(LANES, FakeMembership(records, "a"), holder, period=1)
    await share.step()
    assert holder.wanted == frozenset(LANES)  # alone: every lane
    records.beats["b"] = records.now
    await share.step()
    assert holder.wanted == assignment(LANES, ["a", "b"])["a"]
    assert len(holder.wanted) == 16


async def test_a_store_outage_keeps_every_held_lane_and_tries_the_others() -> None:
    records, broker = Records(), Broker()
    a, b = FakeHolder(broker, "a"), FakeHolder(broker, "b")
    share_a = LaneShare(LANES, FakeMembership(records, "a"), a, period=1)
    share_b = LaneShare(LANES, FakeMembership(records, "b"), b, period=1)
    for _ in range(2):
        for share, holder in ((share_a, a), (share_b, b)):
            await share.step()
            holder.try_lanes()
    held_a = a.held()
    assert len(held_a) == 16
    records.down = True
    await share_a.step()
    assert a.plans[-1] is None  # membership unknown: keep what is held, try the rest
    assert a.held() == held_a
    # b stops for good while the store is down: its lanes are not left unheld
    for lane in b.held():
        del broker.holder[lane]
    a.try_lanes()
    assert a.held() == set(LANES)
    records.down = False
    records.beats.pop("b")
    await share_a.step()
    assert a.plans[-1] == frozenset(LANES)


async def test_the_first_round_in_an_outage_tries_every_lane() -> None:
    records, broker = Records(), Broker()
    records.down = True
    holder = FakeHolder(broker, "a")
    await LaneShare(LANES, FakeMembership(records, "a"), holder, period=1).step()
    assert holder.plans == [None]


async def test_replicas_converge_on_a_fair_share_and_rebalance_when_one_stops() -> None:
    """Rounds of every replica in turn on one broker: within two rounds of a change every lane is
    held once and none holds more than its share; a replica that stops beating is dropped after
    the expiry and its lanes are taken."""
    records, broker = Records(), Broker()
    names = ["r0", "r1", "r2", "r3"]
    holders = {n: FakeHolder(broker, n) for n in names}
    shares = {n: LaneShare(LANES, FakeMembership(records, n), holders[n], period=1) for n in names}

    async def rounds(count: int, running: list[str]) -> None:
        for _ in range(count):
            records.now += 1
            for name in running:
                await shares[name].step()
            for name in running:
                holders[name].try_lanes()

    def check(running: list[str]) -> None:
        assert sorted(broker.holder) == sorted(LANES)
        share = fair_share(len(LANES), len(running))
        assert all(len(holders[n].held()) <= share for n in running), {
            n: len(holders[n].held()) for n in running
        }
        assert {broker.holder[lane] for lane in LANES} == set(running)

    await rounds(1, ["r0"])
    check(["r0"])
    for count in (2, 3, 4):  # scale out one at a time
        await rounds(2, names[:count])
        check(names[:count])
    # r3 dies: nobody holds its lanes until its record expires, then they are taken
    for lane in holders["r3"].held():
        del broker.holder[lane]
    await rounds(EXPIRY_PERIODS + 1, names[:3])
    check(names[:3])


async def test_leaving_removes_the_record_and_says_whether_others_are_live() -> None:
    records, broker = Records(), Broker()
    share_a = LaneShare(LANES, FakeMembership(records, "a"), FakeHolder(broker, "a"), period=1)
    assert await share_a.leave() is False  # no read yet: nobody known to take over
    share_a = LaneShare(LANES, FakeMembership(records, "a"), FakeHolder(broker, "a"), period=1)
    await share_a.step()
    assert await share_a.leave() is False  # alone
    assert "a" not in records.beats
    share_b = LaneShare(LANES, FakeMembership(records, "b"), FakeHolder(broker, "b"), period=1)
    share_c = LaneShare(LANES, FakeMembership(records, "c"), FakeHolder(broker, "c"), period=1)
    await share_b.step()
    await share_c.step()
    records.down = True
    assert await share_c.leave() is True  # b is live; the delete failed, the record expires
    assert "c" in records.beats


def test_an_assignment_needs_a_member() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        assignment(LANES, [])


def test_pairs_are_scored_independently_of_the_member_order() -> None:
    for members in itertools.permutations(["x", "y", "z"]):
        assert assignment(LANES[:7], members) == assignment(LANES[:7], ["x", "y", "z"])


async def test_leaving_during_a_heartbeat_removes_the_record_after_it() -> None:
    """A heartbeat in flight when the replica leaves must not write the record again after its
    removal (the others would count the replica for three more periods)."""
    records, broker = Records(), Broker()
    membership = SlowMembership(records, "a")
    share = LaneShare(LANES, membership, FakeHolder(broker, "a"), period=0.01)
    running = asyncio.create_task(share.run())
    await asyncio.wait_for(membership.in_beat.wait(), 1)
    leaving = asyncio.create_task(share.leave())
    await asyncio.sleep(0.01)
    membership.finish.set()
    await asyncio.wait_for(asyncio.gather(leaving, running), 1)
    assert "a" not in records.beats


class SlowMembership(FakeMembership):
    """Its second heartbeat waits until told to finish."""

    def __init__(self, records: Records, member_id: str) -> None:
        super().__init__(records, member_id)
        self.beats = 0
        self.in_beat, self.finish = asyncio.Event(), asyncio.Event()

    async def beat(self) -> frozenset[str]:
        self.beats += 1
        if self.beats == 2:
            self.in_beat.set()
            await self.finish.wait()
        return await super().beat()
