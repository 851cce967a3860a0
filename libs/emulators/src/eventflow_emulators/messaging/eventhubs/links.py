"""Event Hubs at the wire: producer links, consumer links and the `$management` node.

Addresses (azure-eventhub 5.15.1 `_producer.py`, `_consumer.py`): producers attach to
`<hub>` or `<hub>/Partitions/<id>`; consumers to `<hub>/ConsumerGroups/<group>/Partitions/<id>`
with an optional `apache.org:selector-filter:string` source filter and the
`com.microsoft:epoch` link property (owner level).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ..amqp import message as amqp_message
from ..amqp.codec import Array, DecodeError, Symbol, Timestamp
from ..amqp.connection import BaseLinkHandler, Delivery, Link, LinkRefused, guarded
from ..faults import Faults
from ..nodes import ACCEPTED_STATE, ManagementError, Operation, Reply, refused_send, rejected
from .model import (
    OUT_OF_RANGE,
    EntityNotFound,
    EventHubsModel,
    Partition,
    Position,
    ReaderRefused,
)

log = logging.getLogger("eventflow_emulators.messaging.eventhubs")

MAX_MESSAGE_SIZE = 1024 * 1024  # Standard tier and the emulator (event-hubs-quotas)

SEQUENCE = Symbol("x-opt-sequence-number")
OFFSET = Symbol("x-opt-offset")
ENQUEUED = Symbol("x-opt-enqueued-time")
PARTITION_KEY = Symbol("x-opt-partition-key")
SELECTOR = "apache.org:selector-filter:string"
EPOCH = "com.microsoft:epoch"
RUNTIME_METRIC = "com.microsoft:enable-receiver-runtime-metric"

_SELECTOR = re.compile(
    r"amqp\.annotation\.(x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time)\s*(>=|>)\s*'([^']*)'"
)


def parse_selector(text: str | None) -> Position:
    """The SDK's selector (azure-eventhub `_utils.py` `event_position_selector`) as a position."""
    if not text:
        return Position("end")
    match = _SELECTOR.search(text)
    if match is None:
        raise ValueError(f"unsupported selector {text!r}")
    field, op, value = match.groups()
    inclusive = op == ">="
    if field == "x-opt-offset":
        if value == "-1":
            return Position("start")
        if value == "@latest":
            return Position("end")
        return Position("offset", int(value), inclusive)
    if field == "x-opt-sequence-number":
        return Position("sequence", int(value), inclusive)
    return Position("time", int(value), inclusive)


def _selector_of(link: Link) -> str | None:
    for key, value in link.source_filters.items():
        if str(key) == SELECTOR or (
            hasattr(value, "descriptor") and str(value.descriptor) == SELECTOR
        ):
            inner = value.value if hasattr(value, "value") else value
            return inner.decode() if isinstance(inner, bytes) else str(inner)
    return None


class ProducerHandler(BaseLinkHandler):
    def __init__(
        self, model: EventHubsModel, hub: str, partition_id: str | None, guard: Any
    ) -> None:
        self.model = model
        self.hub = hub
        self.partition_id = partition_id
        self.guard = guard  # fault controls: server-busy, apply-then-drop

    def on_transfer(self, link: Link, delivery: Delivery) -> None:
        if refused_send(link, delivery, self.guard, MAX_MESSAGE_SIZE):
            return
        try:
            batched = delivery.message_format == amqp_message.BATCH_FORMAT
            outer = amqp_message.parse(delivery.payload)
            # Every event is checked whole once: a batch's events are its data sections.
            for section in outer.data_sections() if batched else (delivery.payload,):
                amqp_message.check(section)
            events = amqp_message.unbatch(outer) if batched else [outer]
        except DecodeError as error:
            link.settle(delivery.delivery_id, rejected("amqp:decode-error", str(error)))
            return
        key = outer.annotations.get(PARTITION_KEY)
        if self.partition_id is not None:
            part = self.model.partition(self.hub, self.partition_id)
        else:
            part = self.model.partitions[
                (
                    self.hub.lower(),
                    self.model.route(self.hub, str(key) if key is not None else None),
                )
            ]
        rows = self.model.append(part, [_annotator(event, key) for event in events])
        log.debug(
            "appended %d to %s/%d at %d",
            len(rows),
            self.hub,
            part.index,
            rows[0].seq if rows else -1,
        )
        if self.guard.drop_after("send", link):
            return
        if not delivery.settled:
            link.settle(delivery.delivery_id, ACCEPTED_STATE)


