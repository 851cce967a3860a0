"""Feed ranges as the SDK returns them (`{"Range": {"min", "max", ...}}`, effective partition key
bounds as upper-case hex strings, min inclusive, max exclusive) and how a split shows in them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_EPK = "FF"


def bounds(feed_range: dict[str, Any]) -> tuple[str, str]:
    """(min, max) of a feed range; EPK strings order like the ranges they bound."""
    span = feed_range["Range"]
    return str(span["min"]).upper(), str(span["max"]).upper()


def _below(left: str, right: str) -> bool:
    """left <= right on the EPK axis, where "FF" is the end of the space."""
    if right == MAX_EPK:
        return True
    if left == MAX_EPK:
        return False
    return left <= right


def children_of(
    feed_range: dict[str, Any], current: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The current ranges a lease's range was split into, in EPK order; empty when the range
    still exists as it is, or was merged into a larger one (a continuation follows a merge by
    itself, so the lease is kept)."""
    low, high = bounds(feed_range)
    inside = [
        candidate
        for candidate in current
        if _below(low, bounds(candidate)[0]) and _below(bounds(candidate)[1], high)
    ]
    if len(inside) < 2:
        return []
    return sorted(inside, key=lambda candidate: bounds(candidate)[0])
