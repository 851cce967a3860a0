"""One AMQP 1.0 connection, server side: SASL, open, sessions, links, credit, transfers.

The wire only: what a link means (a hub partition, a queue, `$cbs`) is the `Broker`'s business.
Flow control follows the spec (part 2.6.7 link credit, 2.5.6 session windows); deliveries the
broker sends are split to the peer's max-frame-size; multi-frame incoming transfers are joined.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .codec import Array, DecodeError, Described, Symbol, UByte, UInt, ULong, UShort
from .frames import (
    AMQP_HEADER,
    ATTACH,
    BEGIN,
    CLOSE,
    DETACH,
    DISPOSITION,
    EMPTY_FRAME,
    END,
    FLOW,
    FRAME_SASL,
    OPEN,
    REJECTED,
    SASL_HEADER,
    SASL_INIT,
    SASL_MECHANISMS,
    SASL_OUTCOME,
    SOURCE,
    TARGET,
    TRANSFER,
    Frame,
    build_frame,
    error_fields,
    padded,
    parse_frame,
)

log = logging.getLogger("eventflow_emulators.messaging.amqp")

MAX_FRAME_SIZE = 256 * 1024
# The largest message any entity takes (Event Hubs Standard, 1 MB): the bound for a transfer on a
# link that declares no max-message-size of its own (request/response nodes).
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
# A connection must complete its handshake, and a frame it has begun, within this many seconds.
FRAME_TIMEOUT_S = 30.0
SESSION_WINDOW = 2**31 - 1  # never the limit: credit is what paces a link
SASL_MECHANISM_NAMES = ("ANONYMOUS", "MSSBCBS", "PLAIN", "EXTERNAL")


class LinkRefused(Exception):
    """Raised by `Broker.attach`: the link is attached and at once detached with this error."""

    def __init__(self, condition: str, description: str) -> None:
        super().__init__(f"{condition}: {description}")
        self.condition = condition
        self.description = description


@dataclass(slots=True)
class Delivery:
    delivery_id: int
    tag: bytes
    message_format: int
    payload: bytes
    settled: bool


class LinkHandler(Protocol):
    def on_transfer(self, link: Link, delivery: Delivery, /) -> None:
        """A whole message arrived on a link the client sends on; settle it with `link.settle`."""

    def on_flow(self, link: Link, /) -> None:
        """Credit arrived on a link the broker sends on."""

    def on_disposition(
        self, link: Link, delivery_id: int, tag: bytes, state: Any, settled: bool, /
    ) -> None:
        """The client settled (or changed the state of) a delivery the broker sent."""

    def on_detach(self, link: Link, /) -> None:
        """The link is gone: detached by either side or the connection closed."""


class BaseLinkHandler:
    """A handler that ignores everything: handlers override what their link direction needs."""

    def on_transfer(self, link: Link, delivery: Delivery, /) -> None:
        pass

    def on_flow(self, link: Link, /) -> None:
        pass

    def on_disposition(
        self, link: Link, delivery_id: int, tag: bytes, state: Any, settled: bool, /
    ) -> None:
        pass

    def on_detach(self, link: Link, /) -> None:
        pass


class Broker(Protocol):
    async def attach(self, link: Link) -> LinkHandler: ...

    def stall_remaining(self) -> float:
        """Seconds a new connection must wait before it is answered (a stall in progress)."""
        ...

    def connection_lost(self, connection: Connection) -> None: ...


@dataclass(eq=False)
class Link:
    session: Session
    name: str
    handle: int
    remote_handle: int
    sends: bool  # True when the broker is the sender
    source: list[Any]
    target: list[Any]
    properties: dict[Any, Any]
    snd_settle_mode: int
    rcv_settle_mode: int
    remote_max_message_size: int | None
    desired_capabilities: Any = None
    credit: int = 0
    delivery_count: int = 0
    handler: LinkHandler | None = None
    attached: bool = False
    detached: bool = False
    reply_properties: dict[Any, Any] = field(default_factory=dict)
    max_message_size: int | None = None
    unsettled: dict[int, bytes] = field(default_factory=dict)  # delivery id -> tag, sent by us
    # Asked each time the client uses the link: None to go on, or the (condition, description)
    # the link is detached with (a token that expired since the attach).
    permit: Callable[[], tuple[str, str] | None] | None = None
    _partial: bytearray | None = None
    _partial_head: list[Any] | None = None
    _refusing: bool = False  # dropping the remaining frames of a refused delivery

    @property
    def connection(self) -> Connection:
        return self.session.connection

    @property
    def source_address(self) -> str:
        return str(self.source[0]) if self.source and self.source[0] is not None else ""

    @property
    def target_address(self) -> str:
        return str(self.target[0]) if self.target and self.target[0] is not None else ""

    @property
    def address(self) -> str:
        """The node the broker serves on this link: the source when sending, else the target."""
        return self.source_address if self.sends else self.target_address

    @property
    def source_filters(self) -> dict[Any, Any]:
        return dict(self.source[7] or {}) if self.source else {}

    def can_send(self) -> bool:
        return (
            self.attached
            and not self.detached
            and self.credit > 0
            and self.session.remote_incoming_window > 0
            and not self.connection.closed
        )

    def send(self, payload: bytes, tag: bytes, *, settled: bool, message_format: int = 0) -> int:
        """Send one delivery (consumes one credit); returns its delivery id."""
        self.credit -= 1
        self.delivery_count += 1
        return self.session.send_transfer(self, payload, tag, settled, message_format)

    def settle(self, delivery_id: int, state: Any, *, settled: bool = True) -> None:
        """Answer a delivery the client sent (or confirm a settlement it asked for)."""
        self.connection.write(
            build_frame(
                DISPOSITION,
                [not self.sends, UInt(delivery_id), None, settled, state],
                channel=self.session.channel,
            )
        )

    def permitted(self) -> bool:
        """False (and the link detached with the reason) when the broker no longer allows it."""
        refusal = self.permit() if self.permit is not None else None
        if refusal is None:
            return True
        self.detach(*refusal)
        return False

    def grant(self, credit: int) -> None:
        """Give the client credit to send on this link."""
        self.credit = credit
        self.session.send_flow(self)

    def detach(self, condition: str | None = None, description: str | None = None) -> None:
        """Detach from the broker's side, with an error when `condition` is given."""
        if self.detached:
            return
        error = error_fields(condition, description) if condition else None
        self.connection.write(
            build_frame(DETACH, [UInt(self.handle), True, error], channel=self.session.channel)
        )
        self.session.forget(self)


