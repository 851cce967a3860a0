"""Service Bus queues at the wire: sender links, receiver links and `<queue>/$management`.

Sources: azure-servicebus 7.15.0 `_transport/_pyamqp_transport.py` (settlement outcomes: complete =
accepted, abandon = modified(delivery-failed), defer = modified(undeliverable-here), dead-letter =
rejected with `com.microsoft:dead-letter` and the reason in the error info; the lock token is the
delivery tag as a GUID in .NET byte order), `_common/constants.py` (management operations and
their fields) and `_common/mgmt_handlers.py` (the replies they expect).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..amqp import message as amqp_message
from ..amqp.codec import Array, DecodeError, Described, Symbol, Timestamp, ULong, encode
from ..amqp.connection import BaseLinkHandler, Delivery, Link, LinkRefused, guarded
from ..amqp.frames import ACCEPTED, MODIFIED, REJECTED, RELEASED, descriptor_code
from ..faults import Faults
from ..nodes import (
    ACCEPTED_STATE,
    ManagementError,
    Operation,
    Reply,
    entity_path,
    refused_send,
    rejected,
)
from .model import (
    MESSAGE_STATE,
    ArgumentError,
    MessageLockLost,
    Queue,
    ServiceBusFault,
    ServiceBusModel,
    SessionLockLost,
    StoredMessage,
)

MAX_MESSAGE_SIZE = 256 * 1024  # Standard tier (service-bus-quotas); the SDK sizes batches by it
PROPERTY_LIMIT = 32 * 1024  # one message property (service-bus-quotas)
PROPERTIES_LIMIT = 64 * 1024  # all of a message's properties together (service-bus-quotas)
SESSION_FILTER = "com.microsoft:session-filter"
LOCKED_UNTIL_UTC = "com.microsoft:locked-until-utc"
TIMEOUT = "com.microsoft:timeout"
DEAD_LETTER = "com.microsoft:dead-letter"
DEFAULT_ACCEPT_TIMEOUT_S = 60.0
DOTNET_EPOCH_TICKS = 621355968000000000  # DateTime ticks at 1970-01-01 (azure-servicebus constants)

SEQUENCE = Symbol("x-opt-sequence-number")
ENQUEUED = Symbol("x-opt-enqueued-time")
LOCKED_UNTIL = Symbol("x-opt-locked-until")
MESSAGE_STATE_NAME = Symbol("x-opt-message-state")
ENQUEUE_SEQUENCE = Symbol("x-opt-enqueue-sequence-number")
SCHEDULED = "x-opt-scheduled-enqueue-time"
DEADLETTER_SOURCE = Symbol("x-opt-deadletter-source")


def ticks(ms: int) -> int:
    return DOTNET_EPOCH_TICKS + ms * 10_000


def _message_of(m: StoredMessage) -> amqp_message.Message:
    if not isinstance(m.cache, amqp_message.Message):
        m.cache = amqp_message.parse(m.body)
    return m.cache


def delivered_form(m: StoredMessage) -> bytes:
    """The message as a receiver gets it: the broker's annotations and delivery count added."""
    message = _message_of(m)
    if m.dead and (m.dl_reason is not None or m.dl_description is not None):
        extra = {}
        if m.dl_reason is not None:
            extra["DeadLetterReason"] = m.dl_reason
        if m.dl_description is not None:
            extra["DeadLetterErrorDescription"] = m.dl_description
        message = amqp_message.with_application_properties(message, extra)
    annotations: dict[Any, Any] = {
        ENQUEUED: Timestamp(m.enqueued_ms), SEQUENCE: m.seq,
        ENQUEUE_SEQUENCE: m.seq, MESSAGE_STATE_NAME: MESSAGE_STATE[m.state],
    }  # fmt: skip
    if m.lock_token is not None:
        annotations[LOCKED_UNTIL] = Timestamp(m.locked_until_ms)
    return amqp_message.encode_message(
        message, delivery_count=m.delivery_count, annotations=annotations, ttl=_applied_ttl(m)
    )


