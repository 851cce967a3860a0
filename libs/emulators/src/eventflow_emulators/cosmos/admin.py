"""Operations controls for tests, reachable from other processes: faults, throttling, splits,
change feed scan width.

The server keeps a `Controls` object and serves it under the reserved path `/_emulator/` (no
Cosmos auth there; the emulator only listens on loopback). `CosmosEmulatorAdmin` is the typed
client; `eventflow-cosmos-emulator admin ...` is the command line over the same routes.

Fault kinds:
- `unavailable`: answer 503 ServiceUnavailable without doing the work;
- `timeout`: answer 408 RequestTimeout without doing the work;
- `timeout-after-apply`: do the work (a write is committed), then answer 408: the client cannot
  tell whether it happened, as with a real timeout;
- `outage`: answer 503 to every matching request for `seconds`.
A rule matches by operation kind (`OPERATIONS`) and/or a substring of the resource path; the
first three apply to the next `count` matching requests.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from eventflow_emulators.cosmos import errors
from eventflow_emulators.cosmos.errors import CosmosError

FaultKind = Literal["unavailable", "timeout", "timeout-after-apply", "outage"]
FAULT_KINDS: tuple[str, ...] = ("unavailable", "timeout", "timeout-after-apply", "outage")
OPERATIONS = (
    "account", "metadata", "pkranges", "read", "create", "upsert", "replace", "delete", "patch",
    "batch", "query", "read_feed", "change_feed",
)  # fmt: skip
DATA_PLANE = frozenset(OPERATIONS[3:])
"""Operations that spend the request-unit budget (metadata is never throttled here)."""
ADMIN_PREFIX = "/_emulator/"


@dataclass
class FaultRule:
    kind: FaultKind
    operation: str | None = None
    path_contains: str | None = None
    count: int = 1
    until: float | None = None
    id: int = 0

    def matches(self, operation: str, path: str) -> bool:
        return (self.operation is None or self.operation == operation) and (
            self.path_contains is None or self.path_contains in path
        )


@dataclass
class Stats:
    requests: int = 0
    throttled: int = 0
    faulted: int = 0
    request_units: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    """Responses by HTTP status, e.g. {"200": 12, "304": 3, "410": 1}."""

    def answered(self, status: int) -> None:
        key = str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1


@dataclass
class Controls:
    """Fault rules, the request-unit budget and counters. Used on the event loop thread only."""

    request_units_per_second: float | None = None
    clock: Callable[[], float] = time.monotonic
    rules: list[FaultRule] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    _window_start: float = 0.0
    _window_used: float = 0.0
    _next_id: int = 1

    def add_fault(
        self,
        kind: str,
        *,
        operation: str | None = None,
        path_contains: str | None = None,
        count: int = 1,
        seconds: float | None = None,
    ) -> FaultRule:
        if kind not in FAULT_KINDS:
            raise errors.bad_request(f"Unknown fault kind {kind!r}; one of {FAULT_KINDS}.")
        if operation is not None and operation not in OPERATIONS:
            raise errors.bad_request(f"Unknown operation {operation!r}; one of {OPERATIONS}.")
        if kind == "outage" and (seconds is None or seconds <= 0):
            raise errors.bad_request("An outage needs a positive number of seconds.")
        if kind != "outage" and count < 1:
            raise errors.bad_request("A fault needs a positive count.")
        until = self.clock() + seconds if kind == "outage" and seconds is not None else None
        rule = FaultRule(kind, operation, path_contains, count, until, self._next_id)  # type: ignore[arg-type]
        self._next_id += 1
        self.rules.append(rule)
        return rule

    def reset(self) -> None:
        self.rules.clear()

    def admit(self, operation: str, path: str) -> bool:
        """Before a request: raise the injected fault or 429, or return whether to answer 408 after
        applying it (`timeout-after-apply`)."""
        self.stats.requests += 1
        rule = self._matching_rule(operation, path)
        if rule is not None:
            self.stats.faulted += 1
            if rule.kind in ("unavailable", "outage"):
                raise CosmosError(
                    503, "Service is currently unavailable (injected by the emulator)."
                )
            if rule.kind == "timeout":
                raise CosmosError(408, "Request timed out (injected by the emulator).")
            return True
        if operation in DATA_PLANE:
            self._throttle()
        return False

    def _matching_rule(self, operation: str, path: str) -> FaultRule | None:
        now = self.clock()
        self.rules = [r for r in self.rules if r.until is None or r.until > now]
        for rule in self.rules:
            if rule.matches(operation, path):
                if rule.kind != "outage":
                    rule.count -= 1
                    if rule.count <= 0:
                        self.rules.remove(rule)
                return rule
        return None

    def _throttle(self) -> None:
        budget = self.request_units_per_second
        if budget is None:
            return
        now = self.clock()
        if now - self._window_start >= 1.0:
            self._window_start, self._window_used = now, 0.0
        if self._window_used >= budget:
            self.stats.throttled += 1
            wait_ms = max(1, int((self._window_start + 1.0 - now) * 1000))
            raise ThrottledError(wait_ms)

    def charge(self, request_units: float) -> None:
        self.stats.request_units += request_units
        self._window_used += request_units

    def status(self) -> dict[str, Any]:
        return asdict(self.stats) | {
            "request_units_per_second": self.request_units_per_second,
            "faults": [asdict(rule) for rule in self.rules],
        }


class ThrottledError(CosmosError):
    """429 with the wait the SDK's throttle policy honours (`x-ms-retry-after-ms`,
    azure/cosmos/_resource_throttle_retry_policy.py)."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(
            429,
            "Request rate is large. More Request Units may be needed, so no changes were made. "
            "Please retry this request later.",
            errors.RU_BUDGET_EXCEEDED,
        )
        self.retry_after_ms = retry_after_ms


