"""EventHubsSender: the EventSender port on an EventHubProducerClient (SDK or local stand-in)."""

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
    """Fills batches created with the partition key, a new one whenever the last is full."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    async def send(self, partition_key: str, events: Sequence[Outgoing]) -> SendResult:
        sizes: list[int] = []
        too_large: list[int] = []
        try:
            batch = await self._producer.create_batch(partition_key=partition_key)
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
                batch = await self._producer.create_batch(partition_key=partition_key)
                try:
                    batch.add(data)
                except ValueError:
                    too_large.append(index)
            if len(batch):
                await self._producer.send_batch(batch)
                sizes.append(len(batch))
        except EventHubError as error:
            raise SendError(f"{type(error).__name__}: {error}") from error
        return SendResult(tuple(sizes), tuple(too_large))
