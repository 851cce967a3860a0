"""The broker: routes each attached link to `$cbs`, a management node, a hub or a queue."""

from __future__ import annotations

import logging
import time

from .amqp import message as amqp_message
from .amqp.connection import Connection, Link, LinkHandler, LinkRefused
from .auth import (
    Grant,
    TokenRefused,
    covered,
    resource_host,
    resource_path,
    same_namespace,
    verify,
)
from .eventhubs import links as eventhubs_links
from .eventhubs.model import EventHubsModel
from .faults import Faults
from .nodes import ManagementError, Operation, Reply, ReplyLinks, attach_node, entity_path
from .servicebus import links as servicebus_links
from .servicebus.model import ServiceBusModel

log = logging.getLogger("eventflow_emulators.messaging")


def _unauthorized(path: str) -> str:
    return (
        "Unauthorized access. 'Listen'/'Send' claim(s) are required to perform this operation."
        f" Resource: '{path}'."
    )


def _expired(path: str) -> str:
    return f"The token for '{path}' has expired; put a new one on $cbs before using the link."


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
        if lowered == "$management":
            # Event Hubs' namespace-level node: each request names its hub and is authorized
            # on its own (`_authorize_request`); the link needs a token of this namespace.
            self._authorize(link, "")
            operate = self._authorize_request(self._eventhubs_management)
            return attach_node(self.replies, link, "$management", self._guarded(operate))
        # `<queue>/$management` and `<queue>/$deadletterqueue/$management` serve that entity.
        entity = lowered.removesuffix("/$management")
        self._authorize(link, entity)
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
        grant = self._verified(request.body_value, link.connection.hostname)
        audience = app.get("name")
        if audience is not None:
            # The token must reach the audience it is put for (service-bus-sas: a token is
            # scoped to its resource URI and everything under it).
            wanted = str(audience)
            if not grant.covers(resource_host(wanted) or grant.host, resource_path(wanted)):
                raise ManagementError(
                    401, "com.microsoft:auth-failed",
                    f"InvalidAudience: the token's resource does not cover '{wanted}'.",
                )  # fmt: skip
        # A token put for the same resource replaces the one before it (the SDKs renew theirs
        # before expiry for as long as a connection lives), and expired ones are dropped: a
        # long-lived connection holds one grant per resource, not one per renewal.
        now = time.time()
        grants = link.connection.grants
        grants[:] = [
            g for g in grants if g.expires > now and (g.host, g.path) != (grant.host, grant.path)
        ]
        grants.append(grant)
        return Reply(202, "Accepted")

    def _verified(self, token: object, hostname: str | None) -> Grant:
        """A valid token of this namespace, or a 401 (the SDKs raise their authentication
        error)."""
        text = token.decode() if isinstance(token, bytes) else str(token)
        try:
            grant = verify(text, self.keys)
        except TokenRefused as error:
            raise ManagementError(
                401, "com.microsoft:auth-failed", f"InvalidSignature: {error}"
            ) from None
        if not same_namespace(grant.host, hostname):
            raise ManagementError(
                401, "com.microsoft:auth-failed",
                f"InvalidAudience: the token was issued for the namespace '{grant.host}', not"
                f" '{hostname}'.",
            )  # fmt: skip
        return grant

    def _authorize(self, link: Link, path: str) -> None:
        """Refuse the link unless a token put on this connection reaches `path` ("" = any
        entity of the namespace); the link is checked again each time the client uses it."""
        connection = link.connection
        if covered(connection.grants, connection.hostname, path, time.time()) is None and not (
            path == "" and any(g.expires > time.time() for g in connection.grants)
        ):
            raise LinkRefused("amqp:unauthorized-access", _unauthorized(path))

        def permit() -> tuple[str, str] | None:
            now = time.time()
            if path == "":
                alive = any(g.expires > now for g in connection.grants)
            else:
                alive = covered(connection.grants, connection.hostname, path, now) is not None
            if alive:
                return None
            return "amqp:unauthorized-access", _expired(path)

        link.permit = permit

    def _authorize_request(self, operate: Operation) -> Operation:
        """Event Hubs `$management`: the request's hub must be reached by a token put on the
        connection or by the request's own `security_token` (azure-eventhub _client_base.py
        `_management_request` sends one with every request)."""

        def run(link: Link, request: amqp_message.Message) -> Reply:
            app = request.application_properties or {}
            hub = str(app.get("name") or "").lower()
            connection = link.connection
            if covered(connection.grants, connection.hostname, hub, time.time()) is not None:
                return operate(link, request)
            token = app.get("security_token")
            if token is not None:
                grant = self._verified(token, connection.hostname)
                if grant.covers(grant.host, hub):
                    return operate(link, request)
            raise ManagementError(401, "com.microsoft:auth-failed", _unauthorized(hub))

        return run

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
