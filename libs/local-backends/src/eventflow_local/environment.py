"""A local environment: one folder whose SQLite files hold every stand-in's state.

Every process that opens the same folder sees the same databases, containers, hubs and queues,
so the four services can run as separate processes on one machine. Each service kind has its
own file (eventhubs.sqlite3, servicebus.sqlite3) so that their writers do not
wait on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eventflow_local._sqlite import Database
from eventflow_local.faults import SCHEMA as FAULTS_SCHEMA
from eventflow_local.faults import FaultKind, set_fault

SERVICES = ("eventhubs", "servicebus")


@dataclass(frozen=True)
class LocalEnvironment:
    """The folder of one local environment (e.g. `.local/` for `make dev`, a tmp dir per test)."""

    folder: Path

    def open(self, service: str, schema: str) -> Database:
        """A new connection to `service`'s file, creating its tables if needed."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; one of {SERVICES}")
        return Database(self.folder / f"{service}.sqlite3", schema + FAULTS_SCHEMA)

    def inject_fault(
        self,
        operation: str,
        kind: FaultKind = FaultKind.TRANSIENT,
        *,
        count: int = 1,
        latency_ms: int = 0,
    ) -> None:
        """Make the next `count` calls of `operation` ("<service>.<method>", e.g.
        "servicebus.send_messages") fail with `kind`, in every process of this environment."""
        service = operation.split(".", 1)[0]
        database = self.open(service, "")
        try:
            set_fault(database, operation, kind, count, latency_ms)
        finally:
            database.close()