class CosmosEmulatorAdmin:
    """Typed client of the admin routes of an emulator at `endpoint` ("http://127.0.0.1:port/").

    Blocking calls (urllib, no proxies); each takes milliseconds against a local emulator."""

    def __init__(self, endpoint: str, *, timeout: float = 10.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.endpoint}{ADMIN_PREFIX}{route}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with self._opener.open(request, timeout=self.timeout) as response:
            return json.loads(response.read() or b"null")

    def status(self) -> dict[str, Any]:
        """Counters (requests, throttled, faulted, request_units), the budget and active faults."""
        result: dict[str, Any] = self._call("GET", "status")
        return result

    def set_request_units_per_second(self, budget: float | None) -> None:
        """Throttle data-plane requests past `budget` RU per second (None: never)."""
        self._call("PUT", "throttle", {"request_units_per_second": budget})

    def inject_fault(
        self,
        kind: FaultKind,
        *,
        count: int = 1,
        operation: str | None = None,
        path_contains: str | None = None,
    ) -> int:
        """Answer the next `count` matching requests with the fault; returns the rule id."""
        return int(self._call("POST", "faults", {"kind": kind, "count": count, "operation": operation,
                                                 "path_contains": path_contains})["id"])  # fmt: skip

    def outage(
        self, seconds: float, *, operation: str | None = None, path_contains: str | None = None
    ) -> int:
        """Answer every matching request with 503 for `seconds`."""
        return int(self._call("POST", "faults", {"kind": "outage", "seconds": seconds,
                                                 "operation": operation,
                                                 "path_contains": path_contains})["id"])  # fmt: skip

    def reset_faults(self) -> None:
        self._call("DELETE", "faults")

    def split(self, database: str, container: str, range_id: str) -> list[str]:
        """Split a live partition key range; returns the two child range ids."""
        result = self._call("POST", "split", {"database": database, "container": container,
                                              "range_id": range_id})  # fmt: skip
        return [str(child) for child in result["children"]]

    def set_change_feed_scan(self, lsns: int | None) -> None:
        """Examine at most `lsns` LSNs per change feed read (None: all): a read whose scope has no
        change among them answers an empty 200 that moved only that far."""
        self._call("PUT", "change-feed", {"scan_lsns": lsns})

    def partition_key_ranges(self, database: str, container: str) -> list[dict[str, Any]]:
        """The live ranges of a container as the service lists them."""
        result: list[dict[str, Any]] = self._call(
            "GET",
            f"ranges?database={urllib.parse.quote(database)}&container={urllib.parse.quote(container)}",
        )
        return result