def _annotator(event: amqp_message.Message, key: Any) -> Any:
    def build(seq: int, offset: int, enqueued_ms: int) -> bytes:
        annotations: dict[Any, Any] = {
            SEQUENCE: seq, OFFSET: str(offset), ENQUEUED: Timestamp(enqueued_ms),
        }  # fmt: skip
        event_key = event.annotations.get(PARTITION_KEY, key)
        if event_key is not None:
            annotations[PARTITION_KEY] = str(event_key)
        return amqp_message.encode_message(event, annotations=annotations)

    return build


class ConsumerHandler(BaseLinkHandler):
    """One consumer link: delivers from its position as credit allows; an owner-level reader."""

    def __init__(self, model: EventHubsModel, part: Partition, group: str, link: Link) -> None:
        self.model = model
        self.part = part
        self.group = group
        self.link = link
        epoch = link.properties.get(EPOCH)
        self.owner_level: int | None = int(epoch) if epoch is not None else None
        selector = _selector_of(link)
        self.next_seq = model.start_sequence(part, parse_selector(selector))
        log.debug("reader on %s/%d from %d (%s)", part.hub, part.index, self.next_seq, selector)
        self.settled = link.snd_settle_mode == 1
        self.tag = 0
        # track_last_enqueued_event_properties: every delivery says where the partition ends.
        wanted = link.desired_capabilities or []
        self.runtime_metric = RUNTIME_METRIC in {str(c) for c in wanted}

    def displace(self, condition: str, description: str) -> None:
        self.link.detach(condition, description)

    def wake(self) -> None:
        if self.link.can_send():
            guarded(self.link, self.pump, self.link)  # woken by a producer's append

    def pump(self, link: Link) -> None:
        while link.can_send():
            rows = self.model.read(self.part, self.next_seq, min(link.credit, 300))
            if not rows:
                return
            for row in rows:
                if not link.can_send():
                    return
                self.tag += 1
                body = self._with_runtime_metric(row.body) if self.runtime_metric else row.body
                link.send(body, self.tag.to_bytes(8, "big"), settled=self.settled)
                self.next_seq = row.seq + 1

    def _with_runtime_metric(self, body: bytes) -> bytes:
        """The last-enqueued properties as delivery annotations (azure-eventhub _utils.py
        get_last_enqueued_event_properties)."""
        part = self.part
        return amqp_message.with_delivery_annotations(body, {
            Symbol("last_enqueued_sequence_number"): part.next_seq - 1,
            Symbol("last_enqueued_offset"): str(part.last_offset),
            Symbol("last_enqueued_time_utc"): Timestamp(part.last_enqueued_ms),
            Symbol("runtime_info_retrieval_time_utc"): Timestamp(self.model.clock()),
        })  # fmt: skip

    def on_flow(self, link: Link) -> None:
        self.pump(link)

    def on_detach(self, _link: Link) -> None:
        self.model.close_reader(self.part, self.group, self)


class RefusedPosition(BaseLinkHandler):
    """A reader whose start position the partition does not have: the link attaches, then is
    detached with the error as the client asks for events (as the service closes such a
    receiver: the Java client reports it from `MessageReceiver.onClose`; the Python SDK surfaces
    a detach after attach to `on_error`, a refused attach only as endless re-attaching)."""

    def __init__(self, condition: str, description: str) -> None:
        self.condition = condition
        self.description = description

    def on_flow(self, link: Link) -> None:
        link.detach(self.condition, self.description)


