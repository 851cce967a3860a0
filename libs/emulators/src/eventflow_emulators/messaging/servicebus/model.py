"""Service Bus queues' rules as plain state: sequence numbers, peek-lock, settlement, delivery
counts, dead-lettering, deferral, scheduling, duplicate detection and sessions.

Sources for the rules (learn.microsoft.com/azure/service-bus-messaging/...):
- message-transfers-locks-settlement: peek-lock, lock expiry makes a message available again and
  counts a delivery; abandon counts a delivery.
- service-bus-dead-letter-queues: MaxDeliveryCount exceeded -> DLQ with reason
  `MaxDeliveryCountExceeded`; TTL expiry -> DLQ with `TTLExpiredException` only if
  dead-lettering on expiration is on; DeadLetterReason/ErrorDescription are application properties.
- message-deferral: deferred messages are received only by sequence number.
- duplicate-detection: keyed on MessageId within the window; a duplicate is accepted and dropped.
- message-sessions: one receiver holds a session; the session lock covers its messages.
- service-bus-quotas: 256 KB messages (Standard), session state 256 KB (Standard).
Released deliveries do not count as a delivery: AMQP 1.0 part 3.4.4 "released" means the message
was not processed. A closed plain receiver's unsettled messages are not released: they stay locked
until the lock expires, which counts (the .NET `ServiceBusReceivedMessage.DeliveryCount` docs; the
SDK releases what it buffered itself). A closed session receiver releases its session's messages.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..config import QueueConfig
from ..store import MessageRow, Store

SESSION_STATE_LIMIT = 256 * 1024  # Standard tier (service-bus-quotas)
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"
MAX_DELIVERY_DESCRIPTION = "Message could not be consumed after {n} delivery attempts."
TTL_REASON = "TTLExpiredException"

ACTIVE, DEFERRED, SCHEDULED = "active", "deferred", "scheduled"
MESSAGE_STATE = {ACTIVE: 0, DEFERRED: 1, SCHEDULED: 2}


class ServiceBusFault(Exception):
    """A refusal with the condition the SDK maps to its exception (azure-servicebus
    `_transport/_pyamqp_transport.py` `_ERROR_CODE_TO_ERROR_MAPPING`)."""

    condition = "amqp:internal-error"
    status = 500

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class NotFound(ServiceBusFault):
    condition, status = "amqp:not-found", 404


class MessageLockLost(ServiceBusFault):
    condition, status = "com.microsoft:message-lock-lost", 410


class SessionLockLost(ServiceBusFault):
    condition, status = "com.microsoft:session-lock-lost", 410


class SessionCannotBeLocked(ServiceBusFault):
    condition, status = "com.microsoft:session-cannot-be-locked", 409


class MessageNotFound(ServiceBusFault):
    condition, status = "com.microsoft:message-not-found", 404


class ArgumentError(ServiceBusFault):
    condition, status = "com.microsoft:argument-error", 400


class SizeExceeded(ServiceBusFault):
    condition, status = "amqp:link:message-size-exceeded", 400


class Receiver(Protocol):
    """A receive link as the model sees it: woken when it may have something to take."""

    def wake(self) -> None: ...


@dataclass
class StoredMessage:
    seq: int
    body: bytes  # as received from the sender (no broker annotations)
    session_id: str | None
    message_id: str | None
    enqueued_ms: int
    expires_ms: int | None
    scheduled_ms: int | None = None
    state: str = ACTIVE
    dead: bool = False
    delivery_count: int = 0
    dl_reason: str | None = None
    dl_description: str | None = None
    lock_token: uuid.UUID | None = None
    locked_until_ms: int = 0
    holder: Receiver | None = None
    cache: object = None  # the wire layer's parsed form of `body`, kept to skip re-parsing


@dataclass
class SessionLock:
    holder: Receiver
    locked_until_ms: int


@dataclass(order=True)
class _Timer:
    due_ms: int
    kind: str = field(compare=False)
    queue: str = field(compare=False)
    key: object = field(compare=False)


def now_ms() -> int:
    return int(time.time() * 1000)


class Queue:
    def __init__(self, config: QueueConfig, store: Store, clock: Callable[[], int]) -> None:
        self.config = config
        self.name = config.name
        self.store = store
        self.clock = clock
        self.messages: dict[int, StoredMessage] = {}  # main queue and DLQ, by sequence number
        # The same messages by session (None: no session), so a session receiver scans its own.
        self.lanes: dict[str | None, dict[int, StoredMessage]] = {}
        self.scheduled: set[int] = set()  # sequence numbers of messages not yet enqueued
        self.locks: dict[uuid.UUID, StoredMessage] = {}
        self.sessions: dict[str, SessionLock] = {}
        self.waiting: list[Receiver] = []  # receivers to wake when something becomes available
        self.duplicates: dict[str, int] = {}
        self.last_seq = store.last_seq(self.name)
        window_ms = int(config.duplicate_detection_window.total_seconds() * 1000)
        if config.requires_duplicate_detection:
            self.duplicates = store.load_duplicates(self.name, clock() - window_ms)
        for row in store.load_messages(self.name):
            self.add(StoredMessage(
                seq=row.seq, body=row.body, session_id=row.session_id, message_id=row.message_id,
                enqueued_ms=row.enqueued_ms, expires_ms=row.expires_ms,
                scheduled_ms=row.scheduled_ms, state=row.state, dead=row.dead,
                delivery_count=row.delivery_count, dl_reason=row.dl_reason,
                dl_description=row.dl_description,
            ))  # fmt: skip

    @property
    def lock_ms(self) -> int:
        return int(self.config.lock_duration.total_seconds() * 1000)

    def row(self, m: StoredMessage) -> MessageRow:
        return MessageRow(self.name, m.seq, m.dead, m.state, m.session_id, m.message_id,
                          m.delivery_count, m.enqueued_ms, m.scheduled_ms, m.expires_ms,
                          m.dl_reason, m.dl_description, m.body)  # fmt: skip

    def add(self, m: StoredMessage) -> None:
        self.messages[m.seq] = m
        if m.state == SCHEDULED:
            self.scheduled.add(m.seq)
        self.lanes.setdefault(m.session_id, {})[m.seq] = m

    def remove(self, seq: int) -> None:
        m = self.messages.pop(seq)
        self.scheduled.discard(seq)
        lane = self.lanes.get(m.session_id)
        if lane is not None:
            lane.pop(seq, None)
            if not lane:
                del self.lanes[m.session_id]

    def wake_all(self) -> None:
        for receiver in list(self.waiting):
            receiver.wake()

    def available(self, m: StoredMessage, now: int) -> bool:
        return (
            m.state == ACTIVE
            and m.lock_token is None
            and (m.scheduled_ms is None or m.scheduled_ms <= now)
        )


class ServiceBusModel:
    def __init__(
        self,
        queues: list[QueueConfig],
        store: Store,
        clock: Callable[[], int] = now_ms,
        schedule: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self._schedule = schedule
        self.queues = {q.name.lower(): Queue(q, store, clock) for q in queues}
        self._timers: list[_Timer] = []

    # --- timers: lock expiry, scheduled messages -------------------------------------------

    def _at(self, due_ms: int, kind: str, queue: Queue, key: object) -> None:
        heapq.heappush(self._timers, _Timer(due_ms, kind, queue.name.lower(), key))
        if self._schedule is not None:
            self._schedule(max(0.0, (due_ms - self.clock()) / 1000) + 0.005, self.tick)

    def tick(self) -> None:
        """Run every timer that is due (lock expiries, scheduled messages becoming active)."""
        now = self.clock()
        while self._timers and self._timers[0].due_ms <= now:
            timer = heapq.heappop(self._timers)
            queue = self.queues[timer.queue]
            if timer.kind == "message-lock":
                m = queue.locks.get(timer.key)  # type: ignore[call-overload]
                if m is not None and m.locked_until_ms <= now:
                    self._lock_expired(queue, m)
            elif timer.kind == "session-lock":
                lock = queue.sessions.get(str(timer.key))
                if lock is not None and lock.locked_until_ms <= now:
                    self._session_expired(queue, str(timer.key))
            elif timer.kind == "scheduled":
                queue.wake_all()

    def _lock_expired(self, queue: Queue, m: StoredMessage) -> None:
        """An expired lock counts a delivery (message-transfers-locks-settlement)."""
        self._unlock(queue, m)
        self._count_delivery(queue, m)
        queue.wake_all()

    def _session_expired(self, queue: Queue, session_id: str) -> None:
        queue.sessions.pop(session_id, None)
        for m in [m for m in queue.locks.values() if m.session_id == session_id and not m.dead]:
            self._unlock(queue, m)
            self._count_delivery(queue, m)
        queue.wake_all()

    def _unlock(self, queue: Queue, m: StoredMessage) -> None:
        if m.lock_token is not None:
            queue.locks.pop(m.lock_token, None)
        m.lock_token, m.holder, m.locked_until_ms = None, None, 0

    def _count_delivery(self, queue: Queue, m: StoredMessage) -> None:
        m.delivery_count += 1
        if not m.dead and m.delivery_count >= queue.config.max_delivery_count:
            m.dead = True
            m.dl_reason = MAX_DELIVERY_REASON
            m.dl_description = MAX_DELIVERY_DESCRIPTION.format(n=queue.config.max_delivery_count)
            m.state = ACTIVE
        self.store.update_message(queue.name, m.seq, dead=m.dead, state=m.state,
                                  delivery_count=m.delivery_count, dl_reason=m.dl_reason,
                                  dl_description=m.dl_description)  # fmt: skip

    # --- lookups ---------------------------------------------------------------------------

    def queue(self, name: str) -> Queue:
        queue = self.queues.get(name.lower())
        if queue is None:
            raise NotFound(f"The messaging entity '{name}' could not be found.")
        return queue

    # --- sending ---------------------------------------------------------------------------

    def send(
        self,
        queue: Queue,
        items: list[tuple[bytes, str | None, str | None, int | None, int | None]],
    ) -> list[int]:
        """Enqueue (body, session id, message id, ttl ms, scheduled ms) items as one unit;
        returns the sequence numbers (0 for a dropped duplicate)."""
        now = self.clock()
        if queue.config.requires_session and any(sid is None for _, sid, _, _, _ in items):
            raise ArgumentError(
                "The SessionId was not set on a message, and it cannot be sent to the entity."
                " Entities that have session support enabled can only receive messages that"
                " have the SessionId set to a valid value."
            )
        if not queue.config.requires_session and any(sid is not None for _, sid, _, _, _ in items):
            pass  # the service accepts a session id on a queue without sessions and ignores it
        window_ms = int(queue.config.duplicate_detection_window.total_seconds() * 1000)
        seqs: list[int] = []
        new: list[StoredMessage] = []
        seen: list[tuple[str, int]] = []
        for body, session_id, message_id, ttl_ms, scheduled_ms in items:
            if queue.config.requires_duplicate_detection and message_id is not None:
                at = queue.duplicates.get(message_id)
                if at is not None and at >= now - window_ms:
                    seqs.append(0)
                    continue
                queue.duplicates[message_id] = now
                seen.append((message_id, now))
            queue.last_seq += 1
            default_ttl = int(queue.config.default_ttl.total_seconds() * 1000)
            ttl = min(ttl_ms, default_ttl) if ttl_ms else default_ttl
            scheduled = scheduled_ms if scheduled_ms and scheduled_ms > now else None
            # A scheduled message's time to live counts from its enqueue time, the scheduled one
            # (message-expiration: "the message becomes available ... TTL starts").
            m = StoredMessage(
                seq=queue.last_seq, body=body,
                session_id=session_id if queue.config.requires_session else None,
                message_id=message_id, enqueued_ms=now, expires_ms=(scheduled or now) + ttl,
                scheduled_ms=scheduled,
            )  # fmt: skip
            if m.scheduled_ms is not None:
                m.state = SCHEDULED
                self._at(m.scheduled_ms, "scheduled", queue, m.seq)
            new.append(m)
            seqs.append(m.seq)
        with self.store.transaction():
            self.store.save_messages_in_transaction([queue.row(m) for m in new])
            self.store.set_last_seq(queue.name, queue.last_seq)
            if seen:
                self.store.add_duplicates(queue.name, seen)
        for m in new:
            queue.add(m)
        if new:
            queue.wake_all()
        return seqs

    def cancel_scheduled(self, queue: Queue, seqs: list[int]) -> None:
        gone = [s for s in seqs if s in queue.messages and queue.messages[s].state == SCHEDULED]
        for seq in gone:
            queue.remove(seq)
        self.store.delete_messages(queue.name, gone)

    # --- receiving -------------------------------------------------------------------------

    def _activate_due(self, queue: Queue, now: int) -> None:
        for seq in list(queue.scheduled):
            m = queue.messages[seq]
            if m.scheduled_ms is None or m.scheduled_ms <= now:
                # A scheduled message is enqueued when its time comes (message-sequencing).
                m.enqueued_ms = max(m.enqueued_ms, m.scheduled_ms or 0)
                m.state, m.scheduled_ms = ACTIVE, None
                queue.scheduled.discard(seq)

    def _expire(self, queue: Queue, m: StoredMessage) -> None:
        """TTL expiry: dead-letter if the queue says so, else drop."""
        if queue.config.dead_lettering_on_expiration:
            m.dead, m.state, m.dl_reason = True, ACTIVE, TTL_REASON
            m.dl_description = "The message expired and was dead lettered."
            self.store.update_message(queue.name, m.seq, dead=True, state=m.state,
                                      delivery_count=m.delivery_count, dl_reason=m.dl_reason,
                                      dl_description=m.dl_description)  # fmt: skip
        else:
            queue.remove(m.seq)
            self.store.delete_messages(queue.name, [m.seq])

    def take(
        self,
        queue: Queue,
        receiver: Receiver,
        count: int,
        *,
        dead: bool,
        session_id: str | None,
        lock: bool,
    ) -> list[StoredMessage]:
        """Up to `count` available messages of the queue (or its DLQ, or one session), in
        sequence order, locked to `receiver` (or removed when `lock` is false:
        receive-and-delete)."""
        self.tick()
        now = self.clock()
        self._activate_due(queue, now)
        taken: list[StoredMessage] = []
        expired: list[StoredMessage] = []
        # In sequence order: sequence numbers only grow and rows load ordered. A session
        # receiver scans only its session's lane.
        scan = (
            queue.lanes.get(session_id, {})
            if queue.config.requires_session and not dead
            else queue.messages
        )
        for m in list(scan.values()):
            if len(taken) >= count:
                break
            if m.dead != dead or not queue.available(m, now):
                continue
            if not dead and queue.config.requires_session and m.session_id != session_id:
                continue
            if not dead and m.expires_ms is not None and m.expires_ms <= now:
                expired.append(m)
                continue
            taken.append(m)
        for m in expired:
            self._expire(queue, m)
        for m in taken:
            if lock:
                self._lock(queue, m, receiver, now)
            else:
                queue.remove(m.seq)
        if not lock and taken:
            self.store.delete_messages(queue.name, [m.seq for m in taken])
        return taken

    def _lock(self, queue: Queue, m: StoredMessage, receiver: Receiver, now: int) -> None:
        m.lock_token = uuid.uuid4()
        m.holder = receiver
        if m.session_id is not None and not m.dead and m.session_id in queue.sessions:
            # A session's messages are locked by the session lock (message-sessions).
            m.locked_until_ms = queue.sessions[m.session_id].locked_until_ms
        else:
            m.locked_until_ms = now + queue.lock_ms
            self._at(m.locked_until_ms, "message-lock", queue, m.lock_token)
        queue.locks[m.lock_token] = m

    def _locked(self, queue: Queue, token: uuid.UUID, receiver: Receiver | None) -> StoredMessage:
        m = queue.locks.get(token)
        now = self.clock()
        if m is not None and m.session_id is not None and not m.dead:
            lock = queue.sessions.get(m.session_id)
            if (
                lock is None
                or lock.locked_until_ms <= now
                or (receiver is not None and lock.holder is not receiver)
            ):
                raise SessionLockLost(
                    "The session lock has expired on the MessageSession. Accept a new MessageSession."
                )
            return m
        if m is None or m.locked_until_ms <= now:
            raise MessageLockLost(
                "The lock supplied is invalid. Either the lock expired, or the message has already"
                " been removed from the queue."
            )
        return m

    def complete(self, queue: Queue, token: uuid.UUID, receiver: Receiver | None = None) -> None:
        m = self._locked(queue, token, receiver)
        self._unlock(queue, m)
        queue.remove(m.seq)
        self.store.delete_messages(queue.name, [m.seq])

    def abandon(self, queue: Queue, token: uuid.UUID, receiver: Receiver | None = None) -> None:
        m = self._locked(queue, token, receiver)
        self._unlock(queue, m)
        self._count_delivery(queue, m)
        queue.wake_all()

    def defer(self, queue: Queue, token: uuid.UUID, receiver: Receiver | None = None) -> None:
        m = self._locked(queue, token, receiver)
        self._unlock(queue, m)
        m.state = DEFERRED
        self.store.update_message(queue.name, m.seq, dead=m.dead, state=m.state,
                                  delivery_count=m.delivery_count)  # fmt: skip

    def dead_letter(
        self,
        queue: Queue,
        token: uuid.UUID,
        reason: str | None,
        description: str | None,
        receiver: Receiver | None = None,
    ) -> None:
        m = self._locked(queue, token, receiver)
        self._unlock(queue, m)
        if m.dead:
            return  # dead-lettering a dead letter leaves it where it is
        m.dead, m.state = True, ACTIVE
        m.dl_reason, m.dl_description = reason, description
        self.store.update_message(queue.name, m.seq, dead=True, state=m.state,
                                  delivery_count=m.delivery_count, dl_reason=reason,
                                  dl_description=description)  # fmt: skip

    def release(self, queue: Queue, token: uuid.UUID) -> None:
        """A delivery the client gave back unprocessed (released outcome, or its link closed):
        available again, the delivery count unchanged."""
        m = queue.locks.get(token)
        if m is not None:
            self._unlock(queue, m)
            queue.wake_all()

    def renew_message_lock(self, queue: Queue, token: uuid.UUID) -> int:
        m = self._locked(queue, token, None)
        if m.session_id is not None and not m.dead:
            raise ArgumentError("Message locks of session messages are renewed with the session.")
        m.locked_until_ms = self.clock() + queue.lock_ms
        self._at(m.locked_until_ms, "message-lock", queue, token)
        return m.locked_until_ms

    def expire_lock(self, name: str, *, session_id: str | None = None,
                    sequence_number: int | None = None) -> int:  # fmt: skip
        """Fault control: expire a session lock or a message lock now."""
        queue = self.queue(name)
        if session_id is not None:
            if session_id not in queue.sessions:
                return 0
            self._session_expired(queue, session_id)
            return 1
        expired = 0
        for m in list(queue.locks.values()):
            if sequence_number is None or m.seq == sequence_number:
                if m.session_id is not None and not m.dead:
                    self._session_expired(queue, m.session_id)
                else:
                    self._lock_expired(queue, m)
                expired += 1
        return expired

    def drop_receiver(self, queue: Queue, receiver: Receiver) -> None:
        """A receiver went away. A session receiver's messages are released with its session
        (no delivery counted); a plain receiver's messages stay locked until their locks expire,
        which then counts a delivery (the messages the SDK still buffered it releases itself
        before closing: azure-servicebus `ServiceBusReceiver._close_handler`)."""
        for m in [m for m in queue.locks.values() if m.holder is receiver]:
            if m.session_id is not None and not m.dead:
                self._unlock(queue, m)
            else:
                m.holder = None
        for session_id, lock in list(queue.sessions.items()):
            if lock.holder is receiver:
                del queue.sessions[session_id]
        if receiver in queue.waiting:
            queue.waiting.remove(receiver)
        queue.wake_all()

    # --- deferred, peek --------------------------------------------------------------------

    def receive_deferred(
        self, queue: Queue, receiver: Receiver, seqs: list[int], session_id: str | None
    ) -> list[StoredMessage]:
        found = []
        now = self.clock()
        for seq in seqs:
            m = queue.messages.get(seq)
            if (
                m is None
                or m.state != DEFERRED
                or (session_id is not None and m.session_id != session_id)
            ):
                raise MessageNotFound(
                    f"Failed to retrieve the deferred message with sequence number {seq}."
                )
            found.append(m)
        # The dead-letter queue does not observe time to live ("Overview of Service Bus dead-letter
        # queues"): a message deferred there never expires.
        expired = [
            m for m in found if not m.dead and m.expires_ms is not None and m.expires_ms <= now
        ]
        if expired:
            # An expired deferred message is expired only when it is asked for (message-deferral:
            # "checked for expired condition and moved to a dead-letter queue").
            for m in expired:
                if m.lock_token is not None:
                    self._unlock(queue, m)
                self._expire(queue, m)
            raise MessageNotFound(
                f"The deferred message with sequence number {expired[0].seq} has expired."
            )
        for m in found:
            if m.lock_token is not None:
                self._unlock(queue, m)
            self._lock(queue, m, receiver, now)
        return found

    def peek(
        self, queue: Queue, from_seq: int, count: int, *, dead: bool, session_id: str | None
    ) -> list[StoredMessage]:
        out = []
        for seq, m in list(queue.messages.items()):
            if seq < from_seq or m.dead != dead:
                continue
            if session_id is not None and m.session_id != session_id:
                continue
            out.append(m)
            if len(out) >= count:
                break
        return out

    # --- sessions --------------------------------------------------------------------------

    def accept_session(
        self, queue: Queue, receiver: Receiver, session_id: str | None
    ) -> str | None:
        """Lock a named session, or the next session with available messages (None when there
        is none: the caller waits and retries until its accept timeout)."""
        self.tick()
        now = self.clock()
        self._activate_due(queue, now)
        if session_id is None:
            candidates = sorted(
                (m.seq, m.session_id)
                for m in queue.messages.values()
                if m.session_id is not None and not m.dead and queue.available(m, now)
                and not self._session_held(queue, m.session_id, now)
            )  # fmt: skip
            if not candidates:
                return None
            session_id = candidates[0][1]
        elif self._session_held(queue, session_id, now):
            raise SessionCannotBeLocked(
                f"The requested session '{session_id}' cannot be accepted. It may be locked by"
                " another receiver."
            )
        assert session_id is not None
        queue.sessions[session_id] = SessionLock(receiver, now + queue.lock_ms)
        self._at(now + queue.lock_ms, "session-lock", queue, session_id)
        return session_id

    def _session_held(self, queue: Queue, session_id: str, now: int) -> bool:
        lock = queue.sessions.get(session_id)
        return lock is not None and lock.locked_until_ms > now

    def session_holder(self, queue: Queue, session_id: str) -> SessionLock:
        lock = queue.sessions.get(session_id)
        if lock is None or lock.locked_until_ms <= self.clock():
            raise SessionLockLost(
                "The session lock has expired on the MessageSession. Accept a new MessageSession."
            )
        return lock

    def renew_session_lock(self, queue: Queue, session_id: str) -> int:
        lock = self.session_holder(queue, session_id)
        lock.locked_until_ms = self.clock() + queue.lock_ms
        for m in queue.locks.values():
            if m.session_id == session_id:
                m.locked_until_ms = lock.locked_until_ms
        self._at(lock.locked_until_ms, "session-lock", queue, session_id)
        return lock.locked_until_ms

    def get_session_state(self, queue: Queue, session_id: str) -> bytes | None:
        self.session_holder(queue, session_id)
        return self.store.session_state(queue.name, session_id)

    def set_session_state(self, queue: Queue, session_id: str, state: bytes | None) -> None:
        self.session_holder(queue, session_id)
        if state is not None and len(state) > SESSION_STATE_LIMIT:
            raise ArgumentError(
                f"The session state of {len(state)} bytes exceeds the limit of"
                f" {SESSION_STATE_LIMIT} bytes."
            )
        self.store.set_session_state(queue.name, session_id, state)

    # --- housekeeping ----------------------------------------------------------------------

    def housekeeping(self) -> None:
        """Expire messages past their TTL and forget duplicate ids past the window."""
        now = self.clock()
        for queue in self.queues.values():
            for m in list(queue.messages.values()):
                if (
                    not m.dead
                    and m.state != DEFERRED  # expired only when received (message-deferral)
                    and m.lock_token is None
                    and m.expires_ms is not None
                    and m.expires_ms <= now
                ):
                    self._expire(queue, m)
            window_ms = int(queue.config.duplicate_detection_window.total_seconds() * 1000)
            queue.duplicates = {k: v for k, v in queue.duplicates.items() if v >= now - window_ms}
