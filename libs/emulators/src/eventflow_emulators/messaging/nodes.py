"""Request/response nodes (`$cbs`, `$management`, `<queue>/$management`): the AMQP management
pattern (OASIS AMQP Management draft; azure-eventhub _pyamqp/management_link.py). The client
attaches a sending link and a receiving link to the same address on one session; each request's
reply goes back on the receiving link with `correlation-id` = the request's `message-id`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from .amqp import message as amqp_message
from .amqp.codec import DecodeError, Described, Symbol, ULong
from .amqp.connection import BaseLinkHandler, Delivery, Link, Session
from .amqp.frames import ACCEPTED, REJECTED, error_fields
from .faults import Faults

log = logging.getLogger("eventflow_emulators.messaging")

ACCEPTED_STATE = Described(ULong(ACCEPTED), [])


def rejected(condition: str, description: str) -> Described:
    return Described(ULong(REJECTED), [error_fields(condition, description)])


def refused_send(link: Link, delivery: Delivery, faults: Faults, limit: int) -> bool:
    """Reject a sent message while the emulator is told to be busy, or when it is bigger than
    the entity's max-message-size; True when it was rejected."""
    refusal = faults.refusal("send")
    if refusal is not None:
        link.settle(delivery.delivery_id, rejected(*refusal))
        return True
    if len(delivery.payload) > limit:
        link.settle(delivery.delivery_id, rejected(
            "amqp:link:message-size-exceeded",
            f"The received message (delivery-id:{delivery.delivery_id}, size:"
            f"{len(delivery.payload)} bytes) exceeds the limit ({limit} bytes)",
        ))  # fmt: skip
        return True
    return False


def entity_path(address: str) -> str:
    """`amqps://host:port/hub/Partitions/0` or `hub/Partitions/0` -> `hub/Partitions/0`."""
    if "://" in address:
        address = urlparse(address).path
    return address.strip("/")


@dataclass
class Reply:
    status: int
    description: str = ""
    value: Any = None
    error_condition: str | None = None


class ManagementError(Exception):
    def __init__(self, status: int, condition: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.condition = condition
        self.description = description


Operation = Callable[[Link, amqp_message.Message], Reply]


@dataclass(eq=False)
class ReplyLinks:
    """The receiving links of request/response pairs, by (session, address)."""

    links: dict[tuple[int, str], Link] = field(default_factory=dict)

    def find(self, session: Session, address: str) -> Link | None:
        return self.links.get((id(session), address))


class ResponseLinkHandler(BaseLinkHandler):
    """The client's receiving half: replies queue here until the client gives credit."""

    def __init__(self, registry: ReplyLinks, key: tuple[int, str]) -> None:
        self.registry = registry
        self.key = key
        self.pending: list[bytes] = []
        self.tag = 0

    def send(self, link: Link, payload: bytes) -> None:
        self.pending.append(payload)
        self.on_flow(link)

    def on_flow(self, link: Link) -> None:
        while self.pending and link.can_send():
            self.tag += 1
            link.send(self.pending.pop(0), self.tag.to_bytes(4, "big"), settled=True)

    def on_detach(self, link: Link) -> None:
        if self.registry.links.get(self.key) is link:
            del self.registry.links[self.key]


class RequestLinkHandler(BaseLinkHandler):
    """The client's sending half: each request runs `operation` and is answered on the pair."""

    def __init__(self, registry: ReplyLinks, address: str, operation: Operation) -> None:
        self.registry = registry
        self.address = address
        self.operation = operation

    def on_transfer(self, link: Link, delivery: Delivery) -> None:
        try:
            amqp_message.check(delivery.payload)
            request = amqp_message.parse(delivery.payload)
        except DecodeError as error:  # no message id to answer to: the transfer is refused
            link.settle(delivery.delivery_id, rejected("amqp:decode-error", str(error)))
            return
        try:
            reply = self.operation(link, request)
        except ManagementError as error:
            reply = Reply(error.status, error.description, None, error.condition)
        except Exception as error:  # an operation bug is a 500 to the client, not a dead broker
            log.exception("management operation failed")
            reply = Reply(500, str(error), None, "com.microsoft:internal-error")
        if not delivery.settled:
            link.settle(delivery.delivery_id, ACCEPTED_STATE)
        if reply.status < 0:
            return  # the operation asked for no answer (apply-then-drop)
        app: dict[Any, Any] = {
            "statusCode": reply.status, "statusDescription": reply.description,
            "status-code": reply.status, "status-description": reply.description,
        }  # fmt: skip
        if reply.error_condition:
            app["errorCondition"] = Symbol(reply.error_condition)
            app["error-condition"] = Symbol(reply.error_condition)
        payload = amqp_message.build(
            value=reply.value,
            application_properties=app,
            properties={"correlation_id": request.prop("message_id")},
        )
        reply_link = self.registry.find(link.session, self.address)
        if reply_link is None or not isinstance(reply_link.handler, ResponseLinkHandler):
            log.warning("no reply link for %s", self.address)
            return
        reply_link.handler.send(reply_link, payload)


def attach_node(
    registry: ReplyLinks, link: Link, address: str, operation: Operation
) -> ResponseLinkHandler | RequestLinkHandler:
    """The handler for either half of a request/response pair at `address`."""
    if link.sends:
        key = (id(link.session), address)
        registry.links[key] = link
        return ResponseLinkHandler(registry, key)
    return RequestLinkHandler(registry, address, operation)
