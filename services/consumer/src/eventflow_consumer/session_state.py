"""The consumer's Service Bus session state: a small, versioned JSON document per session.

Format 2 (written by this code):
    {"v": 2, "last_sequence": int, "blocked": bool, "reason": str | null, "deferred": [int, ...],
     "events": {"<broker sequence number>": <event sequence>, ...}}
Format 1 (written by earlier consumers; no "v"): the same keys without "v" and "events".

Format 2 only adds keys, and keeps the meaning of the others ("deferred" lists the broker sequence
numbers of every message this consumer deferred in the session), so during a rolling upgrade an
earlier replica reads it as format 1 and replays or keeps those messages; a newer replica reads
format 1 as format 2 without the event-sequence cache. A format newer than this code knows is not
interpreted at all (UnknownStateFormat): the session is left to a replica that knows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

FORMAT = 2
STATE_LIMIT_BYTES = 256 * 1024  # Service Bus Standard tier: the session state is at most 256 KB


class UnknownStateFormat(Exception):
    """The session state was written by a newer consumer (or is not ours): do not interpret it."""


@dataclass
class SessionState:
    """`deferred`: broker sequence numbers of the messages deferred while the session is blocked,
    recorded before each deferral and forgotten only after the message is settled. `events` maps
    some of them to their event sequence (a cache: replay order is re-read from the messages when
    it is missing). `last_sequence` is kept for earlier replicas, which read it as a duplicate
    filter; this code does not rely on it."""

    last_sequence: int = 0
    blocked: bool = False
    reason: str | None = None
    deferred: list[int] = field(default_factory=list)
    events: dict[int, int] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        raw = orjson.dumps(
            {"v": FORMAT, "last_sequence": self.last_sequence, "blocked": self.blocked, "reason": self.reason,
             "deferred": self.deferred, "events": {str(k): v for k, v in self.events.items() if k in self.deferred}}
        )  # fmt: skip
        if len(raw) > STATE_LIMIT_BYTES:  # the deferral cap keeps it far below; this is a guard
            raise ValueError(f"session state of {len(raw)} bytes exceeds {STATE_LIMIT_BYTES}")
        return raw

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> SessionState:
        """Reads formats 1 and 2. Raises UnknownStateFormat for anything else."""
        if not raw:
            return cls()
        try:
            document: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise UnknownStateFormat(f"session state is not JSON: {error}") from error
        if not isinstance(document, dict):
            raise UnknownStateFormat("session state is not a JSON object")
        version = document.get("v", 1)
        if version not in (1, FORMAT):
            raise UnknownStateFormat(
                f"session state format {version!r}; this consumer reads 1 and 2"
            )
        try:
            deferred = [int(n) for n in document.get("deferred", [])]
            events = {int(k): int(v) for k, v in document.get("events", {}).items()}
            return cls(int(document.get("last_sequence", 0)), bool(document.get("blocked", False)),
                       document.get("reason"), deferred, events)  # fmt: skip
        except (TypeError, ValueError, AttributeError) as error:
            raise UnknownStateFormat(
                f"session state does not fit format {version}: {error}"
            ) from error

    def record(self, sequence_number: int, event_sequence: int | None) -> None:
        if sequence_number not in self.deferred:
            self.deferred.append(sequence_number)
        if event_sequence is not None:
            self.events[sequence_number] = event_sequence

    def forget(self, sequence_numbers: set[int]) -> None:
        self.deferred = [n for n in self.deferred if n not in sequence_numbers]
        self.events = {k: v for k, v in self.events.items() if k not in sequence_numbers}
