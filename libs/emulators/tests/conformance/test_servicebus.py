"""Service Bus queues, sessions and settlement through the real azure-servicebus SDK: one set of
cases, every backend.

Backends: this repository's messaging emulator (always; queues conformance-sessions and
conformance-plain of emulators/servicebus.json, lock duration 5 s), and the Service Bus emulator
or Azure when
EVENTFLOW_CONFORMANCE_SERVICEBUS_CONNECTION_STRING is set, with two existing queues named by
EVENTFLOW_CONFORMANCE_SERVICEBUS_SESSION_QUEUE (sessions, duplicate detection, max delivery count 3,
lock duration EVENTFLOW_CONFORMANCE_SERVICEBUS_LOCK_SECONDS, default 5) and EVENTFLOW_CONFORMANCE_SERVICEBUS_PLAIN_QUEUE (no sessions,
the same lock duration, dead-lettering on expiration), both with the default message time to live
EVENTFLOW_CONFORMANCE_SERVICEBUS_DEFAULT_TTL_SECONDS (default 3600).
Every case uses its own session ids and message ids, so a shared broker needs no clean-up.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusMessage,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import ServiceBusClient as AzureServiceBusClient
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
    ServiceBusError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from eventflow_emulators.conformance import BackendCases, setting_or_skip
from eventflow_emulators.messaging.testing import RunningMessagingEmulator

from . import amqp_types, sas

MAX_DELIVERY_COUNT = 3
# What the SDK raises for a token the service does not accept: at put-token (CBS answers 401) or
# at attach (amqp:unauthorized-access), depending on where the service refuses it.
DENIED = (ServiceBusAuthenticationError, ServiceBusAuthorizationError)


@dataclass(frozen=True)
class Broker:
    client: Any
    session_queue: str
    plain_queue: str
    lock_seconds: float
    connection_string: str = ""
    default_ttl_seconds: float = 3600.0
    emulator: RunningMessagingEmulator | None = None


def message(session_id: str | None, body: bytes = b"{}", **kwargs: Any) -> ServiceBusMessage:
    return ServiceBusMessage(
        body, session_id=session_id, message_id=kwargs.pop("message_id", uuid.uuid4().hex), **kwargs
    )


def fill(batch: Any, session: str) -> int:
    """Add 300-byte messages until the batch refuses one; how many fitted."""
    for added in range(100):
        try:
            batch.add_message(message(session, b"x" * 300))
        except (MessageSizeExceededError, ValueError):
            return added
    raise AssertionError("the batch never filled up")


def new_session() -> str:
    return f"s-{uuid.uuid4().hex}"


async def receive_all(receiver: Any, expected: int, wait: float = 3.0) -> list[Any]:
    received: list[Any] = []
    deadline = asyncio.get_running_loop().time() + wait
    while len(received) < expected and asyncio.get_running_loop().time() < deadline:
        received += await receiver.receive_messages(
            max_message_count=expected - len(received), max_wait_time=min(wait, 0.5)
        )
    return received


async def receive_one(receiver: Any, message_id: str, wait: float = 3.0) -> Any:
    """Receive until the message with `message_id` arrives; others (on a shared queue) go back."""
    deadline = asyncio.get_running_loop().time() + wait
    while asyncio.get_running_loop().time() < deadline:
        for item in await receiver.receive_messages(max_message_count=10, max_wait_time=0.5):
            if item.message_id == message_id:
                return item
            await receiver.abandon_message(item)
    raise AssertionError(f"message {message_id} did not arrive within {wait}s")


async def keep_receiving(receiver: Any, times: int) -> None:
    """Receive `times` times (for a receiver expected to fail on the way)."""
    for _ in range(times):
        await receiver.receive_messages(max_wait_time=1)


async def dead_letters_of(
    broker: Broker, message_id: str, wait: float = 5.0, queue: str | None = None
) -> list[Any]:
    """Dead-lettered messages of the session queue (or `queue`) with `message_id` (others are left
    alone)."""
    deadline = asyncio.get_running_loop().time() + wait
    async with broker.client.get_queue_receiver(
        queue or broker.session_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=1
    ) as receiver:
        while asyncio.get_running_loop().time() < deadline:
            found = [
                m
                for m in await receiver.peek_messages(max_message_count=200)
                if m.message_id == message_id
            ]
            if found:
                return found
            await asyncio.sleep(0.1)
    return []


class ServiceBusConformance(BackendCases):
    """The cases. A backend subclasses this and provides the `broker` fixture."""

    backend: ClassVar[str]

    async def send(
        self, broker: Broker, *messages: ServiceBusMessage, queue: str | None = None
    ) -> None:
        async with broker.client.get_queue_sender(queue or broker.session_queue) as sender:
            await sender.send_messages(list(messages))

    def session_receiver(self, broker: Broker, session_id: Any, wait: float = 5) -> Any:
        return broker.client.get_queue_receiver(
            broker.session_queue, session_id=session_id, max_wait_time=wait
        )

    async def test_a_message_keeps_its_body_ids_and_properties(self, broker: Broker) -> None:
        session = new_session()
        sent = message(
            session, b'{"a": 1}', content_type="application/cloudevents+json", subject="t.v1",
            application_properties={"type": "t.v1", "sequence": 7, "flag": True},
        )  # fmt: skip
        await self.send(broker, sent)
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            await receiver.complete_message(received)
        assert b"".join(received.body) == b'{"a": 1}'
        assert (received.message_id, received.session_id) == (sent.message_id, session)
        assert (received.content_type, received.subject) == ("application/cloudevents+json", "t.v1")
        assert received.application_properties[b"type"] == b"t.v1"
        assert received.application_properties[b"sequence"] == 7
        assert received.application_properties[b"flag"] is True
        assert received.delivery_count == 0

    async def test_a_session_delivers_in_send_order(self, broker: Broker) -> None:
        session = new_session()
        await self.send(broker, *[message(session, str(n).encode()) for n in range(6)])
        async with self.session_receiver(broker, session) as receiver:
            received = await receive_all(receiver, 6)
            for item in received:
                await receiver.complete_message(item)
        assert [b"".join(m.body) for m in received] == [str(n).encode() for n in range(6)]

    async def test_a_duplicate_message_id_is_accepted_and_dropped(self, broker: Broker) -> None:
        session, message_id = new_session(), uuid.uuid4().hex
        await self.send(broker, message(session, b"first", message_id=message_id))
        await self.send(broker, message(session, b"second", message_id=message_id))
        await self.send(broker, message(session, b"other"))
        async with self.session_receiver(broker, session) as receiver:
            received = await receive_all(receiver, 3, wait=1)
            for item in received:
                await receiver.complete_message(item)
        assert [b"".join(m.body) for m in received] == [b"first", b"other"]

    async def test_a_completed_message_is_gone(self, broker: Broker) -> None:
        session = new_session()
        await self.send(broker, message(session))
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            await receiver.complete_message(received)
            assert await receiver.receive_messages(max_wait_time=1) == []

    async def test_an_abandoned_message_returns_with_one_more_delivery(
        self, broker: Broker
    ) -> None:
        session = new_session()
        await self.send(broker, message(session))
        async with self.session_receiver(broker, session) as receiver:
            (first,) = await receive_all(receiver, 1)
            await receiver.abandon_message(first)
            (again,) = await receive_all(receiver, 1)
            await receiver.complete_message(again)
        assert (first.delivery_count, again.delivery_count) == (0, 1)
        assert again.message_id == first.message_id

    async def test_past_max_delivery_count_a_message_is_dead_lettered(self, broker: Broker) -> None:
        session = new_session()
        poison = message(session)
        await self.send(broker, poison)
        async with self.session_receiver(broker, session) as receiver:
            for _ in range(MAX_DELIVERY_COUNT):
                (received,) = await receive_all(receiver, 1)
                await receiver.abandon_message(received)
            assert await receiver.receive_messages(max_wait_time=1) == []
        (dead,) = await dead_letters_of(broker, poison.message_id)
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"

    async def test_dead_lettering_keeps_reason_and_description(self, broker: Broker) -> None:
        session = new_session()
        sent = message(session, b"bad", application_properties={"type": "x"})
        await self.send(broker, sent)
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            await receiver.dead_letter_message(
                received, reason="invalid-json", error_description="not JSON"
            )
        (dead,) = await dead_letters_of(broker, sent.message_id)
        assert (dead.dead_letter_reason, dead.dead_letter_error_description) == (
            "invalid-json",
            "not JSON",
        )
        assert (dead.session_id, b"".join(dead.body)) == (session, b"bad")
        assert dead.application_properties[b"type"] == b"x"

    async def test_a_dead_letter_can_be_received_and_completed(self, broker: Broker) -> None:
        session = new_session()
        sent = message(session)
        await self.send(broker, sent)
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            await receiver.dead_letter_message(received, reason="r")
        assert await dead_letters_of(broker, sent.message_id)
        async with broker.client.get_queue_receiver(
            broker.session_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=1
        ) as dlq:
            for item in await receive_all(dlq, 200, wait=1):
                if item.message_id == sent.message_id:
                    await dlq.complete_message(item)
                else:
                    await dlq.abandon_message(item)
        assert await dead_letters_of(broker, sent.message_id, wait=0.5) == []

    async def test_a_deferred_message_is_received_by_sequence_number(self, broker: Broker) -> None:
        session = new_session()
        await self.send(broker, message(session, b"later"), message(session, b"next"))
        async with self.session_receiver(broker, session) as receiver:
            first, second = await receive_all(receiver, 2)
            await receiver.defer_message(first)
            await receiver.complete_message(second)
            assert await receiver.receive_messages(max_wait_time=1) == []
            (deferred,) = await receiver.receive_deferred_messages([first.sequence_number])
            assert b"".join(deferred.body) == b"later"
            await receiver.complete_message(deferred)

    async def test_session_state_survives_the_receiver(self, broker: Broker) -> None:
        session = new_session()
        await self.send(broker, message(session), message(session))
        async with self.session_receiver(broker, session) as receiver:
            assert await receiver.session.get_state() is None
            await receiver.session.set_state(b'{"last": 1}')
            (received,) = await receive_all(receiver, 1)
            await receiver.complete_message(received)
        async with self.session_receiver(broker, session) as receiver:
            assert await receiver.session.get_state() == b'{"last": 1}'
            await receiver.complete_message((await receive_all(receiver, 1))[0])

    async def test_a_locked_session_cannot_be_accepted_by_another_receiver(
        self, broker: Broker
    ) -> None:
        session = new_session()
        await self.send(broker, message(session))
        # SessionCannotBeLockedError is retryable (azure-servicebus exceptions.py), so with the
        # default retries (about 6 s of back-off) a short session lock could expire and the
        # contender win; without retries the refusal reaches the caller at once.
        async with self.session_receiver(broker, session) as holder:
            async with AzureServiceBusClient.from_connection_string(
                broker.connection_string, retry_total=0
            ) as impatient:
                with pytest.raises((SessionCannotBeLockedError, OperationTimeoutError)):
                    async with impatient.get_queue_receiver(
                        broker.session_queue, session_id=session, max_wait_time=1
                    ):
                        pass
            await holder.complete_message((await receive_all(holder, 1))[0])

    async def test_next_available_session_skips_held_and_empty_sessions(
        self, broker: Broker
    ) -> None:
        first, second = new_session(), new_session()
        await self.send(broker, message(first), message(second))
        async with self.session_receiver(broker, first) as a:
            async with self.session_receiver(broker, NEXT_AVAILABLE_SESSION) as b:
                assert b.session.session_id != first
                await b.complete_message((await receive_all(b, 1))[0])
            await a.complete_message((await receive_all(a, 1))[0])
        # Without the SDK's retries of an accept that timed out (three, ~20 s of back-off in all):
        # the answer is the same, at once.
        async with AzureServiceBusClient.from_connection_string(
            broker.connection_string, retry_total=0
        ) as unretried:
            try:
                async with unretried.get_queue_receiver(
                    broker.session_queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1
                ) as receiver:
                    assert receiver.session.session_id not in (first, second)
            except OperationTimeoutError:
                pass  # nothing else on the broker: the expected outcome on a fresh queue

    async def test_closing_a_receiver_releases_its_session(self, broker: Broker) -> None:
        session = new_session()
        await self.send(broker, message(session))
        async with self.session_receiver(broker, session) as receiver:
            await receive_all(receiver, 1)
        async with self.session_receiver(broker, session, wait=2) as receiver:
            (again,) = await receive_all(receiver, 1)
            await receiver.complete_message(again)

    async def test_closing_a_receiver_without_settling_counts_no_delivery(
        self, broker: Broker
    ) -> None:
        # Only an abandon or an expired lock counts a delivery: a consumer that lets a poison
        # message go by closing its receiver would see it again forever.
        session = new_session()
        await self.send(broker, message(session))
        async with self.session_receiver(broker, session) as receiver:
            (first,) = await receive_all(receiver, 1)
        async with self.session_receiver(broker, session, wait=2) as receiver:
            (again,) = await receive_all(receiver, 1)
            await receiver.complete_message(again)
        assert (first.delivery_count, again.delivery_count) == (0, 0)

    async def test_a_missing_deferred_message_is_not_found(self, broker: Broker) -> None:
        session = new_session()
        await self.send(broker, message(session))
        # azure-servicebus retries even a MessageNotFoundError (three times, ~11 s of back-off)
        # before it raises it: without retries the same error comes at once.
        async with (
            AzureServiceBusClient.from_connection_string(
                broker.connection_string, retry_total=0
            ) as unretried,
            unretried.get_queue_receiver(
                broker.session_queue, session_id=session, max_wait_time=5
            ) as receiver,
        ):
            (received,) = await receive_all(receiver, 1)
            await receiver.defer_message(received)
            (deferred,) = await receiver.receive_deferred_messages([received.sequence_number])
            await receiver.complete_message(deferred)
            with pytest.raises(MessageNotFoundError):
                await receiver.receive_deferred_messages([received.sequence_number])

    async def test_settling_twice_is_refused(self, broker: Broker) -> None:
        session = new_session()
        await self.send(broker, message(session))
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            await receiver.complete_message(received)
            with pytest.raises(MessageAlreadySettled):
                await receiver.complete_message(received)

    async def test_an_expired_session_lock_loses_the_session(self, broker: Broker) -> None:
        session = new_session()
        await self.send(broker, message(session))
        async with self.session_receiver(broker, session) as stale:
            (received,) = await receive_all(stale, 1)
            await asyncio.sleep(
                broker.lock_seconds + 0.5
            )  # the lock duration is the point of this case
            async with self.session_receiver(broker, session, wait=5) as fresh:
                (again,) = await receive_all(fresh, 1)
                assert again.delivery_count == 1
                with pytest.raises((SessionLockLostError, MessageLockLostError)):
                    await stale.complete_message(received)
                await fresh.complete_message(again)

    async def test_renewing_the_session_lock_keeps_the_session(self, broker: Broker) -> None:
        session = new_session()
        await self.send(broker, message(session))
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            for _ in range(3):
                await asyncio.sleep(broker.lock_seconds / 2)
                await receiver.session.renew_lock()
            await receiver.complete_message(received)
            with pytest.raises(TypeError):
                await receiver.renew_message_lock(received)

    async def test_a_batch_fills_then_refuses_and_sends_everything(self, broker: Broker) -> None:
        session = new_session()
        async with broker.client.get_queue_sender(broker.session_queue) as sender:
            batch = await sender.create_message_batch(max_size_in_bytes=2000)
            added = fill(batch, session)
            assert 0 < added < 10
            await sender.send_messages(batch)
        async with self.session_receiver(broker, session) as receiver:
            received = await receive_all(receiver, added)
            for item in received:
                await receiver.complete_message(item)
        assert len(received) == added

    async def test_a_message_near_the_size_limit_arrives_intact(self, broker: Broker) -> None:
        # ~250 KB, under the Standard tier's 256 KB (service-bus-quotas), several frames each way.
        session = new_session()
        body = bytes(range(256)) * 975
        await self.send(broker, message(session, body))
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            await receiver.complete_message(received)
        assert b"".join(received.body) == body

    async def test_a_message_larger_than_the_queue_accepts_is_refused(self, broker: Broker) -> None:
        with pytest.raises(MessageSizeExceededError):
            await self.send(broker, message(new_session(), b"x" * (1024 * 1024 + 1)))

    async def test_peeking_does_not_lock(self, broker: Broker) -> None:
        session = new_session()
        await self.send(broker, message(session, b"p"))
        async with self.session_receiver(broker, session) as receiver:
            (peeked,) = await receiver.peek_messages(max_message_count=5)
            (received,) = await receive_all(receiver, 1)
            await receiver.complete_message(received)
        assert peeked.sequence_number == received.sequence_number

    async def test_a_queue_without_sessions_delivers_and_completes(self, broker: Broker) -> None:
        sent = message(None, b"plain")
        await self.send(broker, sent, queue=broker.plain_queue)
        async with broker.client.get_queue_receiver(
            broker.plain_queue, max_wait_time=2
        ) as receiver:
            found = await receive_one(receiver, sent.message_id)
            await receiver.complete_message(found)
        assert b"".join(found.body) == b"plain"

    async def test_an_expired_message_lock_redelivers_the_message(self, broker: Broker) -> None:
        sent = message(None, b"slow")
        await self.send(broker, sent, queue=broker.plain_queue)
        async with broker.client.get_queue_receiver(
            broker.plain_queue, max_wait_time=2
        ) as receiver:
            first = await receive_one(receiver, sent.message_id)
            await asyncio.sleep(
                broker.lock_seconds + 0.5
            )  # the lock duration is the point of this case
            with pytest.raises(MessageLockLostError):
                await receiver.complete_message(first)
            again = await receive_one(receiver, sent.message_id)
            await receiver.complete_message(again)
        assert (first.delivery_count, again.delivery_count) == (0, 1)

    async def test_a_session_queue_refuses_a_message_without_a_session(
        self, broker: Broker
    ) -> None:
        with pytest.raises(ServiceBusError):
            await self.send(broker, message(None))

    async def test_a_scheduled_message_arrives_at_its_time_or_not_once_cancelled(
        self, broker: Broker
    ) -> None:
        # learn.microsoft.com/azure/service-bus-messaging/message-sequencing ("Scheduled
        # messages"): not receivable before the scheduled time; cancelling removes it.
        session = new_session()
        due = datetime.now(UTC) + timedelta(seconds=4)  # room for the calls before the check
        async with broker.client.get_queue_sender(broker.session_queue) as sender:
            kept, cancelled = await sender.schedule_messages(
                [message(session, b"kept"), message(session, b"cancelled")], due
            )
            await sender.cancel_scheduled_messages(cancelled)
        async with self.session_receiver(broker, session) as receiver:
            assert await receiver.receive_messages(max_wait_time=0.5) == []
            received = await receive_all(receiver, 1, wait=8)
            assert [m.sequence_number for m in received] == [kept]
            assert received[0].enqueued_time_utc >= due - timedelta(seconds=1)
            await receiver.complete_message(received[0])
            assert await receiver.receive_messages(max_wait_time=1) == []

    async def test_peeking_continues_from_the_last_sequence_number(self, broker: Broker) -> None:
        # The SDK asks for from-sequence-number = last peeked + 1 (mgmt_handlers.py peek_op).
        session = new_session()
        await self.send(broker, *[message(session, str(n).encode()) for n in range(4)])
        async with self.session_receiver(broker, session) as receiver:
            first = await receiver.peek_messages(max_message_count=2)
            second = await receiver.peek_messages(max_message_count=2)
            for item in await receive_all(receiver, 4):
                await receiver.complete_message(item)
        assert [b"".join(m.body) for m in first + second] == [b"0", b"1", b"2", b"3"]

    async def test_renewing_a_message_lock_keeps_the_message(self, broker: Broker) -> None:
        sent = message(None, b"long")
        await self.send(broker, sent, queue=broker.plain_queue)
        async with broker.client.get_queue_receiver(
            broker.plain_queue, max_wait_time=2
        ) as receiver:
            found = await receive_one(receiver, sent.message_id)
            first_until = found.locked_until_utc
            await asyncio.sleep(broker.lock_seconds * 0.6)  # lock time is the point of this case
            renewed = await receiver.renew_message_lock(found)
            assert renewed > first_until
            await asyncio.sleep(broker.lock_seconds * 0.6)
            await receiver.complete_message(found)

    async def test_sending_to_a_missing_queue_is_an_error(self, broker: Broker) -> None:
        with pytest.raises(MessagingEntityNotFoundError):
            await self.send(broker, message(None), queue=f"missing-{uuid.uuid4().hex[:8]}")

    async def test_closing_a_session_receiver_unsettled_counts_no_delivery(
        self, broker: Broker
    ) -> None:
        # Closing the link releases its unsettled messages (azure-servicebus 7.15.0 release
        # notes: prefetched messages are released on close); a release is not a delivery
        # attempt (AMQP 1.0 part 3.4.4 "released").
        session = new_session()
        await self.send(broker, message(session))
        async with self.session_receiver(broker, session) as receiver:
            (first,) = await receive_all(receiver, 1)
        async with self.session_receiver(broker, session) as receiver:
            (again,) = await receive_all(receiver, 1)
            await receiver.complete_message(again)
        assert (first.delivery_count, again.delivery_count) == (0, 0)

    # --- every AMQP type, every place (issue 23, item 1) -----------------------------------

    async def test_every_amqp_type_round_trips_in_properties_and_annotations(
        self, broker: Broker
    ) -> None:
        # "AMQP 1.0 in Azure Service Bus and Event Hubs protocol guide" (type system: every AMQP
        # type is carried); "Messages, payloads, and serialization": application properties of
        # the AMQP primitive types.
        session = new_session()
        sent = message(session, application_properties=amqp_types.application_properties())
        sent.raw_amqp_message.annotations = amqp_types.annotations()
        await self.send(broker, sent)
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            await receiver.complete_message(received)
        assert amqp_types.received(received.application_properties) == amqp_types.EXPECTED
        annotations = received.raw_amqp_message.annotations
        assert amqp_types.received(annotations, "x-opt-") == amqp_types.EXPECTED

    async def test_a_ulong_property_survives_dead_lettering_peek_and_receive(
        self, broker: Broker
    ) -> None:
        session = new_session()
        sent = message(session, application_properties={"big": amqp_types.ULONG_MAX})
        await self.send(broker, sent)
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            await receiver.dead_letter_message(received, reason="r")
        (peeked,) = await dead_letters_of(broker, sent.message_id)
        assert peeked.application_properties[b"big"] == 2**64 - 1
        async with broker.client.get_queue_receiver(
            broker.session_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=1
        ) as dlq:
            found = await receive_one(dlq, sent.message_id)
            await dlq.complete_message(found)
        assert found.application_properties[b"big"] == 2**64 - 1

    async def test_a_ulong_annotation_sent_to_a_waiting_receiver_arrives_once(
        self, broker: Broker
    ) -> None:
        session = new_session()
        sent = message(session, b"big")
        sent.raw_amqp_message.annotations = {"x-opt-big": amqp_types.ULONG_MAX}
        async with self.session_receiver(broker, session, wait=10) as receiver:
            waiting = asyncio.create_task(receive_all(receiver, 2, wait=6))
            await asyncio.sleep(0.5)  # the receiver waits with credit: the point of this case
            async with broker.client.get_queue_sender(broker.session_queue) as sender:
                await sender.send_messages(sent)
                await sender.send_messages(message(session, b"after"))
            received = await waiting
            for item in received:
                await receiver.complete_message(item)
        assert [b"".join(m.body) for m in received] == [b"big", b"after"]
        assert received[0].raw_amqp_message.annotations[b"x-opt-big"] == 2**64 - 1

    # --- authorization per entity (issue 23, item 2) --------------------------------------
    # "Service Bus authentication and authorization with SAS": a token is scoped to the resource
    # URI it was issued for (an entity, or the namespace root) and is valid until its expiry.

    async def test_a_token_for_one_queue_does_not_reach_another_queues_management(
        self, broker: Broker
    ) -> None:
        session = new_session()
        await self.send(broker, message(session, b"private"))
        only_plain = sas.with_signature(broker.connection_string, broker.plain_queue)
        async with AzureServiceBusClient.from_connection_string(only_plain, retry_total=0) as c:
            async with c.get_queue_receiver(broker.plain_queue, max_wait_time=1) as own:
                await own.peek_messages(max_message_count=1)  # its own queue: allowed
            # The refusal may come when the link opens or at the request: either way, nothing.
            with pytest.raises(DENIED):
                async with c.get_queue_receiver(broker.session_queue, session_id=session) as other:
                    await other.peek_messages(max_message_count=5)
            with pytest.raises(DENIED):
                async with c.get_queue_sender(broker.session_queue) as sender:
                    await sender.schedule_messages(
                        message(session, b"sneaked"), datetime.now(UTC) + timedelta(seconds=1)
                    )
        async with self.session_receiver(broker, session) as receiver:
            received = await receive_all(receiver, 2, wait=3)
            for item in received:
                await receiver.complete_message(item)
        assert [b"".join(m.body) for m in received] == [b"private"]

    async def test_a_token_of_another_namespace_is_refused(self, broker: Broker) -> None:
        elsewhere = sas.with_signature(
            broker.connection_string, "", namespace="another-namespace.servicebus.windows.net"
        )
        async with AzureServiceBusClient.from_connection_string(elsewhere, retry_total=0) as c:
            with pytest.raises(DENIED):
                async with c.get_queue_sender(broker.plain_queue) as sender:
                    await sender.send_messages(message(None))

    async def test_a_link_is_refused_once_its_token_has_expired(self, broker: Broker) -> None:
        short = sas.with_signature(broker.connection_string, broker.plain_queue, lifetime_s=3)
        async with (
            AzureServiceBusClient.from_connection_string(short, retry_total=0) as c,
            c.get_queue_sender(broker.plain_queue) as sender,
        ):
            await sender.send_messages(message(None, b"in time"))
            await asyncio.sleep(4.5)  # past the token's expiry: the point of this case
            with pytest.raises((*DENIED, ServiceBusConnectionError)):
                await sender.send_messages(message(None, b"too late"))
        async with broker.client.get_queue_receiver(broker.plain_queue, max_wait_time=1) as r:
            bodies = []
            for item in await receive_all(r, 50, wait=2):
                bodies.append(b"".join(item.body))
                await r.complete_message(item)
        assert b"too late" not in bodies

    # --- limits and times (issue 23, item 4) ----------------------------------------------

    async def test_an_application_property_over_32_kb_is_refused(self, broker: Broker) -> None:
        # "Service Bus quotas", message property size: at most 32 KB per property, else
        # SerializationException; the AMQP condition is not documented (any ServiceBusError).
        big = message(None, application_properties={"big": "x" * (33 * 1024)})
        with pytest.raises(ServiceBusError):
            await self.send(broker, big, queue=broker.plain_queue)
        fits = message(None, b"fits", application_properties={"big": "x" * (30 * 1024)})
        await self.send(broker, fits, queue=broker.plain_queue)
        async with broker.client.get_queue_receiver(broker.plain_queue, max_wait_time=2) as r:
            found = await receive_one(r, fits.message_id)
            await r.complete_message(found)

    async def test_properties_over_64_kb_in_total_are_refused(self, broker: Broker) -> None:
        # "Service Bus quotas": all properties of a message together at most 64 KB.
        each = "x" * (30 * 1024)
        with pytest.raises(ServiceBusError):
            await self.send(
                broker, message(None, application_properties={"a": each, "b": each, "c": each}),
                queue=broker.plain_queue,
            )  # fmt: skip

    async def test_a_scheduled_message_lives_its_ttl_from_its_scheduled_time(
        self, broker: Broker
    ) -> None:
        # "Message expiration": the time to live starts when the message is enqueued, and a
        # scheduled message is enqueued at its scheduled time ("Message sequencing and
        # timestamps"): scheduled +4 s with 3 s to live, it is delivered, not dead-lettered.
        session = new_session()
        due = datetime.now(UTC) + timedelta(seconds=4)
        sent = message(session, b"scheduled", time_to_live=timedelta(seconds=3))
        async with broker.client.get_queue_sender(broker.session_queue) as sender:
            await sender.schedule_messages(sent, due)
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1, wait=8)
            await receiver.complete_message(received)
        assert received.time_to_live == timedelta(seconds=3)
        assert received.expires_at_utc == received.enqueued_time_utc + timedelta(seconds=3)

    async def test_a_ttl_above_the_queue_default_is_reported_as_applied(
        self, broker: Broker
    ) -> None:
        # "Message expiration": a message TTL above the entity's default is silently adjusted to
        # it (also the SDK's `time_to_live` docstring); the received message reports that value.
        default = timedelta(seconds=broker.default_ttl_seconds)
        session = new_session()
        await self.send(broker, message(session, time_to_live=default * 2))
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            await receiver.complete_message(received)
        assert received.time_to_live == default
        assert received.expires_at_utc == received.enqueued_time_utc + default

    async def test_an_expired_deferred_message_waits_to_be_received_then_is_dead_lettered(
        self, broker: Broker
    ) -> None:
        # "Message deferral" (note): deferred messages are not expired and moved to the dead-letter
        # queue until a client receives them by sequence number; then they are moved there. What
        # that receive returns is not documented: assumed MessageNotFoundError or nothing.
        sent = message(None, b"deferred", time_to_live=timedelta(seconds=2))
        await self.send(broker, sent, queue=broker.plain_queue)
        async with (
            AzureServiceBusClient.from_connection_string(
                broker.connection_string, retry_total=0
            ) as client,
            client.get_queue_receiver(broker.plain_queue, max_wait_time=2) as receiver,
        ):
            found = await receive_one(receiver, sent.message_id)
            await receiver.defer_message(found)
            await asyncio.sleep(3)  # past the time to live: the point of this case
            peeked = await receiver.peek_messages(
                max_message_count=1, sequence_number=found.sequence_number
            )
            assert [m.sequence_number for m in peeked] == [found.sequence_number]
            try:
                got = await receiver.receive_deferred_messages([found.sequence_number])
            except MessageNotFoundError:
                got = []
            assert got == []
        (dead,) = await dead_letters_of(broker, sent.message_id, queue=broker.plain_queue)
        assert dead.dead_letter_reason == "TTLExpiredException"

    # --- a plain receiver that closes (issue 23, item 5) ----------------------------------

    async def test_closing_a_plain_receiver_keeps_its_lock_until_it_expires(
        self, broker: Broker
    ) -> None:
        # A sessionless receiver that closes holding an unsettled message leaves it locked until
        # the lock expires, which counts a delivery (.NET ServiceBusReceivedMessage.DeliveryCount:
        # "incremented when a message lock expires"; azure-servicebus
        # `ServiceBusReceiver._close_handler` releases only what it buffered, "so they are not
        # left locked at the broker until lock expiry ... inflating delivery count").
        sent = message(None, b"held")
        await self.send(broker, sent, queue=broker.plain_queue)
        async with broker.client.get_queue_receiver(broker.plain_queue, max_wait_time=2) as r:
            first = await receive_one(r, sent.message_id)
        closed = time.monotonic()
        async with broker.client.get_queue_receiver(broker.plain_queue, max_wait_time=1) as r:
            early = await r.receive_messages(max_message_count=10, max_wait_time=1)
            assert sent.message_id not in [m.message_id for m in early]
            for item in early:
                await r.abandon_message(item)
            again = await receive_one(r, sent.message_id, wait=broker.lock_seconds + 5)
            await r.complete_message(again)
        assert time.monotonic() - closed >= broker.lock_seconds * 0.5
        assert (first.delivery_count, again.delivery_count) == (0, 1)


class TestMessagingEmulator(ServiceBusConformance):
    backend = "the eventflow messaging emulator"

    @pytest.fixture
    async def broker(
        self, messaging_emulator_server: RunningMessagingEmulator
    ) -> AsyncIterator[Broker]:
        connection_string = messaging_emulator_server.connection_string
        async with AzureServiceBusClient.from_connection_string(connection_string) as client:
            yield Broker(
                client, "conformance-sessions", "conformance-plain", lock_seconds=5.0,
                connection_string=connection_string, emulator=messaging_emulator_server,
            )  # fmt: skip

    async def test_a_session_receiver_is_dead_after_a_connection_drop(self, broker: Broker) -> None:
        # A dropped connection takes the session lock with it; the SDK does not re-open a
        # session receiver, so settling fails and a new receiver gets the message again.
        assert broker.emulator is not None
        session = new_session()
        await self.send(broker, message(session))
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            await asyncio.to_thread(broker.emulator.admin.drop_connections)
            with pytest.raises(ServiceBusError):
                await receiver.complete_message(received)
        async with self.session_receiver(broker, session) as fresh:
            (again,) = await receive_all(fresh, 1)
            await fresh.complete_message(again)

    async def test_server_busy_is_retried_by_the_sdk(self, broker: Broker) -> None:
        # com.microsoft:server-busy is retryable: the SDK retries with back-off (retry_total 3,
        # retry_backoff_factor 0.8 s) before the application would see ServiceBusServerBusyError
        # (azure-servicebus _common/_configuration.py; exceptions.py ServiceBusServerBusyError).
        assert broker.emulator is not None
        session = new_session()
        await asyncio.to_thread(broker.emulator.admin.server_busy, 1.0, ["send"])
        started = time.monotonic()
        await self.send(broker, message(session, b"eventually"))
        assert time.monotonic() - started >= 0.5
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            await receiver.complete_message(received)
        assert b"".join(received.body) == b"eventually"

    async def test_a_send_applied_then_dropped_is_retried_and_deduplicated(
        self, broker: Broker
    ) -> None:
        # The broker stores the message, then the connection drops before the acknowledgement;
        # the SDK retries the send and duplicate detection (same MessageId) drops the copy
        # (learn.microsoft.com/azure/service-bus-messaging/duplicate-detection).
        assert broker.emulator is not None
        session = new_session()
        await asyncio.to_thread(broker.emulator.admin.apply_then_drop, "send")
        await self.send(broker, message(session, b"once"))
        async with self.session_receiver(broker, session) as receiver:
            received = await receive_all(receiver, 2, wait=2)
            for item in received:
                await receiver.complete_message(item)
        assert [b"".join(m.body) for m in received] == [b"once"]

    async def test_a_settlement_applied_then_dropped_is_not_redelivered(
        self, broker: Broker
    ) -> None:
        # The broker completes the message, then the connection drops before the outcome: the
        # SDK reports a connection error, and the message is gone all the same.
        assert broker.emulator is not None
        session = new_session()
        await self.send(broker, message(session))
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            await asyncio.to_thread(broker.emulator.admin.apply_then_drop, "settle")
            with pytest.raises(ServiceBusError):
                await receiver.complete_message(received)
        async with self.session_receiver(broker, session) as fresh:
            assert await fresh.receive_messages(max_wait_time=1) == []

    async def test_a_delivery_dropped_before_it_arrives_comes_back_unchanged(
        self, broker: Broker
    ) -> None:
        # apply-then-drop "receive": the broker locks and sends, then drops the connection; the
        # receiver's link is gone, its session released and the message redelivered without a
        # counted delivery (a closed link's unsettled messages are released).
        assert broker.emulator is not None
        session = new_session()
        await self.send(broker, message(session, b"dropped"))
        await asyncio.to_thread(broker.emulator.admin.apply_then_drop, "receive")
        async with self.session_receiver(broker, session) as receiver:
            with pytest.raises(ServiceBusError):
                await keep_receiving(receiver, times=5)
        async with self.session_receiver(broker, session) as fresh:
            (again,) = await receive_all(fresh, 1)
            await fresh.complete_message(again)
        assert (b"".join(again.body), again.delivery_count) == (b"dropped", 0)

    async def test_a_stall_delays_a_send_until_it_ends(self, broker: Broker) -> None:
        assert broker.emulator is not None
        session = new_session()
        async with broker.client.get_queue_sender(broker.session_queue) as sender:
            await sender.send_messages(message(session, b"warm-up"))
            await asyncio.to_thread(broker.emulator.admin.stall, 2.0)
            started = time.monotonic()
            await sender.send_messages(message(session, b"stalled"))
            assert time.monotonic() - started >= 1.5
        async with self.session_receiver(broker, session) as receiver:
            received = await receive_all(receiver, 2)
            for item in received:
                await receiver.complete_message(item)
        assert [b"".join(m.body) for m in received] == [b"warm-up", b"stalled"]

    async def test_a_value_the_emulator_cannot_take_fails_that_send_only(
        self, broker: Broker
    ) -> None:
        # A map keyed by a list is valid AMQP that the emulator cannot hold (see the README's
        # known differences): that one transfer is rejected with amqp:decode-error (not retried
        # by the SDK, _pyamqp/error.py RetryPolicy.no_retry), and the connection and the
        # sender's link carry on.
        session = new_session()
        odd = message(session, b"odd")
        odd.raw_amqp_message.annotations = {
            "x-opt-odd": amqp_types.typed(amqp_types.AMQPTypes.map, [([1, 2], "v")])
        }
        async with broker.client.get_queue_sender(broker.session_queue) as sender:
            with pytest.raises(ServiceBusError) as refused:
                await sender.send_messages(odd)
            await sender.send_messages(message(session, b"fine"))
        assert "decode-error" in str(refused.value)
        async with self.session_receiver(broker, session) as receiver:
            received = await receive_all(receiver, 2, wait=2)
            for item in received:
                await receiver.complete_message(item)
        assert [b"".join(m.body) for m in received] == [b"fine"]

    async def test_an_expired_session_lock_is_lost_on_settle(self, broker: Broker) -> None:
        assert broker.emulator is not None
        session = new_session()
        await self.send(broker, message(session))
        async with self.session_receiver(broker, session) as receiver:
            (received,) = await receive_all(receiver, 1)
            expired = await asyncio.to_thread(
                broker.emulator.admin.expire_lock, broker.session_queue, session_id=session
            )
            assert expired == 1
            with pytest.raises(SessionLockLostError):
                await receiver.complete_message(received)
        async with self.session_receiver(broker, session) as fresh:
            (again,) = await receive_all(fresh, 1)
            await fresh.complete_message(again)
        assert again.delivery_count == 1


class TestEmulatorOrAzure(ServiceBusConformance):
    backend = "the Service Bus emulator or Azure"

    @pytest.fixture
    async def broker(self) -> AsyncIterator[Broker]:
        connection_string = setting_or_skip("EVENTFLOW_CONFORMANCE_SERVICEBUS_CONNECTION_STRING")
        session_queue = setting_or_skip("EVENTFLOW_CONFORMANCE_SERVICEBUS_SESSION_QUEUE")
        plain_queue = setting_or_skip("EVENTFLOW_CONFORMANCE_SERVICEBUS_PLAIN_QUEUE")
        lock_seconds = float(os.environ.get("EVENTFLOW_CONFORMANCE_SERVICEBUS_LOCK_SECONDS", "5"))
        default_ttl = float(
            os.environ.get("EVENTFLOW_CONFORMANCE_SERVICEBUS_DEFAULT_TTL_SECONDS", "3600")
        )
        async with AzureServiceBusClient.from_connection_string(connection_string) as client:
            yield Broker(
                client, session_queue, plain_queue, lock_seconds, connection_string,
                default_ttl_seconds=default_ttl,
            )  # fmt: skip
