"""Fault state shared by the broker's handlers; driven by the admin endpoint (admin.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

SERVER_BUSY = "com.microsoft:server-busy"

# Operations a fault can target: "send" (a producer or queue sender's transfer), "settle" (a
# Service Bus settlement on the receive link or through update-disposition), "receive"
# (server-busy: attaching a receiver; apply-then-drop: a Service Bus delivery), "management"
# (any $management request).
OPERATIONS = ("send", "settle", "receive", "management")


@dataclass
class Faults:
    busy_until: float = 0.0
    busy_operations: frozenset[str] = frozenset(OPERATIONS)
    drop_after_next: dict[str, int] = field(default_factory=dict)

    def server_busy(self, seconds: float, operations: list[str] | None = None) -> None:
        self.busy_until = time.monotonic() + seconds
        self.busy_operations = frozenset(operations or OPERATIONS)

    def apply_then_drop(self, operation: str, count: int = 1) -> None:
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {OPERATIONS}")
        self.drop_after_next[operation] = self.drop_after_next.get(operation, 0) + count

    def clear(self) -> None:
        self.busy_until = 0.0
        self.drop_after_next.clear()

    def refusal(self, operation: str) -> tuple[str, str] | None:
        """The error to refuse `operation` with now, if the emulator is told to be busy."""
        if operation in self.busy_operations and time.monotonic() < self.busy_until:
            return (
                SERVER_BUSY,
                "The request was terminated because the entity is being throttled. Please wait"
                " and retry.",
            )
        return None

    def drop_after(self, operation: str, link: Any) -> bool:
        """True (and the connection dropped) when `operation` was applied and must go unanswered."""
        left = self.drop_after_next.get(operation, 0)
        if left <= 0:
            return False
        self.drop_after_next[operation] = left - 1
        link.connection.abort()
        return True
