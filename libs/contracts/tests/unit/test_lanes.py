"""The lane function: pinned test vectors (every service must agree on them byte for byte) and the
properties the inbox relies on (stable, balanced, ~1/N movement when the lane count grows)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventflow_contracts.lanes import (
    MAX_LANES,
    Lane,
    belongs,
    jump_hash,
    lane_of,
    order_key,
    parse_lane,
    session_id_for,
)

# (key, buckets, bucket), computed with the reference C implementation of the paper (figure 1 of
# Lamping and Veach, arXiv:1406.2294), compiled with gcc: not with the code under test.
JUMP_VECTORS = [
    (0, 1, 0), (0, 8, 0), (0, 32, 0), (0, 1000, 0), (0, 4096, 0),
    (1, 1, 0), (1, 8, 6), (1, 32, 17), (1, 1000, 549), (1, 4096, 2323),
    (42, 1, 0), (42, 8, 2), (42, 32, 22), (42, 1000, 571), (42, 4096, 571),
    (1000, 8, 5), (1000, 32, 13), (1000, 1000, 93), (1000, 4096, 2361),
    (2**64 - 1, 8, 7), (2**64 - 1, 32, 10), (2**64 - 1, 1000, 313), (2**64 - 1, 4096, 1921),
    (12345678901234567890, 8, 0), (12345678901234567890, 32, 20), (12345678901234567890, 1000, 294),
    (12345678901234567890, 4096, 3584),
]  # fmt: skip

# (order id, its key, its lane under 1, 2, 8, 16, 32, 33, 64, 1000 lanes). The key is
# int(sha256(order id).hexdigest()[:16], 16); an implementation in another language must match.
LANE_VECTORS = [
    ("o-1", 6682721121708123522, [0, 0, 0, 0, 17, 17, 40, 480]),
    ("order-42", 4321398832972926703, [0, 1, 2, 2, 2, 2, 63, 300]),
    ("3f2a9c1e0b7d4e5f8a6b1c2d3e4f5a6b", 986112095340004818, [0, 1, 1, 1, 31, 31, 37, 991]),
    ("A", 6168500820899059065, [0, 0, 7, 7, 24, 24, 24, 880]),
    ("lanes8-3", 16054832089246060793, [0, 0, 6, 12, 25, 32, 32, 443]),
    ("ß-ünïcødé", 6813673519067569864, [0, 0, 0, 0, 0, 0, 55, 490]),
]
COUNTS = [1, 2, 8, 16, 32, 33, 64, 1000]


@pytest.mark.parametrize(("key", "buckets", "bucket"), JUMP_VECTORS)
def test_jump_hash_matches_the_reference_implementation(
    key: int, buckets: int, bucket: int
) -> None:
    assert jump_hash(key, buckets) == bucket


@pytest.mark.parametrize(("order_id", "key", "lanes"), LANE_VECTORS)
def test_lane_vectors(order_id: str, key: int, lanes: list[int]) -> None:
    assert order_key(order_id) == key
    assert [lane_of(order_id, n).index for n in COUNTS] == lanes
    assert session_id_for(order_id, 32) == f"lanes32-{lanes[COUNTS.index(32)]}"


def test_no_lanes_is_one_session_per_order() -> None:
    assert session_id_for("o-1", 0) == "o-1"
    assert belongs("o-1", "o-1")
    assert not belongs("o-1", "o-2")


@pytest.mark.parametrize("bad", [-1, MAX_LANES + 1, True, 2.0, "8"])
def test_a_lane_count_out_of_range_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="lane count"):
        session_id_for("o-1", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lane count"):
        lane_of("o-1", 0)


@pytest.mark.parametrize(
    ("session_id", "lane"),
    [
        ("lanes32-7", Lane(32, 7)),
        ("lanes1-0", Lane(1, 0)),
        ("lanes4096-4095", Lane(4096, 4095)),
        ("lanes8-8", None),
        ("lanes0-0", None),
        ("lanes08-1", None),
        ("lanes8-01", None),
        ("lanes4097-1", None),
        ("lanes8-", None),
        ("eventflow.unroutable", None),
        ("o-1", None),
        ("lanes8-3\n", None),
    ],
)
def test_parse_lane(session_id: str, lane: Lane | None) -> None:
    assert parse_lane(session_id) == lane


def test_belongs_checks_under_the_count_the_session_names() -> None:
    assert belongs("o-1", "lanes32-17")
    assert belongs("o-1", "lanes64-40")  # the same order under another count
    assert not belongs("o-1", "lanes32-18")
    assert not belongs("o-1", "eventflow.unroutable")
    assert belongs("lanes8-3", "lanes8-3")  # an order id shaped like a lane: its own session


@settings(max_examples=200)
@given(st.text(min_size=1, max_size=64), st.integers(min_value=1, max_value=MAX_LANES))
def test_every_order_has_exactly_one_lane_that_it_belongs_to(order_id: str, lanes: int) -> None:
    lane = lane_of(order_id, lanes)
    assert 0 <= lane.index < lanes
    assert parse_lane(lane.session_id) == lane
    assert belongs(order_id, lane.session_id)
    other = Lane(lanes, (lane.index + 1) % lanes)
    assert belongs(order_id, other.session_id) == (other == lane or other.session_id == order_id)


ORDERS = [f"order-{n:06d}" for n in range(20_000)]


@settings(max_examples=12, deadline=None)
@given(st.integers(min_value=1, max_value=200), st.integers(min_value=1, max_value=64))
def test_growing_the_lane_count_moves_about_one_in_n_orders(lanes: int, added: int) -> None:
    """From N to M lanes about 1 - N/M of the orders move, and only into the new lanes."""
    grown = lanes + added
    moved = 0
    for order_id in ORDERS:
        before, after = lane_of(order_id, lanes).index, lane_of(order_id, grown).index
        if before != after:
            moved += 1
            assert after >= lanes, "an order moved between two lanes that exist under both counts"
    expected = 1 - lanes / grown
    # 20,000 orders: the binomial standard deviation is at most 0.0036; allow five of them.
    assert abs(moved / len(ORDERS) - expected) < 0.02


def test_orders_spread_evenly_over_the_lanes() -> None:
    counts = [0] * 32
    for order_id in ORDERS:
        counts[lane_of(order_id, 32).index] += 1
    mean = len(ORDERS) / 32
    assert max(counts) < mean * 1.15
    assert min(counts) > mean * 0.85
