"""The balancing rule, exhaustively: examples, then properties over arbitrary states."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from eventflow_publisher.changefeed.balancing import LeaseView, is_available, plan, target_count
from eventflow_publisher.changefeed.simulation import run_round, simulate

EXPIRY = 60.0
NOW = 1_000.0


def leases(*owners: str | None, timestamp: float = NOW) -> list[LeaseView]:
    return [LeaseView(f"lease-{n:02d}", owner, timestamp) for n, owner in enumerate(owners)]


def test_a_lone_instance_takes_every_lease() -> None:
    decision = plan(leases(None, None, None), "a", NOW, EXPIRY)
    assert sorted(decision.take) == ["lease-00", "lease-01", "lease-02"]


def test_a_second_instance_takes_unowned_leases_up_to_its_share() -> None:
    decision = plan(leases("a", "a", None, None, None, None), "b", NOW, EXPIRY)
    assert len(decision.take) == 3


def test_expired_leases_are_available() -> None:
    state = leases("a", "a", timestamp=NOW - EXPIRY - 1)
    assert all(is_available(lease, NOW, EXPIRY) for lease in state)
    assert len(plan(state, "b", NOW, EXPIRY).take) == 2


def test_a_newcomer_steals_one_lease_from_the_busiest_when_nothing_is_free() -> None:
    decision = plan(leases("a", "a", "a", "a"), "b", NOW, EXPIRY)
    assert decision.take == ()
    assert decision.steal is not None


def test_no_steal_when_the_split_is_as_even_as_it_can_be() -> None:
    assert plan(leases("a", "a", "a", "b", "b"), "b", NOW, EXPIRY).is_empty
    assert plan(leases("a", "a", "b", "b", "c"), "c", NOW, EXPIRY).is_empty


def test_instances_beyond_the_lease_count_stand_by() -> None:
    state = leases("a", "b")
    assert target_count(2, 3) == 1
    assert plan(state, "c", NOW, EXPIRY).is_empty


def test_an_instance_at_its_target_takes_nothing() -> None:
    assert plan(leases("a", "a", None, None, None), "a", NOW, EXPIRY).take != ()
    assert plan(leases("a", "a", "b", "b"), "a", NOW, EXPIRY).is_empty


# -- properties ---------------------------------------------------------------------------------

instances = st.lists(st.sampled_from(list("abcdefg")), min_size=1, max_size=7, unique=True)


@st.composite
def states(draw: st.DrawFn) -> tuple[list[LeaseView], list[str], list[str]]:
    """(leases, live instances, dead instances) with arbitrary owners and ages."""
    live = draw(instances)
    dead = draw(st.lists(st.sampled_from(list("vwxyz")), max_size=3, unique=True))
    count = draw(st.integers(1, 32))
    owners = st.sampled_from([None, *live, *dead])
    ages = st.sampled_from([0.0, 10.0, EXPIRY + 1])
    state = [LeaseView(f"lease-{n:02d}", draw(owners), NOW - draw(ages)) for n in range(count)]
    return state, live, dead


@settings(max_examples=300, deadline=None)
@given(states())
def test_rounds_converge_to_one_live_owner_per_lease_with_counts_within_one(
    drawn: tuple[list[LeaseView], list[str], list[str]],
) -> None:
    state, live, _ = drawn
    now = NOW
    for _ in range(len(state) + 4):
        now += EXPIRY / 3  # dead owners' leases expire within a few rounds
        state = run_round(state, live, now, EXPIRY)
    assert all(lease.owner in live for lease in state)
    counts = Counter(lease.owner for lease in state)
    owning = [counts.get(me, 0) for me in live]
    if len(state) >= len(live):
        assert max(owning) - min(owning) <= 1, counts
    else:
        assert max(owning) == 1, counts


@settings(max_examples=500, deadline=None)
@given(states(), st.data())
def test_a_plan_never_takes_beyond_the_target_nor_steals_below_it(
    drawn: tuple[list[LeaseView], list[str], list[str]], data: st.DataObject
) -> None:
    state, live, _ = drawn
    me = data.draw(st.sampled_from(live))
    decision = plan(state, me, NOW, EXPIRY)
    live_counts = Counter(lease.owner for lease in state if not is_available(lease, NOW, EXPIRY))
    live_counts[me] += 0
    target = target_count(len(state), len(live_counts))
    gained = len(decision.take) + (decision.steal is not None)
    assert live_counts[me] + gained <= max(target, live_counts[me])
    assert not (decision.take and decision.steal)
    for lease_id in decision.take:
        assert is_available(next(lease for lease in state if lease.id == lease_id), NOW, EXPIRY)
    if decision.steal is not None:
        assert not any(is_available(lease, NOW, EXPIRY) for lease in state)
        victim = next(lease.owner for lease in state if lease.id == decision.steal)
        assert victim != me
        assert live_counts[victim] - 1 >= live_counts[me] + 1


def test_the_documented_simulation_converges() -> None:
    lines = simulate(16)
    assert lines[lines.index("-- instance e joins (5 live)") + 4].startswith(
        "round 4: a=4 b=3 c=3 d=3 e=3"
    )
    assert lines[-1].endswith("b=4 c=4 d=4 e=4 | unowned=0 held-by-gone=0")
