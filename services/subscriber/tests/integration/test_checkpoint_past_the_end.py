"""Checkpoints ahead of the hub (the emulator's data wiped and the checkpoints kept, or a hub
recreated): the service refuses a start position past the partition's end ("The supplied offset
'…' is invalid"), and the subscriber says so, naming the partition and what to do, instead of
reading nothing in silence. Real SDKs: azure-eventhub with the blob checkpoint store on Azurite,
against the messaging emulator."""

from __future__ import annotations

import asyncio
from typing import Any

from structlog.testing import capture_logs

from eventflow_subscriber.adapters.eventhubs_reader import (
    CHECKPOINT_PAST_THE_END,
    Subscription,
    is_checkpoint_past_the_end,
)
from eventflow_subscriber.adapters.servicebus_inbox import ServiceBusInbox
from eventflow_subscriber.forwarding import Forwarder, RetryPolicy
from eventflow_testing import eventually

from ..conftest import GROUP, HUB, INBOX, Backends  # type: ignore[import-not-found]


async def test_a_checkpoint_past_the_partitions_end_is_reported_with_what_to_do(
    backends: Backends,
) -> None:
    store = backends.checkpoint_store()
    async with store:
        await store.update_checkpoint({
            "fully_qualified_namespace": backends.namespace, "eventhub_name": HUB,
            "consumer_group": GROUP, "partition_id": "0", "offset": "999999",
            "sequence_number": 999,
        })  # fmt: skip
        consumer = backends.consumer(store, load_balancing_interval=0.2)
        async with (
            backends.service_bus() as client,
            client.get_queue_sender(INBOX) as sender,
        ):
            forwarder = Forwarder(ServiceBusInbox(sender), hub="orders", subscribed=None,
                                  max_message_bytes=250_000, lanes=32, retry=RetryPolicy(base_delay=0.01))  # fmt: skip
            subscription = Subscription(
                consumer, forwarder, max_batch_size=50, max_wait_time=None, starting_position="-1"
            )
            with capture_logs() as logs:
                task = asyncio.create_task(subscription.run())
                try:

                    async def reported() -> bool:
                        return any(
                            entry["event"] == CHECKPOINT_PAST_THE_END and entry["partition"] == "0"
                            for entry in logs
                        )

                    await eventually(reported, wait=30, what="the checkpoint past the end reported")
                finally:
                    await subscription.drain(5)
                    await task
    (entry, *_) = [e for e in logs if e["event"] == CHECKPOINT_PAST_THE_END]
    assert entry["log_level"] == "error"
    assert "checkpoint blob" in entry["remedy"]
    assert "make dev-reset" in entry["remedy"]


def test_the_services_refusal_is_recognised() -> None:
    refusal: Any = RuntimeError(
        "The supplied offset '999999' is invalid. The last offset in the system is '-1'"
    )
    assert is_checkpoint_past_the_end(refusal)
    assert not is_checkpoint_past_the_end(RuntimeError("connection lost"))