def _applied_ttl(m: StoredMessage) -> int | None:
    """The time to live the queue applied, when the sender set one: the message's, or the
    queue's default when that is lower (message-expiration: "silently adjusted")."""
    header = _message_of(m).header
    if not header or not header[2] or m.expires_ms is None:
        return None
    return max(0, m.expires_ms - (m.scheduled_ms or m.enqueued_ms))


Item = tuple[bytes, str | None, str | None, int | None, int | None]


def _check_properties(message: amqp_message.Message) -> None:
    """Service Bus quotas ("Message property size for a queue, topic, or subscription
    entity"): each property at most 32 KB, all properties (the properties section and the
    application properties) at most 64 KB; the service refuses more (SerializationException)."""
    application = message.application_properties or {}
    for key, value in application.items():
        size = len(encode(key)) + len(encode(value))
        if size > PROPERTY_LIMIT:
            raise ArgumentError(
                f"The application property {str(key)!r} is {size} bytes; a property may be at"
                f" most {PROPERTY_LIMIT} bytes."
            )
    total = len(message.raw_properties) + amqp_message.application_properties_size(message)
    if total > PROPERTIES_LIMIT:
        raise ArgumentError(
            f"The message's properties take {total} bytes; all properties together may take at"
            f" most {PROPERTIES_LIMIT} bytes."
        )


def _item(body: bytes, message: amqp_message.Message) -> Item:
    """(body, session id, message id, ttl ms, scheduled enqueue ms) of one sent message."""
    amqp_message.check(body)
    _check_properties(message)
    session_id = message.prop("group_id")
    message_id = message.prop("message_id")
    ttl = message.header[2] if message.header else None
    scheduled = message.annotations.get(SCHEDULED)
    return (
        body,
        str(session_id) if session_id is not None else None,
        str(message_id) if message_id is not None else None,
        int(ttl) if ttl else None,
        int(scheduled) if scheduled is not None else None,
    )


def _items(delivery: Delivery) -> list[Item]:
    outer = amqp_message.parse(delivery.payload)
    if delivery.message_format == amqp_message.BATCH_FORMAT:
        return [_item(section, amqp_message.parse(section)) for section in outer.data_sections()]
    return [_item(delivery.payload, outer)]


class SenderHandler(BaseLinkHandler):
    def __init__(self, model: ServiceBusModel, queue: Queue, faults: Faults) -> None:
        self.model = model
        self.queue = queue
        self.faults = faults

    def on_transfer(self, link: Link, delivery: Delivery) -> None:
        if refused_send(link, delivery, self.faults, MAX_MESSAGE_SIZE):
            return
        try:
            self.model.send(self.queue, _items(delivery))
        except ServiceBusFault as fault:
            link.settle(delivery.delivery_id, rejected(fault.condition, fault.description))
            return
        except DecodeError as error:
            link.settle(delivery.delivery_id, rejected("amqp:decode-error", str(error)))
            return
        if self.faults.drop_after("send", link):
            return
        if not delivery.settled:
            link.settle(delivery.delivery_id, ACCEPTED_STATE)


