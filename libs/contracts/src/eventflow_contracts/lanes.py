"""The lane of an order: which Service Bus session of the consumer's inbox carries its events.

The inbox is a session-enabled queue. One session per order costs the consumer a session accept
(with azure-servicebus, a new AMQP connection) for every new order, so orders are spread over a
bounded set of **lanes** instead: N long-lived sessions, each order always in the same one, each
held for a long time by one consumer replica. Every service that routes or checks a lane uses these
functions, so they must agree byte for byte; the test vectors in the package's tests pin them.

The lane of an order under N lanes:

1. key = the first 8 bytes of SHA-256(order id as UTF-8), read as a big-endian unsigned 64-bit int;
2. lane = jump consistent hash (Lamping and Veach, 2014, arXiv:1406.2294) of key into N buckets.

Jump consistent hashing moves as few orders as possible when N changes: going from N to N+1 lanes
moves about 1/(N+1) of the orders, all of them into the new lane, and no order moves between two
lanes that exist under both counts; growing from N to M moves about 1 - N/M of them.

The session id names the lane count it was computed under, `lanes<N>-<n>` (for example
`lanes32-7`), so a consumer checks an event against the lane the sender meant, whatever N it is
configured with itself, while N changes. N = 0 means no lanes: the session id is the order id (one
session per order, as before lanes).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

MAX_LANES = 4096
_MASK64 = (1 << 64) - 1
_JUMP_MULTIPLIER = 2862933555777941757
_LANE_SESSION = re.compile(r"lanes([1-9][0-9]{0,3})-(0|[1-9][0-9]{0,3})")


@dataclass(frozen=True, slots=True)
class Lane:
    """One lane: `index` in 0..count-1 under `count` lanes."""

    count: int
    index: int

    def __post_init__(self) -> None:
        _check_count(self.count, allow_zero=False)
        if not 0 <= self.index < self.count:
            raise ValueError(f"lane index {self.index} is outside 0..{self.count - 1}")

    @property
    def session_id(self) -> str:
        return f"lanes{self.count}-{self.index}"


def _check_count(lanes: int, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if isinstance(lanes, bool) or not isinstance(lanes, int) or not low <= lanes <= MAX_LANES:
        raise ValueError(f"lane count must be an integer in {low}..{MAX_LANES}, not {lanes!r}")


def order_key(order_id: str) -> int:
    """The order's 64-bit key: the first 8 bytes of SHA-256 of its UTF-8 bytes, big-endian."""
    return int.from_bytes(hashlib.sha256(order_id.encode("utf-8")).digest()[:8], "big")


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash of a 64-bit `key` into 0..buckets-1 (Lamping and Veach, figure 1)."""
    if not 0 <= key <= _MASK64:
        raise ValueError("key must be an unsigned 64-bit integer")
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * _JUMP_MULTIPLIER + 1) & _MASK64
        jump = int((bucket + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return bucket


def lane_of(order_id: str, lanes: int) -> Lane:
    """The order's lane under `lanes` lanes (1..MAX_LANES). Raises ValueError for another count."""
    _check_count(lanes, allow_zero=False)
    return Lane(lanes, jump_hash(order_key(order_id), lanes))


def session_id_for(order_id: str, lanes: int) -> str:
    """The inbox session id of an order's events: its lane's (`lanes<N>-<n>`), or the order id
    itself when `lanes` is 0 (one session per order). Raises ValueError for a count outside
    0..MAX_LANES."""
    _check_count(lanes, allow_zero=True)
    return order_id if lanes == 0 else lane_of(order_id, lanes).session_id


def parse_lane(session_id: str) -> Lane | None:
    """The lane a session id names, or None when it names none (a per-order session, the
    unroutable-event session, anything else). A malformed lane id (`lanes8-9`, `lanes0-0`) is None."""
    match = _LANE_SESSION.fullmatch(session_id)
    if match is None:
        return None
    count, index = int(match.group(1)), int(match.group(2))
    if count > MAX_LANES or index >= count:
        return None
    return Lane(count, index)


def belongs(order_id: str, session_id: str) -> bool:
    """Whether an event of `order_id` may travel in `session_id`: the session is the order's lane
    under the lane count the session id names, or (no lanes) the order id itself."""
    if session_id == order_id:  # one session per order (an order id may look like a lane id)
        return True
    lane = parse_lane(session_id)
    return lane is not None and lane_of(order_id, lane.count) == lane
