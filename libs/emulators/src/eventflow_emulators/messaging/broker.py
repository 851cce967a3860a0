"""The broker: routes each attached link to `$cbs`, a management node, a hub or a queue."""

from __future__ import annotations

import logging
import time

from .amqp import message as amqp_message
from .amqp.connection import Connection, Link, LinkHandler, LinkRefused
from .auth import TokenRefused, verify
from .eventhubs import links as eventhubs_links
from .eventhubs.model import EventHubsModel
from .faults import Faults
from .nodes import ManagementError, Operation, Reply, ReplyLinks, attach_node, entity_path
from .servicebus import links as servicebus_links
from .servicebus.model import ServiceBusModel

log = logging.getLogger("eventflow_emulators.messaging")


class MessagingBroker:
    def __init__(
        self, eventhubs: EventHubsModel, servicebus: ServiceBusModel, keys: dict[str, str]
    ) -> None:
        self.eventhubs = eventhubs
        self.servicebus = servicebus
        self.keys = keys
        self.faults = Faults()
        self.connections: set[Connection] = set()
        self.replies = ReplyLinks()
        self.stalled_until = 0.0
        self._eventhubs_management = eventhubs_links.management(eventhubs)

    # --- Broker protocol -------------------------------------------------------------------

    async def attach(self, link: Link) -> LinkHandler:
        path = entity_path(link.address)
        lowered = path.lower()
        log.debug("attach %s %s props=%s filters=%s", "reader" if link.sends else "writer", path,
                  link.properties, link.source_filters)  # fmt: skip
        if lowered == "$cbs":
            return attach_node(self.replies, link, "$cbs", self._put_token)
        self._authorize(link, lowered)
        if lowered == "$management":
            return attach_node(
                self.replies, link, "$management", self._guarded(self._eventhubs_management)
            )
        if lowered.endswith("/$management"):
            queue = path.rsplit("/", 1)[0]
            operate = servicebus_links.management(self.servicebus, queue, self.faults)
            return attach_node(self.replies, link, path, self._guarded(operate))
        if link.sends:
            refusal = self.faults.refusal("receive")
            if refusal is not None:
                raise LinkRefused(*refusal)
        handler: LinkHandler | None = eventhubs_links.attach(
            self.eventhubs, link, path, self.faults
        )
        if handler is None:
            handler = await servicebus_links.attach(self.servicebus, link, path, self.faults)
        if handler is None:
            raise LinkRefused(
                "amqp:not-found",
                f"The messaging entity 'sb://emulator/{path}' could not be found.",
            )
        return handler

    def connection_lost(self, connection: Connection) -> None:
        self.connections.discard(connection)

    # --- CBS and authorization -------------------------------------------------------------

    def _put_token(self, link: Link, request: amqp_message.Message) -> Reply:
        app = request.application_properties or {}
        if str(app.get("operation")) != "put-token":
            raise ManagementError(400, "amqp:not-implemented", "only put-token is supported")
        token = request.body_value
        if isinstance(token, bytes):
            token = token.decode()
        try:
            grant = verify(str(token), self.keys)
        except TokenRefused as error:
            # 401 is what the services answer; the SDKs raise their authentication error.
            raise ManagementError(
                401, "com.microsoft:auth-failed", f"InvalidSignature: {error}"
            ) from None
        link.connection.authorized[grant.path] = grant.expires
        return Reply(202, "Accepted")

    def _authorize(self, link: Link, path: str) -> None:
        now = time.time()
        grants = link.connection.authorized
        # A management node serves whatever the connection's tokens allow; any grant will do.
        is_management = path == "$management" or path.endswith("/$management")
        if is_management and any(expires > now for expires in grants.values()):
            return
        for granted, expires in grants.items():
            if expires > now and (granted in ("", path) or path.startswith(granted + "/")):
                return
        raise LinkRefused(
            "amqp:unauthorized-access",
            f"Unauthorized access. 'Listen'/'Send' claim(s) are required to perform this operation. Resource: '{path}'.",
        )

    def _guarded(self, operate: Operation) -> Operation:
        def run(link: Link, request: amqp_message.Message) -> Reply:
            refusal = self.faults.refusal("management")
            if refusal is not None:
                raise ManagementError(503, *refusal)
            reply = operate(link, request)
            if self.faults.drop_after("management", link):
                return Reply(-1)  # applied; the connection is gone before the answer
            return reply

        return run

    # --- fault controls --------------------------------------------------------------------

    def drop_connections(self) -> int:
        dropped = list(self.connections)
        for connection in dropped:
            connection.abort()
        return len(dropped)

    def stall_remaining(self) -> float:
        return max(0.0, self.stalled_until - time.monotonic())

    def stall(self, seconds: float) -> int:
        """Stop answering for `seconds`: open connections and those opened meanwhile."""
        self.stalled_until = time.monotonic() + seconds
        for connection in self.connections:
            connection.stall(seconds)
        return len(self.connections)