class ReceiverHandler(BaseLinkHandler):
    """A queue, DLQ or session receiver. Peek-lock unless the link is sender-settled
    (receive-and-delete)."""

    def __init__(self, model: ServiceBusModel, queue: Queue, link: Link, *, dead: bool,
                 faults: Faults) -> None:  # fmt: skip
        self.model = model
        self.queue = queue
        self.link = link
        self.dead = dead
        self.faults = faults
        self.session_id: str | None = None
        self.peek_lock = link.snd_settle_mode != 1
        self._accepted = asyncio.Event()

    @property
    def is_session(self) -> bool:
        return self.queue.config.requires_session and not self.dead

    async def accept(self) -> None:
        """Attach-time work: lock the session the filter names, or wait for one."""
        if not self.is_session:
            return
        filters = self.link.source_filters
        if SESSION_FILTER not in {str(k) for k in filters}:
            raise LinkRefused(
                "amqp:not-allowed",
                "It is not possible for an entity that requires sessions to create a"
                " non-sessionful message receiver.",
            )
        wanted = next(v for k, v in filters.items() if str(k) == SESSION_FILTER)
        wanted = wanted.value if isinstance(wanted, Described) else wanted
        wanted = wanted.decode() if isinstance(wanted, bytes) else wanted
        timeout_ms = self.link.properties.get(TIMEOUT)
        timeout = float(timeout_ms) / 1000 if timeout_ms else DEFAULT_ACCEPT_TIMEOUT_S
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                session_id = self.model.accept_session(self.queue, self, wanted)
            except ServiceBusFault as fault:
                raise LinkRefused(fault.condition, fault.description) from None
            if session_id is not None:
                break
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or self.link.connection.closed:
                # What the service does when no session frees up in time: the SDK turns
                # com.microsoft:timeout into OperationTimeoutError.
                raise LinkRefused(
                    TIMEOUT, "The operation did not complete within the allotted timeout."
                )
            self._accepted.clear()
            self.queue.waiting.append(self)
            try:
                await asyncio.wait_for(self._accepted.wait(), timeout=min(left, 1.0))
            except TimeoutError:
                pass
            finally:
                if self in self.queue.waiting:
                    self.queue.waiting.remove(self)
        self.session_id = session_id
        source = list(self.link.source)
        source[7] = {Symbol(SESSION_FILTER): session_id}
        self.link.source = source
        lock = self.queue.sessions[session_id]
        self.link.reply_properties = {Symbol(LOCKED_UNTIL_UTC): ticks(lock.locked_until_ms)}

    def wake(self) -> None:
        self._accepted.set()
        if self.link.attached and self.link.can_send():
            # Woken by another link's operation (a send, a settlement): a failure here is this
            # receiver's, never that operation's.
            guarded(self.link, self.pump, self.link)

    def pump(self, link: Link) -> None:
        if self.is_session:
            lock = self.queue.sessions.get(self.session_id or "")
            if lock is None or lock.holder is not self:
                return  # the session lock is gone: nothing more for this receiver
        taken = self.model.take(
            self.queue, self, link.credit, dead=self.dead, session_id=self.session_id,
            lock=self.peek_lock,
        )  # fmt: skip
        for m in taken:
            tag = m.lock_token.bytes_le if m.lock_token is not None else uuid.uuid4().bytes_le
            link.send(delivered_form(m), tag, settled=not self.peek_lock)
        if taken and self.faults.drop_after("receive", link):
            return  # delivered (and locked), then the connection dropped
        if link.credit > 0 and self not in self.queue.waiting:
            self.queue.waiting.append(self)
        elif link.credit <= 0 and self in self.queue.waiting:
            self.queue.waiting.remove(self)

    def on_flow(self, link: Link) -> None:
        self.pump(link)

    def on_disposition(
        self, link: Link, delivery_id: int, tag: bytes, state: Any, settled: bool
    ) -> None:
        if not self.peek_lock or len(tag) != 16:
            return
        token = uuid.UUID(bytes_le=tag)
        code = descriptor_code(state.descriptor) if isinstance(state, Described) else -1
        fields = list(state.value or []) if isinstance(state, Described) else []
        refusal = self.faults.refusal("settle") if code != RELEASED else None
        outcome: Any = state
        try:
            if refusal is not None:
                outcome = rejected(*refusal)
            elif code == ACCEPTED:
                self.model.complete(self.queue, token, self)
            elif code == RELEASED:
                self.model.release(self.queue, token)
            elif code == MODIFIED:
                undeliverable = len(fields) > 1 and bool(fields[1])
                if undeliverable:
                    self.model.defer(self.queue, token, self)
                else:
                    self.model.abandon(self.queue, token, self)
            elif code == REJECTED:
                reason, description = _dead_letter_details(fields)
                self.model.dead_letter(self.queue, token, reason, description, self)
                outcome = Described(ULong(REJECTED), [None])
        except MessageLockLost as fault:
            # A session receiver's messages are locked by the session: a lost lock is the session's.
            lost = SessionLockLost(fault.description) if self.is_session else fault
            outcome = rejected(lost.condition, lost.description)
        except ServiceBusFault as fault:
            outcome = rejected(fault.condition, fault.description)
        if refusal is None and self.faults.drop_after("settle", link):
            return
        if not settled:
            link.settle(delivery_id, outcome)

    def on_detach(self, _link: Link) -> None:
        self.model.drop_receiver(self.queue, self)


