"""One SQLite file shared by every process of a local environment.

WAL mode lets readers run beside the single writer; every write is a `BEGIN IMMEDIATE`
transaction, so writers from different processes serialise instead of failing half-way.
Each `Database` owns one connection and one worker thread, so async callers never block
their event loop on SQLite's locks.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
C = TypeVar("C")

BUSY_TIMEOUT_MS = 30_000


def _retry_locked(work: Callable[[], object]) -> None:
    """Schema set-up from several processes at once: SQLite may refuse with "locked" at once
    (journal-mode changes do not wait on the busy handler), so try again for a while."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            work()
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class Database:
    """A SQLite connection used from one worker thread; `read` and `write` run callables on it."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self._schema = schema
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.stem}")
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                check_same_thread=False,
            )  # fmt: skip
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA synchronous = NORMAL")
            _retry_locked(lambda: connection.execute("PRAGMA journal_mode = WAL"))
            _retry_locked(lambda: connection.executescript(self._schema))
            self._connection = connection
        return self._connection

    def read_sync(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` outside a write transaction (it sees the latest committed state)."""
        with self._lock:
            return work(self._connect())

    def write_sync(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one `BEGIN IMMEDIATE` transaction: committed if it returns, rolled back if
        it raises."""
        with self._lock:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

    def checked_sync(
        self,
        check: Callable[[sqlite3.Connection], C | None],
        work: Callable[[sqlite3.Connection], T],
        *,
        write: bool,
    ) -> tuple[C | None, T | None]:
        """`check` first (outside any transaction); when it finds something, return that and skip
        `work`; else run `work` (in a write transaction when `write`). One trip to the thread."""
        with self._lock:
            connection = self._connect()
            found = check(connection)
            if found is not None:
                return found, None
            if not write:
                return None, work(connection)
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return None, result

    async def checked(
        self,
        check: Callable[[sqlite3.Connection], C | None],
        work: Callable[[sqlite3.Connection], T],
        *,
        write: bool,
    ) -> tuple[C | None, T | None]:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: self.checked_sync(check, work, write=write)
        )

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self.read_sync, work
        )

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self.write_sync, work
        )

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
        self._executor.shutdown(wait=False)
