"""The Event Hubs side: `receive_batch` with the checkpoint store, checkpointing after the inbox
accepted the batch. The SDK's EventHubConsumerClient."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import structlog

from eventflow_subscriber.forwarding import Forwarder
from eventflow_subscriber.routing import HubEvent

LOG = structlog.get_logger("eventflow_subscriber.hub")
CLOSE_TIMEOUT_SECONDS = 3.0


CHECKPOINT_PAST_THE_END = (
    "the partition's checkpoint is past the partition's end: the hub was emptied or recreated"
    " while its checkpoints were kept; nothing is read from this partition until its checkpoint"
    " is removed"
)
CHECKPOINT_REMEDY = (
    "delete this partition's checkpoint blob (<namespace>/<hub>/<consumer group>/checkpoint/"
    "<partition> in the checkpoint container) and the subscriber reads the partition from"
    " STARTING_POSITION; locally, `make dev-reset` clears the emulators' data and the checkpoints"
    " together"
)
# The service's refusal of a start position it does not have (sequence number or offset), as the
# SDK reports it to on_error: "The supplied offset '…' is invalid. The last offset in the system
# is '…'".
_PAST_THE_END = re.compile(r"The supplied (offset|sequence number) '[^']*' is invalid")


def is_checkpoint_past_the_end(error: Exception) -> bool:
    return _PAST_THE_END.search(str(error)) is not None


def hub_event(partition_id: str, event: Any) -> HubEvent:
    body = event.body
    return HubEvent(
        body=body if isinstance(body, bytes) else b"".join(body),
        partition_id=partition_id,
        offset=str(event.offset),
        sequence_number=int(event.sequence_number),
        enqueued_time=event.enqueued_time,
    )


class Subscription:
    """Reads the hub until `drain()`: each batch is forwarded, then checkpointed at its last event."""

    def __init__(
        self,
        consumer: Any,
        forwarder: Forwarder,
        *,
        max_batch_size: int,
        max_wait_time: float | None,
        starting_position: str,
        on_checkpoint: Callable[[str], None] = lambda _partition: None,
        on_claim: Callable[[str], None] = lambda _partition: None,
        on_release: Callable[[str], None] = lambda _partition: None,
        on_failure: Callable[[str], None] = lambda _partition: None,
    ) -> None:
        self._consumer = consumer
        self._forwarder = forwarder
        self._max_batch_size = max_batch_size
        self._max_wait_time = max_wait_time
        self._starting_position = starting_position
        self._on_checkpoint = on_checkpoint
        self._on_claim, self._on_release, self._on_failure = on_claim, on_release, on_failure
        self._draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def _on_batch(self, context: Any, events: list[Any]) -> None:
        if self._draining or not events:
            return  # not checkpointed: the next owner reads these again
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._forwarder.forward(
                [hub_event(context.partition_id, event) for event in events]
            )
            await context.update_checkpoint(events[-1])
            self._on_checkpoint(context.partition_id)
        except Exception:
            self._on_failure(context.partition_id)  # the SDK closes the partition next
            raise
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _on_error(self, context: Any, error: Exception) -> None:
        partition = getattr(context, "partition_id", None)
        if is_checkpoint_past_the_end(error):
            LOG.error(CHECKPOINT_PAST_THE_END, partition=partition, remedy=CHECKPOINT_REMEDY,
                      error=str(error).splitlines()[0])  # fmt: skip
            return
        LOG.error("partition closed after an error; it is claimed again and read from its checkpoint",
                  partition=partition, error=repr(error))  # fmt: skip

    async def _on_partition_initialize(self, context: Any) -> None:
        self._on_claim(context.partition_id)

    async def _on_partition_close(self, context: Any, _reason: Any) -> None:
        self._on_release(context.partition_id)  # lost to another replica, failed, or shutting down

    async def run(self) -> None:
        await self._consumer.receive_batch(
            self._on_batch, max_batch_size=self._max_batch_size, max_wait_time=self._max_wait_time,
            starting_position=self._starting_position, on_error=self._on_error,
            on_partition_initialize=self._on_partition_initialize,
            on_partition_close=self._on_partition_close,
        )  # fmt: skip

    async def drain(self, wait_seconds: float) -> None:
        """Stop taking new batches, let the in-flight ones forward and checkpoint, then close the
        client (which releases partition ownership)."""
        self._draining = True
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._idle.wait(), wait_seconds)
        except TimeoutError:
            LOG.warning(
                "in-flight batches did not finish in time; they will be read again",
                waited_s=wait_seconds,
            )
        LOG.info("draining done", waited_s=round(time.monotonic() - started, 3))
        try:  # releases the partition claims: bounded, the claims expire on their own anyway
            await asyncio.wait_for(self._consumer.close(), CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            LOG.warning("closing the hub client did not finish in time; the partition claims "
                        "expire on their own", waited_s=CLOSE_TIMEOUT_SECONDS)  # fmt: skip