def _dead_letter_details(fields: list[Any]) -> tuple[str | None, str | None]:
    error = fields[0] if fields else None
    if not isinstance(error, Described):
        return None, None
    values = [*list(error.value or []), None, None, None]
    info = values[2] or {}
    reason = next((v for k, v in info.items() if str(k) == "DeadLetterReason"), None)
    description = next((v for k, v in info.items() if str(k) == "DeadLetterErrorDescription"), None)
    return (str(reason) if reason is not None else None,
            str(description) if description is not None else None)  # fmt: skip


async def attach(
    model: ServiceBusModel, link: Link, path: str, faults: Faults
) -> SenderHandler | ReceiverHandler | None:
    """The handler for a queue link at `path`, or None when `path` names no queue."""
    parts = path.split("/")
    if parts[0].lower() not in model.queues:
        return None
    queue = model.queue(parts[0])
    rest = "/".join(parts[1:]).lower()
    if rest not in ("", "$deadletterqueue"):
        raise LinkRefused("amqp:not-found", f"The messaging entity '{path}' could not be found.")
    if not link.sends:
        if rest:
            raise LinkRefused("amqp:not-allowed", "Cannot send to a dead-letter queue.")
        link.max_message_size = MAX_MESSAGE_SIZE
        return SenderHandler(model, queue, faults)
    handler = ReceiverHandler(model, queue, link, dead=bool(rest), faults=faults)
    await handler.accept()
    return handler


def _receiver_of(link: Link, request: amqp_message.Message) -> ReceiverHandler | None:
    """The receive link a management request speaks for (`associated-link-name`)."""
    app = request.application_properties or {}
    name = app.get("associated-link-name")
    candidates = [
        other.handler
        for session in link.connection.sessions.values()
        for other in session.links.values()
        if isinstance(other.handler, ReceiverHandler) and (name is None or other.name == str(name))
    ]
    return candidates[-1] if candidates else None


@dataclass(frozen=True)
class Request:
    """One management request, with what its operation may need."""

    model: ServiceBusModel
    queue: Queue
    receiver: ReceiverHandler | None
    body: dict[str, Any]
    dead: bool  # addressed to the dead-letter queue
    faults: Faults
    link: Link

    def text(self, key: str) -> str | None:
        value = self.body.get(key)
        return str(value) if value is not None else None


def management(model: ServiceBusModel, queue_path: str, faults: Faults) -> Operation:
    """The `<queue>/$management` operations the SDK sends (constants.py REQUEST_RESPONSE_*)."""

    def operate(link: Link, request: amqp_message.Message) -> Reply:
        app = request.application_properties or {}
        operation = str(app.get("operation"))
        body = request.body_value or {}
        body = {str(k): v for k, v in body.items()} if isinstance(body, dict) else {}
        name = entity_path(queue_path).split("/")[0]
        dead = entity_path(queue_path).lower().endswith("/$deadletterqueue")
        handler = _OPERATIONS.get(operation)
        if handler is None:
            raise ManagementError(
                400, "amqp:not-implemented", f"operation {operation!r} is not supported"
            )
        try:
            queue = model.queue(name)
            return handler(
                Request(model, queue, _receiver_of(link, request), body, dead, faults, link)
            )
        except ServiceBusFault as fault:
            raise ManagementError(fault.status, fault.condition, fault.description) from None

    return operate


def _tokens(body: dict[str, Any]) -> list[uuid.UUID]:
    return [
        t if isinstance(t, uuid.UUID) else uuid.UUID(bytes=bytes(t))
        for t in body.get("lock-tokens") or []
    ]


def _renew_lock(r: Request) -> Reply:
    expirations = [Timestamp(r.model.renew_message_lock(r.queue, t)) for t in _tokens(r.body)]
    return Reply(200, "OK", {"expirations": Array(expirations)})


