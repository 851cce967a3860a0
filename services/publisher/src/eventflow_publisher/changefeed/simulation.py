"""Simulate balancing rounds: how leases spread as instances join, and after one crashes.

    python -m eventflow_publisher.changefeed.simulation [--leases 16]

Each round, every live instance renews its leases and then applies `plan` once, in turn; a round
is one acquire interval. Crashed instances stop renewing, so their leases expire.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence

from eventflow_publisher.changefeed.balancing import LeaseView, is_available, plan


def run_round(
    state: Sequence[LeaseView], live: Sequence[str], now: float, expiry: float
) -> list[LeaseView]:
    current = {lease.id: lease for lease in state}
    for me in live:
        for lease_id, lease in current.items():
            if lease.owner == me and not is_available(lease, now, expiry):
                current[lease_id] = LeaseView(lease_id, me, now)
        decision = plan(list(current.values()), me, now, expiry)
        for lease_id in (*decision.take, *([decision.steal] if decision.steal else [])):
            current[lease_id] = LeaseView(lease_id, me, now)
    return list(current.values())


def describe(state: Sequence[LeaseView], live: Sequence[str]) -> str:
    counts = Counter(lease.owner for lease in state)
    gone = sum(count for owner, count in counts.items() if owner is not None and owner not in live)
    return (
        " ".join(f"{me}={counts.get(me, 0)}" for me in live)
        + f" | unowned={counts.get(None, 0)} held-by-gone={gone}"
    )


def simulate(lease_count: int, *, acquire: float = 13.0, expiry: float = 60.0) -> list[str]:
    lines, now = [], 0.0
    state = [LeaseView(f"lease-{n:02d}", None, 0.0) for n in range(lease_count)]
    live: list[str] = []
    for joining in "abcde":
        live.append(joining)
        lines.append(f"-- instance {joining} joins ({len(live)} live)")
        for round_number in range(1, 5):
            now += acquire
            state = run_round(state, live, now, expiry)
            lines.append(f"round {round_number}: {describe(state, live)}")
    crashed = live.pop(0)
    lines.append(f"-- instance {crashed} crashes (kill -9): its leases expire after {expiry:.0f} s")
    for round_number in range(1, 9):
        now += acquire
        state = run_round(state, live, now, expiry)
        lines.append(
            f"round {round_number} (t+{round_number * acquire:.0f} s): {describe(state, live)}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leases", type=int, default=16)
    args = parser.parse_args()
    sys.stdout.write("\n".join(simulate(args.leases)) + "\n")


if __name__ == "__main__":
    main()
