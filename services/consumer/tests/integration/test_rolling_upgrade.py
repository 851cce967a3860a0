"""A rolling upgrade: replicas of the previous release and of this one hold the same inbox's sessions
in turn, each reading the session state the other wrote (real azure-servicebus, messaging emulator).

The previous release wrote session-state format 1 (no "v") and read it with the code frozen below,
copied unchanged from that release (services/consumer/.../handling.py before the format was
versioned); it also took `event sequence <= last_sequence` as a duplicate. Its replicas cannot run
here any more (they predate the real-SDK clients), so the previous release's side is played by that
reader and writer on the broker's own session state, and this release's side by the consumer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from azure.servicebus import ServiceBusMessageState

from eventflow_consumer.admin import run as admin
from eventflow_consumer.session_state import SessionState
from eventflow_testing import eventually as until

from ..conftest import Backends, inbox_message, order_events  # type: ignore[import-not-found]
from .test_sessions import at_sequence, consumer


@dataclass
class PreviousReleaseSessionState:
    """Frozen: the previous release's session state, as it read and wrote it."""

    last_sequence: int = 0
    blocked: bool = False
    reason: str | None = None
    deferred: list[int] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return orjson.dumps({"last_sequence": self.last_sequence, "blocked": self.blocked, "reason": self.reason,
                             "deferred": self.deferred})  # fmt: skip

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> PreviousReleaseSessionState:
        if not raw:
            return cls()
        document = orjson.loads(raw)
        return cls(document.get("last_sequence", 0), document.get("blocked", False), document.get("reason"),
                   list(document.get("deferred", [])))  # fmt: skip


async def test_a_session_blocked_by_a_previous_release_replica_is_taken_over_and_unblocked(
    backends: Backends,
) -> None:
    created, added, submitted, cancelled = order_events("o1")
    await backends.send(inbox_message(created, "o1"))
    async with consumer(backends, poison_policy="block") as resources:
        await until(at_sequence(resources, "o1", 1), "event 1 applied by this release")

    # A previous-release replica takes the session: a poison message blocks it, the later events
    # are deferred and recorded in format 1.
    await backends.send(
        inbox_message(b"{not json", "o1", "poison"), inbox_message(added, "o1"),
        inbox_message(submitted, "o1"),
    )  # fmt: skip
    async with (
        backends.client() as client,
        client.get_queue_receiver(backends.queue, session_id="o1", max_wait_time=2) as receiver,
    ):
        poison, second, third = await receiver.receive_messages(
            max_message_count=3, max_wait_time=2
        )
        state = PreviousReleaseSessionState.from_bytes(await receiver.session.get_state())
        state.last_sequence, state.blocked, state.reason = 1, True, "invalid-json: x"
        await receiver.dead_letter_message(poison, reason="invalid-json", error_description="x")
        for message in (third, second):  # deferred in any order; replayed in event order
            state.deferred.append(message.sequence_number)
            await receiver.session.set_state(state.to_bytes())
            await receiver.defer_message(message)

    # Its blocked record was lost (it wrote the record after the state); the next event of the
    # order brings the session to a replica of this release, which repairs the record from the state.
    await backends.send(inbox_message(cancelled, "o1"))
    async with consumer(backends, poison_policy="block") as resources:
        await until(lambda: backends.settled("o1"), "this release holds the session and defers")
        (record,) = await resources.store.list_blocked()
        assert record["reason"] == "invalid-json: x", "the blocked record is repaired from format 1"
        assert await admin(["unblock", "o1", "--wait", "20"]) == 0
        await until(at_sequence(resources, "o1", 4), "the deferred events replayed in event order")
        summary = await resources.store.get("o1")
        assert summary is not None
        assert [h["status"] for h in summary["status_history"]] == [
            "open",
            "submitted",
            "cancelled",
        ]
        assert await resources.store.list_blocked() == []


async def test_a_session_blocked_by_this_release_reads_right_to_a_previous_release_replica(
    backends: Backends,
) -> None:
    created, added, submitted, _ = order_events("o1")
    await backends.send(
        inbox_message(created, "o1"), inbox_message(b"{not json", "o1", "poison"),
        inbox_message(added, "o1"), inbox_message(submitted, "o1"),
    )  # fmt: skip
    async with consumer(backends, poison_policy="block") as resources:
        await until(backends.has_dead_letters, "the poison message dead-lettered")
        await until(lambda: backends.settled("o1"), "the later events deferred")
        applied = await resources.store.get("o1")
        assert applied is not None

    async with (
        backends.client() as client,
        client.get_queue_receiver(backends.queue, session_id="o1", max_wait_time=2) as receiver,
    ):
        raw = await receiver.session.get_state()
        deferred = {
            m.sequence_number
            for m in await receiver.peek_messages(max_message_count=20, sequence_number=0)
            if m.state == ServiceBusMessageState.DEFERRED
        }
    previous = PreviousReleaseSessionState.from_bytes(raw)
    assert previous.blocked, "a previous-release replica keeps the session blocked"
    assert previous.reason is not None
    assert previous.reason.startswith("invalid-json")
    assert set(previous.deferred) == deferred, "and finds every deferred message to replay"
    assert len(deferred) == 2
    assert previous.last_sequence <= applied["last_sequence"], (
        "its duplicate filter never passes over an event this release has not applied"
    )
    assert SessionState.from_bytes(raw).deferred == previous.deferred
    parsed: Any = orjson.loads(raw)
    assert parsed["v"] == 2, "this release writes the versioned format"
