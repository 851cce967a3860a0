"""The orders container: what the producer writes and the publisher reads, in each write pattern.

Producer and publisher are built and deployed apart and meet only in this container, so its layout
is a contract between them, versioned with the events. One container, partition key `/order_id`
(`PARTITION_KEY_PATH`), TTL on with no default expiry. The documents of one order share its
partition, so the producer writes an order and its events in one transactional batch:

| id                                    | kind          | written by                         | read by   |
| ------------------------------------- | ------------- | ---------------------------------- | --------- |
| `<order_id>`                          | `order`       | producer (outbox, entity-first);    | publisher |
|                                       |               | publisher's read-model maintainer  | (entity-first: the change feed) |
|                                       |               | (event-first)                      |           |
| `<order_id>:event:<sequence, 20 digits>` | `event`    | producer (outbox, event-first)     | publisher (the change feed) |
| `<order_id>:idempotency`              | `idempotency` | producer (a create with a key)     | producer  |

- `order`: the entity (customer, currency, lines, status, version, total, timestamps), the fields of
  `OrderStateChanged.v1`'s data.
- `event`: `event` is the CloudEvent JSON object as written, `sequence` its per-order sequence,
  `event_id` and `type` for queries; `ttl` is the outbox's expiry (outbox only: in event-first the
  events are the source of truth and never expire).
- `idempotency`: the fingerprint and first answer of a keyed create, with its own `ttl`.

Which documents carry the events on the change feed (`event_kind`): `event` documents in the
outbox and event-first patterns, the `order` documents themselves in entity-first (the publisher
derives one whole-state event per version it reads).
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

from eventflow_contracts.envelope import format_sequence

WritePattern = Literal["outbox", "entity-first", "event-first"]
"""How the producer feeds the flow (docs/patterns.md): `outbox` writes an order and its events in
one batch; `entity-first` writes the order only and the publisher derives events from its
versions; `event-first` writes the events only, the source of truth, and the publisher keeps a read
model of each order."""
WRITE_PATTERNS: Final[tuple[WritePattern, ...]] = get_args(WritePattern)

DocumentKind = Literal["order", "event", "idempotency"]
PARTITION_KEY_PATH: Final = "/order_id"


def order_document_id(order_id: str) -> str:
    """The id of an order's entity (or read model) document."""
    return order_id


def event_document_id(order_id: str, sequence: int) -> str:
    """One id per (order, sequence): a second writer of the same version conflicts (409)."""
    return f"{order_id}:event:{format_sequence(sequence)}"


def idempotency_document_id(order_id: str) -> str:
    """The id of the record of a keyed create (the key determines the order id)."""
    return f"{order_id}:idempotency"


def event_kind(pattern: WritePattern) -> DocumentKind:
    """The kind of document whose changes carry the events in `pattern`."""
    return "order" if pattern == "entity-first" else "event"


def keeps_events(pattern: WritePattern) -> bool:
    """Whether the producer stores events (and can list an order's events)."""
    return pattern != "entity-first"


def events_after_query(order_id: str, sequence: int) -> tuple[str, list[dict[str, Any]]]:
    """The query text and parameters that read an order's `event` documents after `sequence`, in
    sequence order (run it in the order's partition, `partition_key=order_id`)."""
    query = (
        "SELECT * FROM c WHERE c.order_id = @order_id AND c.kind = @kind"
        " AND c.sequence > @after ORDER BY c.sequence"
    )
    kind: DocumentKind = "event"
    return query, [
        {"name": "@order_id", "value": order_id},
        {"name": "@kind", "value": kind},
        {"name": "@after", "value": sequence},
    ]
