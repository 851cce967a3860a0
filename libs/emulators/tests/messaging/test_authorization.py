"""Authorization without the wire: which link a connection's tokens allow, per entity and
namespace, and that a link is checked again each time it is used ("Service Bus authentication and
authorization with SAS"; the SDKs renew tokens before they expire, so only a client that does not
can meet the use-time check, which is why it is pinned here and not through an SDK)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest

from eventflow_emulators.messaging.amqp.connection import LinkRefused
from eventflow_emulators.messaging.auth import Grant
from eventflow_emulators.messaging.broker import MessagingBroker
from eventflow_emulators.messaging.eventhubs.model import EventHubsModel
from eventflow_emulators.messaging.servicebus.model import ServiceBusModel
from eventflow_emulators.messaging.store import Store


@dataclass
class FakeConnection:
    hostname: str | None = "127.0.0.1"
    grants: list[Grant] = field(default_factory=list)


@dataclass
class FakeLink:
    connection: FakeConnection
    permit: Any = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MessagingBroker]:
    store = Store(tmp_path)
    yield MessagingBroker(EventHubsModel([], store), ServiceBusModel([], store), {"k": "key"})
    store.close()


def link_with(*grants: Grant, hostname: str | None = "127.0.0.1") -> FakeLink:
    return FakeLink(FakeConnection(hostname, list(grants)))


def test_a_queue_token_reaches_its_queue_and_dead_letter_queue_only(
    broker: MessagingBroker,
) -> None:
    later = time.time() + 60
    link = link_with(Grant("127.0.0.1", "a", later))
    broker._authorize(link, "a")  # type: ignore[arg-type]
    broker._authorize(link, "a/$deadletterqueue")  # type: ignore[arg-type]
    with pytest.raises(LinkRefused) as refused:
        broker._authorize(link, "b")  # type: ignore[arg-type]
    assert refused.value.condition == "amqp:unauthorized-access"


def test_a_token_of_another_namespace_reaches_nothing(broker: MessagingBroker) -> None:
    link = link_with(Grant("elsewhere.servicebus.windows.net", "", time.time() + 60))
    with pytest.raises(LinkRefused):
        broker._authorize(link, "a")  # type: ignore[arg-type]


def test_a_link_is_detached_when_used_after_its_token_expired(broker: MessagingBroker) -> None:
    link = link_with(Grant("127.0.0.1", "a", time.time() + 60))
    broker._authorize(link, "a")  # type: ignore[arg-type]
    assert link.permit() is None
    link.connection.grants = [Grant("127.0.0.1", "a", time.time() - 1)]
    condition, description = link.permit()
    assert condition == "amqp:unauthorized-access"
    assert "expired" in description
    link.connection.grants.append(Grant("127.0.0.1", "", time.time() + 60))  # a renewed token
    assert link.permit() is None


def _token(resource: str, expires: int) -> str:
    encoded = quote(resource, safe="").lower()
    signature = base64.b64encode(
        hmac.new(b"key", f"{encoded}\n{expires}".encode(), hashlib.sha256).digest()
    ).decode()
    return f"SharedAccessSignature sr={encoded}&sig={quote(signature, safe='')}&se={expires}&skn=k"


def test_renewed_tokens_replace_each_other_and_expired_ones_are_dropped(
    broker: MessagingBroker,
) -> None:
    """A connection lives for hours and its SDK puts a fresh token for each entity before the
    last one expires: the connection keeps one grant per resource, not one per renewal."""
    link = link_with()
    now = int(time.time())
    for renewal in range(50):
        for entity in ("a", "b"):
            resource = f"sb://127.0.0.1/{entity}"
            put = SimpleNamespace(application_properties={"operation": "put-token", "name": resource},
                                  body_value=_token(resource, now + 60 + renewal))  # fmt: skip
            broker._put_token(link, put)  # type: ignore[arg-type]
    grants = link.connection.grants
    assert sorted((g.path, g.expires) for g in grants) == [("a", now + 109), ("b", now + 109)]

    expired = Grant("127.0.0.1", "c", time.time() - 1)
    grants.append(expired)
    resource = "sb://127.0.0.1/a"
    put = SimpleNamespace(application_properties={"operation": "put-token", "name": resource},
                          body_value=_token(resource, now + 200))  # fmt: skip
    broker._put_token(link, put)  # type: ignore[arg-type]
    assert expired not in grants
    assert sorted((g.path, g.expires) for g in grants) == [("a", now + 200), ("b", now + 109)]
    broker._authorize(link, "b")  # type: ignore[arg-type]