def _renew_session_lock(r: Request) -> Reply:
    until = r.model.renew_session_lock(r.queue, str(r.text("session-id")))
    return Reply(200, "OK", {"expiration": Timestamp(until)})


def _get_state(r: Request) -> Reply:
    state = r.model.get_session_state(r.queue, str(r.text("session-id")))
    return Reply(200, "OK", {"session-state": state})


def _set_state(r: Request) -> Reply:
    state = r.body.get("session-state")
    r.model.set_session_state(
        r.queue, str(r.text("session-id")), bytes(state) if state is not None else None
    )
    return Reply(200, "OK", None)


def _receive_deferred(r: Request) -> Reply:
    if r.receiver is None:
        raise ManagementError(
            400, "com.microsoft:argument-error", "no receive link for this request"
        )
    seqs = [int(s) for s in r.body.get("sequence-numbers") or []]
    found = r.model.receive_deferred(r.queue, r.receiver, seqs, r.text("session-id"))
    messages = [{"message": delivered_form(m), "lock-token": m.lock_token} for m in found]
    if int(r.body.get("receiver-settle-mode") or 0) == 0:  # 0 = first: receive-and-delete
        for m in found:
            if m.lock_token is not None:
                r.model.complete(r.queue, m.lock_token)
    return Reply(200, "OK", {"messages": messages})


def _peek(r: Request) -> Reply:
    found = r.model.peek(
        r.queue, int(r.body.get("from-sequence-number") or 0),
        int(r.body.get("message-count") or 1), dead=r.dead, session_id=r.text("session-id"),
    )  # fmt: skip
    if not found:
        return Reply(204, "No Content", None)
    return Reply(200, "OK", {"messages": [{"message": delivered_form(m)} for m in found]})


def _update_disposition(r: Request) -> Reply:
    refusal = r.faults.refusal("settle")
    if refusal is not None:
        raise ManagementError(503, *refusal)
    status = r.text("disposition-status")
    for token in _tokens(r.body):
        if status == "completed":
            r.model.complete(r.queue, token)
        elif status == "abandoned":
            r.model.abandon(r.queue, token)
        elif status == "defered":  # sic: the SDK's spelling (constants.py SETTLEMENT_DEFER)
            r.model.defer(r.queue, token)
        elif status == "suspended":
            r.model.dead_letter(
                r.queue, token, r.text("deadletter-reason"), r.text("deadletter-description")
            )
        else:
            raise ManagementError(
                400, "com.microsoft:argument-error", f"unknown disposition {status!r}"
            )
    if r.faults.drop_after("settle", r.link):
        return Reply(-1)
    return Reply(200, "OK", None)


def _schedule(r: Request) -> Reply:
    items = []
    for entry in r.body.get("messages") or []:
        fields = {str(k): v for k, v in entry.items()}
        raw = bytes(fields["message"])
        items.append(_item(raw, amqp_message.parse(raw)))
    seqs = r.model.send(r.queue, items)
    return Reply(200, "OK", {"sequence-numbers": Array([int(s) for s in seqs])})


def _cancel(r: Request) -> Reply:
    r.model.cancel_scheduled(r.queue, [int(s) for s in r.body.get("sequence-numbers") or []])
    return Reply(200, "OK", None)


def _sessions(r: Request) -> Reply:
    ids = sorted({m.session_id for m in r.queue.messages.values() if m.session_id and not m.dead})
    if not ids:
        return Reply(204, "No Content", None)
    return Reply(200, "OK", {"skip": 0, "sessions-ids": Array(ids)})


_OPERATIONS: dict[str, Callable[[Request], Reply]] = {
    "com.microsoft:renew-lock": _renew_lock,
    "com.microsoft:renew-session-lock": _renew_session_lock,
    "com.microsoft:get-session-state": _get_state,
    "com.microsoft:set-session-state": _set_state,
    "com.microsoft:receive-by-sequence-number": _receive_deferred,
    "com.microsoft:peek-message": _peek,
    "com.microsoft:update-disposition": _update_disposition,
    "com.microsoft:schedule-message": _schedule,
    "com.microsoft:cancel-scheduled-message": _cancel,
    "com.microsoft:get-message-sessions": _sessions,
}
