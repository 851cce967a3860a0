"""Service Bus rules without the wire: a fake clock, timers run by hand."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from eventflow_emulators.messaging.config import QueueConfig
from eventflow_emulators.messaging.servicebus.model import (
    ArgumentError,
    MessageLockLost,
    MessageNotFound,
    Queue,
    ServiceBusModel,
    SessionCannotBeLocked,
    SessionLockLost,
)
from eventflow_emulators.messaging.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


class Receiver:
    def wake(self) -> None:
        pass


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path)
    yield store
    store.close()


def make(store: Store, clock: Clock, **config: object) -> tuple[ServiceBusModel, Queue]:
    options: dict[str, object] = {
        "name": "q", "max_delivery_count": 3, "lock_duration": timedelta(seconds=5),
        "requires_duplicate_detection": True,
    }  # fmt: skip
    options.update(config)
    model = ServiceBusModel([QueueConfig(**options)], store, clock)  # type: ignore[arg-type]
    return model, model.queue("q")


def send(model: ServiceBusModel, queue: Queue, *ids: str, session: str | None = None) -> list[int]:
    return model.send(queue, [(b"\x00Sw\xa1\x01x", session, i, None, None) for i in ids])


def test_a_duplicate_message_id_is_dropped_within_the_window(store: Store, clock: Clock) -> None:
    model, queue = make(store, clock, duplicate_detection_window=timedelta(seconds=60))
    assert send(model, queue, "a", "a", "b") == [1, 0, 2]
    clock.now += 61_000
    assert send(model, queue, "a") == [3]


def test_an_expired_lock_counts_a_delivery_and_max_dead_letters(store: Store, clock: Clock) -> None:
    model, queue = make(store, clock)
    send(model, queue, "m")
    receiver = Receiver()
    for attempt in range(3):
        (m,) = model.take(queue, receiver, 1, dead=False, session_id=None, lock=True)
        assert m.delivery_count == attempt
        clock.now += 5_001
        model.tick()
    assert model.take(queue, receiver, 1, dead=False, session_id=None, lock=True) == []
    (dead,) = model.take(queue, receiver, 1, dead=True, session_id=None, lock=True)
    assert dead.dl_reason == "MaxDeliveryCountExceeded"


def test_a_release_does_not_count_a_delivery(store: Store, clock: Clock) -> None:
    model, queue = make(store, clock)
    send(model, queue, "m")
    receiver = Receiver()
    (m,) = model.take(queue, receiver, 1, dead=False, session_id=None, lock=True)
    assert m.lock_token is not None
    model.release(queue, m.lock_token)
    (again,) = model.take(queue, receiver, 1, dead=False, session_id=None, lock=True)
    assert again.delivery_count == 0


def test_settling_after_the_lock_expired_is_refused(store: Store, clock: Clock) -> None:
    model, queue = make(store, clock)
    send(model, queue, "m")
    (m,) = model.take(queue, Receiver(), 1, dead=False, session_id=None, lock=True)
    assert m.lock_token is not None
    clock.now += 5_001
    with pytest.raises(MessageLockLost):
        model.complete(queue, m.lock_token)


def test_deferred_messages_come_back_only_by_sequence_number(store: Store, clock: Clock) -> None:
    model, queue = make(store, clock)
    (seq,) = send(model, queue, "m")
    receiver = Receiver()
    (m,) = model.take(queue, receiver, 1, dead=False, session_id=None, lock=True)
    assert m.lock_token is not None
    model.defer(queue, m.lock_token)
    assert model.take(queue, receiver, 1, dead=False, session_id=None, lock=True) == []
    (deferred,) = model.receive_deferred(queue, receiver, [seq], None)
    assert deferred.lock_token is not None
    model.complete(queue, deferred.lock_token)
    assert queue.messages == {}


def test_sessions_lock_one_receiver_and_expire(store: Store, clock: Clock) -> None:
    model, queue = make(store, clock, requires_session=True)
    send(model, queue, "m1", session="s1")
    first, second = Receiver(), Receiver()
    assert model.accept_session(queue, first, None) == "s1"
    with pytest.raises(SessionCannotBeLocked):
        model.accept_session(queue, second, "s1")
    assert model.accept_session(queue, second, None) is None  # nothing else available
    (m,) = model.take(queue, first, 1, dead=False, session_id="s1", lock=True)
    clock.now += 5_001
    assert m.lock_token is not None
    with pytest.raises(SessionLockLost):
        model.complete(queue, m.lock_token, first)
    assert model.accept_session(queue, second, "s1") == "s1"
    (again,) = model.take(queue, second, 1, dead=False, session_id="s1", lock=True)
    assert again.delivery_count == 1


def test_session_state_is_limited_to_256_kb(store: Store, clock: Clock) -> None:
    model, queue = make(store, clock, requires_session=True)
    send(model, queue, "m1", session="s1")
    model.accept_session(queue, Receiver(), "s1")
    model.set_session_state(queue, "s1", b"x" * 1024)
    assert model.get_session_state(queue, "s1") == b"x" * 1024
    with pytest.raises(ArgumentError):
        model.set_session_state(queue, "s1", b"x" * (256 * 1024 + 1))


def test_a_session_queue_refuses_a_message_without_a_session(store: Store, clock: Clock) -> None:
    model, queue = make(store, clock, requires_session=True)
    with pytest.raises(ArgumentError):
        send(model, queue, "m")


def test_messages_survive_a_restart(store: Store, clock: Clock, tmp_path: Path) -> None:
    model, queue = make(store, clock)
    send(model, queue, "a", "b")
    store.close()
    reopened = Store(tmp_path)
    model, queue = make(reopened, clock)
    assert [m.message_id for m in queue.messages.values()] == ["a", "b"]
    assert send(model, queue, "a") == [0]  # the duplicate window survives too
    assert send(model, queue, "c") == [3]
    reopened.close()


def test_an_expired_deferred_message_stays_deferred_until_it_is_received(
    store: Store, clock: Clock
) -> None:
    # message-deferral: expired deferred messages move to the DLQ only when received.
    model, queue = make(store, clock, dead_lettering_on_expiration=True)
    (seq,) = model.send(queue, [(b"\x00Sw\xa1\x01x", None, "m", 1_000, None)])
    receiver = Receiver()
    (m,) = model.take(queue, receiver, 1, dead=False, session_id=None, lock=True)
    assert m.lock_token is not None
    model.defer(queue, m.lock_token, receiver)
    clock.now += 2_000
    model.housekeeping()
    assert [p.seq for p in model.peek(queue, 0, 10, dead=False, session_id=None)] == [seq]
    with pytest.raises(MessageNotFound):
        model.receive_deferred(queue, receiver, [seq], None)
    (dead,) = model.peek(queue, 0, 10, dead=True, session_id=None)
    assert (dead.seq, dead.dl_reason, dead.state) == (seq, "TTLExpiredException", "active")


@pytest.mark.parametrize("dead_lettering_on_expiration", [False, True])
def test_a_message_deferred_in_the_dead_letter_queue_never_expires(
    store: Store, clock: Clock, dead_lettering_on_expiration: bool
) -> None:
    # "Overview of Service Bus dead-letter queues": time to live isn't observed there.
    model, queue = make(store, clock, dead_lettering_on_expiration=dead_lettering_on_expiration)
    (seq,) = model.send(queue, [(b"\x00Sw\xa1\x01x", None, "m", 10_000, None)])
    receiver = Receiver()
    (m,) = model.take(queue, receiver, 1, dead=False, session_id=None, lock=True)
    assert m.lock_token is not None
    model.dead_letter(queue, m.lock_token, "bad", "poison", receiver)
    (d,) = model.take(queue, receiver, 1, dead=True, session_id=None, lock=True)
    assert d.lock_token is not None
    model.defer(queue, d.lock_token, receiver)
    clock.now += 20_000
    model.housekeeping()
    (received,) = model.receive_deferred(queue, receiver, [seq], None)
    assert (received.seq, received.dl_reason) == (seq, "bad")
    (still,) = model.peek(queue, 0, 10, dead=True, session_id=None)
    assert (still.seq, still.dl_reason) == (seq, "bad")


def test_a_closed_plain_receiver_keeps_its_locks_until_they_expire(
    store: Store, clock: Clock
) -> None:
    model, queue = make(store, clock)
    send(model, queue, "a")
    first = Receiver()
    (m,) = model.take(queue, first, 1, dead=False, session_id=None, lock=True)
    model.drop_receiver(queue, first)
    assert model.take(queue, Receiver(), 1, dead=False, session_id=None, lock=True) == []
    clock.now += 5_000
    (again,) = model.take(queue, Receiver(), 1, dead=False, session_id=None, lock=True)
    assert (again.seq, again.delivery_count) == (m.seq, 1)
