"""EventHubsSender: the EventSender port on the SDK's EventHubProducerClient."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from azure.eventhub import EventData
from azure.eventhub.exceptions import EventHubError

from eventflow_contracts import CONTENT_TYPE
from eventflow_publisher.publishing import Outgoing, SendError, SendResult


def event_data(outgoing: Outgoing) -> EventData:
    event = EventData(outgoing.body)
    event.content_type = CONTENT_TYPE
    properties: dict[str | bytes, Any] = {"event_id": outgoing.event_id, "type": outgoing.type}
    if outgoing.traceparent:
        properties["traceparent"] = outgoing.traceparent
    event.properties = properties
    return event


class EventHubsSender:
    """Fills batches for one partition id, a new one whenever the last is full. Not the buffered
    producer: it settles in the background, and the processor checkpoints only after the hub
    accepted every batch."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    async def partition_ids(self) -> list[str]:
        try:
            return [str(pid) for pid in await self._producer.get_partition_ids()]
        except EventHubError as error:
            raise SendError(f"{type(error).__name__}: {error}") from error

    async def send(self, partition_id: str, events: Sequence[Outgoing]) -> SendResult:
        sizes: list[int] = []
        too_large: list[int] = []
        accepted = 0  # events at the front that need no second try
        try:
            batch = await self._producer.create_batch(partition_id=partition_id)
            for index, outgoing in enumerate(events):
                data = event_data(outgoing)
                try:
                    batch.add(data)
                    continue
                except ValueError:
                    if len(batch) == 0:
                        too_large.append(index)
                        continue
                await self._producer.send_batch(batch)
                sizes.append(len(batch))
                accepted = index
                batch = await self._producer.create_batch(partition_id=partition_id)
                try:
                    batch.add(data)
                except ValueError:
                    too_large.append(index)
            if len(batch):
                await self._producer.send_batch(batch)
                sizes.append(len(batch))
        except EventHubError as error:
            done = SendResult(tuple(sizes), tuple(i for i in too_large if i < accepted))
            raise SendError(
                f"{type(error).__name__}: {error}", accepted=accepted, done=done
            ) from error
        return SendResult(tuple(sizes), tuple(too_large))
