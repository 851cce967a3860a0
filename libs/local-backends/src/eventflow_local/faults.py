"""Fault injection for reliability tests, shared across processes through the environment's files.

A test (or `make chaos`) says "the next N calls of operation X fail with a transient error" or
"take this much longer"; every stand-in client of that environment, in any process, obeys.
Faults are off unless injected.

    inject_fault(env, "servicebus.send_messages", kind=FaultKind.TRANSIENT, count=3)
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from eventflow_local._sqlite import Database

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS faults (
    operation TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    remaining INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL DEFAULT 0
);
"""


class FaultKind(StrEnum):
    TRANSIENT = "transient"
    """The service's transient error (connection lost, 503): callers should retry."""
    THROTTLED = "throttled"
    """The service's throttling error (429, server busy)."""
    TIMEOUT = "timeout"
    """The service's timeout error."""
    LATENCY = "latency"
    """No error: the call takes `latency_ms` longer."""


def set_fault(
    database: Database, operation: str, kind: FaultKind, count: int, latency_ms: int = 0
) -> None:
    """Make the next `count` calls of `operation` fail (or slow down); count 0 clears it."""

    def work(connection: sqlite3.Connection) -> None:
        if count <= 0:
            connection.execute("DELETE FROM faults WHERE operation = ?", (operation,))
            return
        connection.execute(
            "INSERT OR REPLACE INTO faults (operation, kind, remaining, latency_ms) "
            "VALUES (?, ?, ?, ?)",
            (operation, kind.value, count, latency_ms),
        )

    database.write_sync(work)


def take_fault(connection: sqlite3.Connection, operation: str) -> tuple[FaultKind, int] | None:
    """Inside a stand-in call: consume one pending fault of `operation`, if any."""
    row = connection.execute(
        "SELECT kind, remaining, latency_ms FROM faults WHERE operation = ?", (operation,)
    ).fetchone()
    if row is None:
        return None
    connection.execute("BEGIN IMMEDIATE")
    try:
        updated = connection.execute(
            "UPDATE faults SET remaining = remaining - 1 WHERE operation = ? AND remaining > 0 "
            "RETURNING kind, latency_ms",
            (operation,),
        ).fetchone()
        connection.execute("DELETE FROM faults WHERE remaining <= 0")
    finally:
        connection.execute("COMMIT")
    return None if updated is None else (FaultKind(updated[0]), int(updated[1]))


async def apply_latency(fault: tuple[FaultKind, int] | None) -> FaultKind | None:
    """Sleep the fault's latency; return its kind when it is an error to raise."""
    if fault is None:
        return None
    kind, latency_ms = fault
    if latency_ms:
        await asyncio.sleep(latency_ms / 1000)
    return None if kind is FaultKind.LATENCY else kind


async def guarded(
    database: Database,
    operation: str,
    work: Callable[[sqlite3.Connection], T],
    *,
    write: bool,
    error: Callable[[FaultKind], BaseException],
) -> T:
    """Run a stand-in call, obeying any fault injected for `operation`: the fault lookup and the
    call share one trip to the database thread when there is no fault (the usual case)."""
    fault, result = await database.checked(lambda c: take_fault(c, operation), work, write=write)
    if fault is None:
        return result  # type: ignore[return-value]
    kind = await apply_latency(fault)
    if kind is not None:
        raise error(kind)
    return await (database.write(work) if write else database.read(work))
