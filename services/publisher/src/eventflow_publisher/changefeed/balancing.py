"""Which leases an instance should take: the equal-distribution rule of the .NET change feed
processor, as a pure function of (leases, me, now) so it can be tested exhaustively.

- A lease is available when it has no owner or its owner has not renewed it within `expiry`.
- Workers are the owners of live leases, plus me. target = ceil(leases / workers) (1 when there
  are fewer leases than workers: extra instances stand by).
- If I hold fewer than target: take available leases up to target; when none is available, steal
  one lease from the most loaded worker, if it holds more than target (target - 1 when I need
  more than one), so a steal never leaves the victim with fewer leases than the thief.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeaseView:
    """What balancing needs of a lease: its id, owner and last renewal (epoch seconds)."""

    id: str
    owner: str | None
    timestamp: float


@dataclass(frozen=True, slots=True)
class Plan:
    """Leases to take now: available ones, or at most one stolen from a busier worker."""

    take: tuple[str, ...] = ()
    steal: str | None = None

    @property
    def is_empty(self) -> bool:
        return not self.take and self.steal is None


def is_available(lease: LeaseView, now: float, expiry: float) -> bool:
    return lease.owner is None or now - lease.timestamp > expiry


def _spread(me: str, lease_id: str) -> str:
    """An order of leases that differs per instance, so instances starting together try
    different leases first instead of all racing for the same one."""
    return hashlib.blake2b(f"{me}/{lease_id}".encode(), digest_size=8).hexdigest()


def target_count(lease_count: int, worker_count: int) -> int:
    if lease_count < worker_count:
        return 1
    return math.ceil(lease_count / worker_count)


def plan(leases: Sequence[LeaseView], me: str, now: float, expiry: float) -> Plan:
    """What `me` should acquire in this round (see the module's docstring)."""
    available = [lease for lease in leases if is_available(lease, now, expiry)]
    counts = Counter(lease.owner for lease in leases if not is_available(lease, now, expiry))
    counts[me] += 0
    target = target_count(len(leases), len(counts))
    need = target - counts[me]
    if need <= 0 or not leases:
        return Plan()
    if available:
        ordered = sorted(available, key=lambda lease: _spread(me, lease.id))
        return Plan(take=tuple(lease.id for lease in ordered[:need]))
    victim, held = max(
        ((owner, count) for owner, count in counts.items() if owner != me),
        key=lambda item: (item[1], item[0] or ""),
        default=(None, 0),
    )
    if victim is None or held <= target - (1 if need > 1 else 0):
        return Plan()
    candidates = sorted(
        (lease for lease in leases if lease.owner == victim),
        key=lambda lease: _spread(me, lease.id),
    )
    return Plan(steal=candidates[0].id)