@dataclass(eq=False)
class Session:
    connection: Connection
    channel: int
    remote_channel: int
    remote_incoming_window: int
    next_outgoing_id: int = 0
    next_incoming_id: int = 0
    links: dict[int, Link] = field(default_factory=dict)  # by the client's handle
    by_handle: dict[int, Link] = field(default_factory=dict)  # by ours
    outgoing: dict[int, Link] = field(default_factory=dict)  # unsettled delivery id -> link
    next_delivery_id: int = 0
    ended: bool = False

    def send_transfer(
        self, link: Link, payload: bytes, tag: bytes, settled: bool, message_format: int
    ) -> int:
        delivery_id = self.next_outgoing_id
        limit = max(512, self.connection.remote_max_frame_size - 64 - len(tag))
        chunks = [payload[i : i + limit] for i in range(0, len(payload), limit)] or [b""]
        write = self.connection.write
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            if index == 0:
                fields: list[Any] = [
                    UInt(link.handle), UInt(delivery_id), tag, UInt(message_format), settled, more,
                ]  # fmt: skip
            else:
                fields = [UInt(link.handle), None, None, None, settled, more]
            write(build_frame(TRANSFER, fields, channel=self.channel, payload=chunk))
            self.next_outgoing_id += 1
            self.remote_incoming_window -= 1
        if not settled:
            link.unsettled[delivery_id] = tag
            self.outgoing[delivery_id] = link
        return delivery_id

    def send_flow(self, link: Link | None = None) -> None:
        fields: list[Any] = [
            UInt(self.next_incoming_id), UInt(SESSION_WINDOW), UInt(self.next_outgoing_id),
            UInt(SESSION_WINDOW),
        ]  # fmt: skip
        if link is not None:
            fields += [UInt(link.handle), UInt(link.delivery_count), UInt(link.credit)]
        self.connection.write(build_frame(FLOW, fields, channel=self.channel))

    def forget(self, link: Link) -> None:
        if link.detached:
            return
        link.detached = True
        self.links.pop(link.remote_handle, None)
        self.by_handle.pop(link.handle, None)
        for delivery_id in list(link.unsettled):
            self.outgoing.pop(delivery_id, None)
        if link.handler is not None:
            try:
                link.handler.on_detach(link)
            except Exception:
                log.exception("detach handler failed")

    def close_all(self) -> None:
        self.ended = True
        for link in list(self.links.values()):
            self.forget(link)