_CONSUMER = re.compile(r"^([^/]+)/ConsumerGroups/([^/]+)/Partitions/([^/]+)$", re.IGNORECASE)
_PRODUCER = re.compile(r"^([^/]+)(?:/Partitions/([^/]+))?$", re.IGNORECASE)


def attach(
    model: EventHubsModel, link: Link, path: str, guard: Faults
) -> ProducerHandler | ConsumerHandler | RefusedPosition | None:
    """The handler for an Event Hubs link at `path`, or None when `path` names no hub."""
    hub = path.split("/", 1)[0]
    if hub.lower() not in model.hubs:
        return None
    try:
        if link.sends:
            match = _CONSUMER.match(path)
            if match is None:
                raise LinkRefused("amqp:not-found", f"'{path}' is not a consumer address")
            _, group, partition_id = match.groups()
            model.check_consumer_group(hub, group)
            part = model.partition(hub, partition_id)
            try:
                handler = ConsumerHandler(model, part, group, link)
            except ReaderRefused as error:
                if error.condition != OUT_OF_RANGE:
                    raise
                return RefusedPosition(error.condition, error.description)
            model.open_reader(part, group, handler)
            link.reply_properties = (
                {Symbol(EPOCH): handler.owner_level} if handler.owner_level is not None else {}
            )
            return handler
        match = _PRODUCER.match(path)
        if match is None:
            raise LinkRefused("amqp:not-found", f"'{path}' is not a producer address")
        if match.group(2) is not None:
            model.partition(hub, match.group(2))
        link.max_message_size = MAX_MESSAGE_SIZE
        return ProducerHandler(model, hub, match.group(2), guard)
    except EntityNotFound as error:
        raise LinkRefused("amqp:not-found", str(error)) from None
    except ReaderRefused as error:
        raise LinkRefused(error.condition, error.description) from None
    except ValueError as error:
        raise LinkRefused("amqp:invalid-field", str(error)) from None


def management(model: EventHubsModel) -> Operation:
    """The `$management` READ operations (azure-eventhub aio/_client_base_async.py)."""

    def operate(_link: Link, request: amqp_message.Message) -> Reply:
        app = request.application_properties or {}
        if str(app.get("operation")) != "READ":
            raise ManagementError(
                400, "amqp:not-implemented", f"unsupported operation {app.get('operation')!r}"
            )
        name = str(app.get("name"))
        kind = str(app.get("type"))
        try:
            hub = model.hub(name)
            if kind == "com.microsoft:eventhub":
                return Reply(200, "OK", {
                    "name": hub.name,
                    "created_at": Timestamp(model.created_ms[hub.name.lower()]),
                    "partition_count": hub.partition_count,
                    "partition_ids": Array([str(i) for i in range(hub.partition_count)]),
                })  # fmt: skip
            if kind == "com.microsoft:partition":
                partition_id = str(app.get("partition"))
                props = model.properties(model.partition(name, partition_id))
                return Reply(200, "OK", {
                    "name": hub.name,
                    "partition": partition_id,
                    "begin_sequence_number": props["begin_sequence_number"],
                    "last_enqueued_sequence_number": props["last_enqueued_sequence_number"],
                    "last_enqueued_offset": props["last_enqueued_offset"],
                    "last_enqueued_time_utc": Timestamp(int(props["last_enqueued_time_utc"])),  # type: ignore[call-overload]
                    "is_partition_empty": props["is_partition_empty"],
                })  # fmt: skip
        except EntityNotFound as error:
            raise ManagementError(404, "amqp:not-found", str(error)) from None
        raise ManagementError(400, "amqp:not-implemented", f"unsupported type {kind!r}")

    return operate
