"""Effective partition keys and range boundaries, without the wire.

Expected EPKs were produced by azure-cosmos 4.17.1 itself (`PartitionKey(path="/pk")
._get_epk_range_for_partition_key(value).min`, azure/cosmos/partition_key.py); the wire test
`test_sdk.py::test_items_land_in_the_feed_range_the_sdk_computes` checks the same through the
public API for random keys.
"""

from __future__ import annotations

import pytest
from azure.cosmos import PartitionKey
from hypothesis import given, settings
from hypothesis import strategies as st

from eventflow_emulators.cosmos.epk import (
    MAX_EPK,
    MIN_EPK,
    UNDEFINED,
    EpkRange,
    effective_partition_key,
    initial_ranges,
    murmurhash3_x64_128,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "32E9366E637A71B4E710384B2F4970A0"),
        ("order-1", "3815BA40E3A5B182711B2F7C5DCAF885"),
        ("p1", "062B23DEC15212F01B9A85F4E93A940C"),
        (42, "08E6D561F6FD951DCC25E7E4EA2884B5"),
        (True, "0E711127C5B5A8E4726AC6DD306A3E59"),
        (None, "378867E4430E67857ACE5C908374FE16"),
    ],
)
def test_effective_partition_key_matches_the_sdk(value: object, expected: str) -> None:
    assert effective_partition_key([value]) == expected


def test_integers_and_doubles_hash_alike() -> None:
    assert effective_partition_key([42]) == effective_partition_key([42.0])


def test_undefined_differs_from_null() -> None:
    assert effective_partition_key([UNDEFINED]) != effective_partition_key([None])


def test_murmurhash_of_nothing_is_zero() -> None:
    # MurmurHash3 x64-128 with seed 0 maps the empty input to 0 (reference implementation).
    assert murmurhash3_x64_128(b"") == (0, 0)


def test_every_epk_sorts_below_the_top_of_the_space() -> None:
    for n in range(200):
        epk = effective_partition_key([f"key-{n}"])
        assert len(epk) == 32
        assert MIN_EPK < epk < "40" < MAX_EPK


def test_initial_ranges_split_the_hash_space_evenly() -> None:
    ranges = initial_ranges(4)
    assert [(r.min, r.max) for r in ranges] == [
        ("", "0FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"),
        ("0FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", "1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"),
        ("1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", "2FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"),
        ("2FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", "FF"),
    ]
    assert initial_ranges(1) == [EpkRange(MIN_EPK, MAX_EPK)]


def test_halves_of_a_range_meet_in_the_middle_and_cover_it() -> None:
    low, high = EpkRange("", "0FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF").halves()
    assert low.min == ""
    assert high.max == "0FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
    assert low.max == high.min == "07FFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
    top_low, top_high = EpkRange("2FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", "FF").halves()
    assert top_low.max == top_high.min == "37FFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
    assert top_high.max == "FF"


def test_a_range_too_small_to_split_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        EpkRange("00000000000000000000000000000000", "00000000000000000000000000000001").halves()


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
    )
)
def test_effective_partition_key_equals_the_sdks_for_any_value(value: object) -> None:
    # The SDK's own computation (azure/cosmos/partition_key.py), used here as the oracle only;
    # the emulator never imports it.
    expected = PartitionKey(path="/pk")._get_epk_range_for_partition_key(value).min
    assert effective_partition_key([value]) == expected