class Connection(asyncio.Protocol):
    """The state machine: protocol headers, SASL, then AMQP frames until close."""

    def __init__(
        self,
        broker: Broker,
        *,
        on_close: Callable[[Connection], None],
        frame_timeout: float = FRAME_TIMEOUT_S,
    ) -> None:
        self.broker = broker
        self.frame_timeout = frame_timeout
        self._frames = 0  # headers and frames taken so far: progress for the frame timeout
        self._frame_timer: asyncio.TimerHandle | None = None
        self._closed_callback = on_close
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.expect_header = True
        self.sasl_done = False
        self.opened = False
        self.closed = False
        self.remote_max_frame_size = 512
        self.sessions: dict[int, Session] = {}  # by the client's channel
        self.grants: list[Any] = []  # the broker's record of the tokens put on $cbs
        self.hostname: str | None = None  # the namespace the client opened the connection to
        self.stalled_until = 0.0
        self._held: list[bytes] | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.peer = ""

    # --- transport -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        remaining = self.broker.stall_remaining()
        if remaining > 0:
            self.stall(remaining)
        self._arm_frame_timer()

    def _arm_frame_timer(self) -> None:
        """Close the connection if, `frame_timeout` from now, it has made no progress and is
        still mid-handshake or mid-frame (a peer that opens a socket, or starts a frame, and
        never finishes it holds memory for nothing: AMQP 1.0 part 2.4.5, idle time-out)."""
        if self._frame_timer is not None or self.closed:
            return
        mark = self._frames

        def check() -> None:
            self._frame_timer = None
            if self.closed or self._held is not None:
                return
            stuck = not self.opened or bool(self.buffer)
            if stuck and self._frames == mark:
                self.close(
                    "amqp:resource-limit-exceeded",
                    f"local-idle-timeout expired: no complete frame in {self.frame_timeout} s",
                )
            elif stuck:
                self._arm_frame_timer()

        self._frame_timer = asyncio.get_running_loop().call_later(self.frame_timeout, check)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("connection %s lost: %r", self.peer, exc)
        self._teardown()

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        if self._held is not None:
            self._held.append(data)
            return
        self.transport.write(data)

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (a network failure, as the client sees it)."""
        if self.transport is not None:
            self.transport.abort()
        self._teardown()

    def stall(self, seconds: float) -> None:
        """Stop reading and hold every outgoing frame for `seconds`, then carry on."""
        if self.transport is None or self.closed:
            return
        self.transport.pause_reading()
        self._held = self._held if self._held is not None else []
        asyncio.get_running_loop().call_later(seconds, self._resume)

    def _resume(self) -> None:
        held, self._held = self._held or [], None
        if self.transport is None or self.closed:
            return
        for data in held:
            self.transport.write(data)
        self.transport.resume_reading()
        self._drain()

    def _teardown(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._frame_timer is not None:
            self._frame_timer.cancel()
        for session in list(self.sessions.values()):
            session.close_all()
        self.sessions.clear()
        for task in self._tasks:
            task.cancel()
        try:
            self.broker.connection_lost(self)
        finally:
            self._closed_callback(self)

    def close(self, condition: str | None = None, description: str | None = None) -> None:
        error = error_fields(condition, description) if condition else None
        self.write(build_frame(CLOSE, [error]))
        if self.transport is not None:
            self.transport.close()
        self._teardown()

    # --- input -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self._held is None:
            self._drain()
        if self.buffer or not self.opened:
            self._arm_frame_timer()

    def _drain(self) -> None:
        try:
            while not self.closed and self._held is None:
                if self.expect_header:
                    if len(self.buffer) < 8:
                        return
                    header = bytes(self.buffer[:8])
                    del self.buffer[:8]
                    self._frames += 1
                    self._on_header(header)
                    continue
                if len(self.buffer) < 8:
                    return
                (size,) = struct.unpack_from(">I", self.buffer, 0)
                if size < 8 or size > MAX_FRAME_SIZE:
                    # Refused as the header arrives, before any of the frame is buffered.
                    self.close(
                        "amqp:connection:framing-error",
                        f"a frame of {size} bytes is outside 8..{MAX_FRAME_SIZE} (max-frame-size)",
                    )
                    return
                if len(self.buffer) < size:
                    return
                raw = bytes(self.buffer[:size])
                del self.buffer[:size]
                self._frames += 1
                self._on_frame(parse_frame(raw))
        except DecodeError as error:  # a frame that is not AMQP: the connection cannot go on
            log.warning("connection %s sent a malformed frame: %s", self.peer, error)
            self.close("amqp:decode-error", str(error))
        except Exception as error:  # a peer speaking nonsense gets a close, not a crash
            log.exception("connection %s failed", self.peer)
            self.close("amqp:internal-error", str(error))

    def _on_header(self, header: bytes) -> None:
        if header == SASL_HEADER and not self.sasl_done:
            self.write(SASL_HEADER)
            mechanisms = Array([Symbol(name) for name in SASL_MECHANISM_NAMES])
            self.write(build_frame(SASL_MECHANISMS, [mechanisms], kind=FRAME_SASL))
            self.expect_header = False
        elif header == AMQP_HEADER:
            self.write(AMQP_HEADER)
            self.expect_header = False
        else:
            self.write(AMQP_HEADER)
            raise ValueError(f"unsupported protocol header {header!r}")

    def _on_frame(self, frame: Frame) -> None:
        if frame.kind == FRAME_SASL:
            if frame.code == SASL_INIT:
                # Any mechanism is accepted: authorization is the CBS token, checked per entity
                # (the services do the same with ANONYMOUS + $cbs put-token).
                self.write(build_frame(SASL_OUTCOME, [UByte(0)], kind=FRAME_SASL))
                self.sasl_done = True
                self.expect_header = True
            return
        if frame.code == -1:
            return  # heartbeat
        handler = _FRAME_HANDLERS.get(frame.code)
        if handler is None:
            raise ValueError(f"unexpected performative 0x{frame.code:02x}")
        if frame.code not in (OPEN, BEGIN, CLOSE) and frame.channel not in self.sessions:
            # A late frame for a session already ended (clients detach after end on teardown).
            log.debug("frame 0x%02x on unknown channel %d ignored", frame.code, frame.channel)
            return
        handler(self, frame)

    def _on_open(self, frame: Frame) -> None:
        fields = frame.fields
        self.hostname = str(fields[1]) if fields[1] else None
        self.remote_max_frame_size = min(int(fields[2] or 2**32 - 1), 2**24)
        idle_ms = fields[4]
        self.write(
            build_frame(
                OPEN,
                [
                    "eventflow-messaging-emulator",
                    None,
                    UInt(MAX_FRAME_SIZE),
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    {Symbol("product"): "eventflow-messaging-emulator"},
                ],
            )
        )
        self.opened = True
        if idle_ms:
            self._schedule_heartbeat(idle_ms / 1000 / 2)

    def _schedule_heartbeat(self, every: float) -> None:
        def beat() -> None:
            if self.closed:
                return
            self.write(EMPTY_FRAME)
            self._heartbeat = asyncio.get_running_loop().call_later(every, beat)

        self._heartbeat = asyncio.get_running_loop().call_later(every, beat)

    def _on_close(self, frame: Frame) -> None:
        if frame.fields[0] is not None:
            log.debug("connection %s closed by the client: %r", self.peer, frame.fields[0])
        self.write(build_frame(CLOSE, []))
        if self.transport is not None:
            self.transport.close()
        self._teardown()

    def _on_begin(self, frame: Frame) -> None:
        channel = frame.channel
        session = Session(self, channel, channel, remote_incoming_window=int(frame.fields[2] or 0))
        session.next_incoming_id = int(frame.fields[1] or 0)
        self.sessions[channel] = session
        self.write(
            build_frame(
                BEGIN,
                [
                    UShort(channel),
                    UInt(0),
                    UInt(SESSION_WINDOW),
                    UInt(SESSION_WINDOW),
                    UInt(2**32 - 1),
                ],
                channel=channel,
            )
        )

    def _on_end(self, frame: Frame) -> None:
        session = self.sessions.pop(frame.channel, None)
        if session is not None:
            session.close_all()
            self.write(build_frame(END, [], channel=session.channel))

    def _session(self, frame: Frame) -> Session:
        session = self.sessions.get(frame.channel)
        if session is None:
            raise ValueError(f"no session on channel {frame.channel}")
        return session

    def _on_attach(self, frame: Frame) -> None:
        session = self._session(frame)
        f = frame.fields
        client_is_receiver = bool(f[2])
        source = padded(f[5].value if isinstance(f[5], Described) else None, SOURCE)
        target = padded(f[6].value if isinstance(f[6], Described) else None, TARGET)
        handle = min(set(range(len(session.by_handle) + 1)) - set(session.by_handle))
        link = Link(
            session=session, name=str(f[0]), handle=handle, remote_handle=int(f[1]),
            sends=client_is_receiver, source=source, target=target,
            properties=dict(f[13] or {}), snd_settle_mode=int(f[3] or 0),
            rcv_settle_mode=int(f[4] or 0),
            remote_max_message_size=int(f[10]) if f[10] else None, desired_capabilities=f[12],
        )  # fmt: skip
        if not link.sends:
            link.delivery_count = int(f[9] or 0)
        session.links[link.remote_handle] = link
        session.by_handle[link.handle] = link
        task = asyncio.get_running_loop().create_task(self._attach(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attach(self, link: Link) -> None:
        refused: LinkRefused | None = None
        try:
            link.handler = await self.broker.attach(link)
        except LinkRefused as error:
            refused = error
        if self.closed or link.detached:
            if link.handler is not None:
                link.handler.on_detach(link)
            return
        self._send_attach(link, refused=refused is not None)
        if refused is not None:
            link.handler = None
            link.detach(refused.condition, refused.description)
            return
        link.attached = True
        assert link.handler is not None
        if link.sends:
            if link.credit > 0:
                link.handler.on_flow(link)
        elif link.credit == 0:
            link.grant(1000)

    def _send_attach(self, link: Link, *, refused: bool = False) -> None:
        source: Any = Described(ULong(SOURCE), padded(link.source, SOURCE))
        target: Any = Described(ULong(TARGET), padded(link.target, TARGET))
        if refused:
            # A terminus the broker will not create is null in the reply, then a detach carries
            # the error (AMQP 1.0 part 2.6.3); Service Bus answers a session accept timeout so
            # (azure-sdk-for-python issues #30907 "Invalid link", #28495 com.microsoft:timeout).
            if link.sends:
                source = None
            else:
                target = None
        fields: list[Any] = [
            link.name, UInt(link.handle), not link.sends, _ubyte(link.snd_settle_mode),
            _ubyte(link.rcv_settle_mode), source, target, None, None,
            UInt(0) if link.sends else None,
            ULong(link.max_message_size) if link.max_message_size else None, None, None,
            link.reply_properties or None,
        ]  # fmt: skip
        self.write(build_frame(ATTACH, fields, channel=link.session.channel))

    def _on_flow(self, frame: Frame) -> None:
        session = self._session(frame)
        f = frame.fields
        next_incoming = f[0] if f[0] is not None else 0
        session.remote_incoming_window = (
            int(next_incoming) + int(f[1] or 0) - session.next_outgoing_id
        )
        if f[4] is None:
            for each in list(session.links.values()):
                if each.sends and each.handler is not None and each.can_send():
                    guarded(each, each.handler.on_flow, each)
            return
        found = session.links.get(int(f[4]))
        if found is None or (found.attached and not found.permitted()):
            return
        link = found
        if link.sends:
            # credit = delivery-count(rcv) + link-credit(rcv) - delivery-count(snd) (2.6.7)
            rcv_count = int(f[5]) if f[5] is not None else 0
            link.credit = rcv_count + int(f[6] or 0) - link.delivery_count
            if f[8]:  # drain: use it up now or give it back
                if link.handler is not None and link.attached:
                    guarded(link, link.handler.on_flow, link)
                link.delivery_count += max(link.credit, 0)
                link.credit = 0
                session.send_flow(link)
                return
            if f[9]:
                session.send_flow(link)
            if link.handler is not None and link.attached and link.can_send():
                guarded(link, link.handler.on_flow, link)
        elif f[9]:
            session.send_flow(link)

    def _on_transfer(self, frame: Frame) -> None:
        session = self._session(frame)
        session.next_incoming_id += 1
        f = frame.fields
        link = session.links.get(int(f[0]))
        if link is None or link.sends:
            raise ValueError("transfer on an unknown link")
        if link._refusing:  # the rest of a delivery already refused for its size: dropped
            link._refusing = bool(f[5]) and not f[9]
            return
        if link._partial is None:
            link._partial_head = f
            link._partial = bytearray(frame.payload)
        else:
            link._partial += frame.payload
        if f[9]:  # aborted
            link._partial = link._partial_head = None
            return
        limit = link.max_message_size or DEFAULT_MAX_MESSAGE_SIZE
        if len(link._partial) > limit:
            self._refuse_oversized(link, limit, more=bool(f[5]))
            return
        if f[5]:  # more frames follow
            return
        head, payload = link._partial_head, bytes(link._partial)
        link._partial = link._partial_head = None
        assert head is not None
        link.delivery_count += 1
        link.credit -= 1
        if link.credit < 500:
            link.grant(1000)
        delivery = Delivery(
            delivery_id=int(head[1]) if head[1] is not None else -1,
            tag=bytes(head[2] or b""),
            message_format=int(head[3] or 0),
            payload=payload,
            settled=bool(head[4]),
        )
        if link.handler is None or not link.permitted():
            return  # attach pending or refused, or no longer allowed: nothing to take
        try:
            link.handler.on_transfer(link, delivery)
        except Exception as error:  # that one delivery fails, never the connection
            log.exception("transfer on %s failed", link.address)
            condition = (
                "amqp:decode-error" if isinstance(error, ValueError) else "amqp:internal-error"
            )
            if not delivery.settled:
                link.settle(delivery.delivery_id, _rejected(condition, str(error)))

    def _refuse_oversized(self, link: Link, limit: int, *, more: bool) -> None:
        """Reject a delivery as soon as it passes the link's max-message-size, and drop its
        remaining frames unbuffered (the services answer amqp:link:message-size-exceeded)."""
        head = link._partial_head or []
        size = len(link._partial or b"")
        link._partial = link._partial_head = None
        link._refusing = more
        link.delivery_count += 1
        link.credit -= 1
        if link.credit < 500:
            link.grant(1000)
        if head and head[1] is not None and not head[4]:
            link.settle(int(head[1]), _rejected(
                "amqp:link:message-size-exceeded",
                f"The message (at least {size} bytes so far) exceeds the limit ({limit} bytes).",
            ))  # fmt: skip

    def _on_disposition(self, frame: Frame) -> None:
        session = self._session(frame)
        f = frame.fields
        first = int(f[1])
        last = int(f[2]) if f[2] is not None else first
        settled = bool(f[3])
        state = f[4]
        for delivery_id in range(first, last + 1) if last - first < 10000 else ():
            link = session.outgoing.get(delivery_id)
            if link is None:
                continue
            tag = link.unsettled.get(delivery_id, b"")
            if settled:
                session.outgoing.pop(delivery_id, None)
                link.unsettled.pop(delivery_id, None)
            if link.handler is not None and link.permitted():
                guarded(link, link.handler.on_disposition, link, delivery_id, tag, state, settled)

    def _on_detach(self, frame: Frame) -> None:
        session = self._session(frame)
        link = session.links.get(int(frame.fields[0]))
        if link is None:
            return
        self.write(build_frame(DETACH, [UInt(link.handle), True], channel=session.channel))
        session.forget(link)


def _rejected(condition: str, description: str) -> Described:
    return Described(ULong(REJECTED), [error_fields(condition, description)])


def guarded(link: Link, call: Callable[..., None], *args: Any) -> None:
    """Run a link handler's callback; a failure detaches that link with the error, and the
    connection and its other links carry on."""
    try:
        call(*args)
    except Exception as error:
        log.exception("link %s failed", link.address)
        condition = "amqp:decode-error" if isinstance(error, ValueError) else "amqp:internal-error"
        link.detach(condition, str(error))


def _ubyte(value: int) -> Any:
    return UByte(value)


_FRAME_HANDLERS: dict[int, Callable[[Connection, Frame], None]] = {
    OPEN: Connection._on_open,
    BEGIN: Connection._on_begin,
    ATTACH: Connection._on_attach,
    FLOW: Connection._on_flow,
    TRANSFER: Connection._on_transfer,
    DISPOSITION: Connection._on_disposition,
    DETACH: Connection._on_detach,
    END: Connection._on_end,
    CLOSE: Connection._on_close,
}
