"""Limits a hostile or broken peer meets as its frames arrive: a frame over max-frame-size, a
transfer past the link's max-message-size, a connection that never finishes a frame.

No SDK sends such frames (they size frames by the peer's max-frame-size and refuse oversized
messages themselves), so these cases speak raw AMQP 1.0 through a socket, with the emulator's own
frame builder; the emulator runs as a process, as in production. Sources: OASIS AMQP 1.0 part 2.4.5
(idle time-out; max-frame-size: a larger frame is a framing error), 2.7.3 (max-message-size),
and "Service Bus quotas" / "Event Hubs quotas" (the message sizes).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventflow_emulators.messaging.amqp.codec import Described, UInt, ULong
from eventflow_emulators.messaging.amqp.frames import (
    AMQP_HEADER,
    ATTACH,
    BEGIN,
    CLOSE,
    DISPOSITION,
    FLOW,
    OPEN,
    REJECTED,
    TARGET,
    TRANSFER,
    Frame,
    build_frame,
    descriptor_code,
    parse_frame,
)
from eventflow_emulators.messaging.testing import RunningMessagingEmulator, messaging_emulator

FRAME_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMessagingEmulator]:
    data = tmp_path_factory.mktemp("wire-limits")
    with messaging_emulator(Path(data), frame_timeout=FRAME_TIMEOUT_S) as running:
        yield running


class Peer:
    """A bare AMQP peer: writes frames, reads the emulator's frames until a deadline."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frames_until(self, want: int, wait: float = 5.0) -> list[Frame]:
        """Frames read until one with performative `want` arrives (or the socket closes)."""
        seen: list[Frame] = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            while len(self.buffer) >= 8:
                (size,) = struct.unpack_from(">I", self.buffer)
                if len(self.buffer) < size:
                    break
                frame = parse_frame(self.buffer[:size])
                self.buffer = self.buffer[size:]
                seen.append(frame)
                if frame.code == want:
                    return seen
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            self.buffer += data
        raise AssertionError(f"no frame 0x{want:02x} within {wait}s; got {[f.code for f in seen]}")

    def handshake(self) -> None:
        self.send(AMQP_HEADER)
        header = self._read_exactly(8)
        assert header == AMQP_HEADER
        self.send(build_frame(OPEN, ["peer", "127.0.0.1", UInt(64 * 1024)]))
        self.frames_until(OPEN)

    def _read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = self.sock.recv(65536)
            assert data, "closed during the handshake"
            self.buffer += data
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def closed_by_peer(self, wait: float = 5.0) -> bool:
        self.sock.settimeout(wait)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except ConnectionResetError:  # closed with our unread bytes still in its buffer
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def condition_of(close: Frame) -> str:
    error: Any = close.fields[0]
    assert isinstance(error, Described)
    return str(error.value[0])


def test_a_frame_over_max_frame_size_closes_at_its_header(
    emulator: RunningMessagingEmulator,
) -> None:
    peer = Peer(emulator.port)
    try:
        peer.handshake()
        # A header declaring 2 GiB, then a little of it: refused before the rest is awaited.
        peer.send(struct.pack(">IBBH", 2**31, 2, 0, 0) + b"\x00" * 65536)
        close = peer.frames_until(CLOSE)[-1]
        assert condition_of(close) == "amqp:connection:framing-error"
        assert peer.closed_by_peer()
    finally:
        peer.close()


def test_a_transfer_is_refused_as_it_passes_the_message_size(
    emulator: RunningMessagingEmulator,
) -> None:
    # The $cbs node takes no message over 1 MB (the largest any entity takes); no token needed.
    peer = Peer(emulator.port)
    try:
        peer.handshake()
        peer.send(build_frame(BEGIN, [None, UInt(0), UInt(2**20), UInt(2**20)], channel=0))
        peer.frames_until(BEGIN)
        target = Described(ULong(TARGET), ["$cbs"])
        peer.send(build_frame(ATTACH, ["cbs-writer", UInt(0), False, None, None, None, target]))
        peer.frames_until(FLOW)  # attached, credit given
        chunk = b"x" * (200 * 1024)
        head = [UInt(0), UInt(0), b"tag", UInt(0), False, True]
        peer.send(build_frame(TRANSFER, head, payload=chunk))
        for _ in range(5):  # 1.2 MB so far, of a 20 MB message that has not ended
            peer.send(
                build_frame(TRANSFER, [UInt(0), None, None, None, False, True], payload=chunk)
            )
        disposition = peer.frames_until(DISPOSITION)[-1]
        state = disposition.fields[4]
        assert isinstance(state, Described)
        assert descriptor_code(state.descriptor) == REJECTED
        assert str(state.value[0].value[0]) == "amqp:link:message-size-exceeded"
        # The rest is dropped as it comes; the connection carries on.
        for more in [True] * 93 + [False]:
            peer.send(
                build_frame(TRANSFER, [UInt(0), None, None, None, False, more], payload=chunk)
            )
        peer.send(build_frame(CLOSE, []))
        peer.frames_until(CLOSE)
    finally:
        peer.close()


def test_a_connection_that_never_finishes_a_frame_times_out(
    emulator: RunningMessagingEmulator,
) -> None:
    peer = Peer(emulator.port)
    try:
        peer.handshake()
        peer.send(struct.pack(">IBBH", 100, 2, 0, 0) + b"\x00\x53")  # 10 of 100 bytes, then nothing
        started = time.monotonic()
        close = peer.frames_until(CLOSE, wait=FRAME_TIMEOUT_S + 5)[-1]
        assert condition_of(close) == "amqp:resource-limit-exceeded"
        assert time.monotonic() - started < FRAME_TIMEOUT_S + 5
    finally:
        peer.close()


def test_a_connection_that_never_opens_times_out(emulator: RunningMessagingEmulator) -> None:
    peer = Peer(emulator.port)
    try:
        peer.send(b"AMQ")  # not even a whole protocol header
        assert peer.closed_by_peer(wait=FRAME_TIMEOUT_S + 5)
    finally:
        peer.close()


def test_an_idle_open_connection_is_not_closed(emulator: RunningMessagingEmulator) -> None:
    # A peer between frames (a consumer waiting for messages) is not the frame timeout's business.
    peer = Peer(emulator.port)
    try:
        peer.handshake()
        assert not peer.closed_by_peer(wait=FRAME_TIMEOUT_S * 2.5)
    finally:
        peer.close()
