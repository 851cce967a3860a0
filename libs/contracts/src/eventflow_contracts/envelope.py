"""CloudEvents 1.0 envelopes in structured JSON mode, and their encoding to and from bytes.

Profile of CloudEvents this system uses (stricter than the spec where the pipeline needs it):

- required: specversion "1.0", id (at most 128 characters: it becomes the Service Bus MessageId),
  source, type, subject (the order id), time (RFC 3339 with an offset), data (a JSON object);
- `datacontenttype` is "application/json" (or absent, which means the same in structured mode);
  `dataschema` names the schema of the type and version;
- extension `partitionkey` (CloudEvents partitioning extension): the order id, equal to
  `data.order_id`; it routes to the Cosmos partition, Event Hubs partition and Service Bus session;
- extension `sequence` (CloudEvents sequence extension): a lexicographically orderable string,
  here the order's version zero-padded to 20 digits, so string order and numeric order agree;
- extensions `traceparent` / `tracestate` (CloudEvents distributed tracing extension, W3C format).

Other extension attributes are ignored on read, so a producer may add its own.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson
from pydantic import ValidationError

from eventflow_contracts.errors import ContractError, ErrorReason
from eventflow_contracts.events import EventData, OrderEvent
from eventflow_contracts.registry import model_for_type, upcast

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
"""The content type of an encoded event (structured mode)."""
DATA_CONTENT_TYPE = "application/json"
DEFAULT_MAX_EVENT_BYTES = 256 * 1024
"""Service Bus Standard accepts 256 KB per message; the whole pipeline honours that bound."""
MAX_ID_LENGTH = 128
"""Service Bus MessageId and SessionId are at most 128 characters."""
SEQUENCE_WIDTH = 20
MAX_SEQUENCE = 10**SEQUENCE_WIDTH - 1
MAX_TRACESTATE_LENGTH = 512

_TRACEPARENT_RE = re.compile(
    r"^(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?$"
)
_SEQUENCE_RE = re.compile(r"^[0-9]{1,20}$")

D = TypeVar("D", bound=EventData)


def is_valid_traceparent(value: str) -> bool:
    """Whether `value` is a W3C Trace Context traceparent (version 00, or a later one)."""
    match = _TRACEPARENT_RE.fullmatch(value)
    if match is None or match["version"] == "ff":
        return False
    if match["version"] == "00" and match["rest"] is not None:
        return False
    return match["trace_id"] != "0" * 32 and match["parent_id"] != "0" * 16


def format_sequence(sequence: int) -> str:
    """The wire form of a sequence number: zero-padded so that string order is numeric order."""
    return str(sequence).zfill(SEQUENCE_WIDTH)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a `Z`, e.g. 2026-01-02T03:04:05.000006Z."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def dataschema_for(event_type: str) -> str:
    """The `dataschema` URI of an event type: names the committed schema file of that version."""
    return f"urn:eventflow:schema:{event_type}"


def _invalid(detail: str) -> ContractError:
    return ContractError(ErrorReason.INVALID_ENVELOPE, detail)


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRouting:
    """What a router needs from an event without validating its data: the envelope's attributes."""

    id: str
    source: str
    type: str
    subject: str
    time: datetime
    partitionkey: str
    sequence: int
    traceparent: str | None = None
    tracestate: str | None = None

    def __post_init__(self) -> None:
        for name in ("id", "source", "type", "subject", "partitionkey"):
            value = getattr(self, name)
            if not value:
                raise _invalid(f"{name} must be a non-empty string")
            if len(value) > MAX_ID_LENGTH and name in ("id", "partitionkey", "subject"):
                raise _invalid(f"{name} is longer than {MAX_ID_LENGTH} characters")
        if self.time.tzinfo is None:
            raise _invalid("time must carry a UTC offset")
        if not 1 <= self.sequence <= MAX_SEQUENCE:
            raise _invalid(f"sequence must be between 1 and {MAX_SEQUENCE}")
        if self.traceparent is not None and not is_valid_traceparent(self.traceparent):
            raise _invalid("traceparent is not a W3C traceparent")
        if self.tracestate is not None and len(self.tracestate) > MAX_TRACESTATE_LENGTH:
            raise _invalid(f"tracestate is longer than {MAX_TRACESTATE_LENGTH} characters")


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudEvent(Generic[D]):
    """An event in its envelope. `type`, `subject` and `partitionkey` follow from `data`."""

    id: str
    source: str
    time: datetime
    sequence: int
    data: D
    traceparent: str | None = None
    tracestate: str | None = None
    routing: EventRouting = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        routing = EventRouting(
            id=self.id,
            source=self.source,
            type=self.data.event_type(),
            subject=self.data.order_id,
            time=self.time,
            partitionkey=self.data.order_id,
            sequence=self.sequence,
            traceparent=self.traceparent,
            tracestate=self.tracestate,
        )
        object.__setattr__(self, "routing", routing)

    @property
    def type(self) -> str:
        return self.routing.type

    @property
    def partitionkey(self) -> str:
        return self.routing.partitionkey


def new_event(
    data: D,
    *,
    source: str,
    sequence: int,
    traceparent: str | None = None,
    tracestate: str | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> CloudEvent[D]:
    """Wrap event data in an envelope with a fresh UUID id and the current UTC time.

    Raises ContractError(INVALID_ENVELOPE) when an attribute breaks the profile.
    """
    return CloudEvent(
        id=event_id or str(uuid.uuid4()),
        source=source,
        time=time or datetime.now(UTC),
        sequence=sequence,
        data=data,
        traceparent=traceparent,
        tracestate=tracestate,
    )


def to_json_dict(event: CloudEvent[Any]) -> dict[str, Any]:
    """The structured-mode JSON object of an event (what `encode_event` serialises)."""
    document: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "subject": event.routing.subject,
        "time": format_time(event.time),
        "datacontenttype": DATA_CONTENT_TYPE,
        "dataschema": dataschema_for(event.type),
        "partitionkey": event.partitionkey,
        "sequence": format_sequence(event.sequence),
    }
    if event.traceparent is not None:
        document["traceparent"] = event.traceparent
    if event.tracestate is not None:
        document["tracestate"] = event.tracestate
    document["data"] = event.data.model_dump(mode="json")
    return document


def encode_event(event: CloudEvent[Any], *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> bytes:
    """UTF-8 JSON bytes of the event (CONTENT_TYPE).

    Raises ContractError(TOO_LARGE) when they exceed max_bytes.
    """
    raw = orjson.dumps(to_json_dict(event))
    if len(raw) > max_bytes:
        raise ContractError(
            ErrorReason.TOO_LARGE, f"encoded event is {len(raw)} bytes; the limit is {max_bytes}"
        )
    return raw


def _load_object(raw: bytes, max_bytes: int) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise ContractError(ErrorReason.TOO_LARGE, f"{len(raw)} bytes; the limit is {max_bytes}")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ContractError(ErrorReason.INVALID_JSON, f"not UTF-8 JSON: {error}") from None
    if not isinstance(document, dict):
        raise ContractError(
            ErrorReason.NOT_A_CLOUDEVENT, f"a JSON {type(document).__name__}, not an object"
        )
    return document


def _required_core(document: dict[str, Any]) -> None:
    for name in ("specversion", "id", "source", "type"):
        if not isinstance(document.get(name), str):
            raise ContractError(
                ErrorReason.NOT_A_CLOUDEVENT, f"attribute {name!r} is missing or not a string"
            )
    if document["specversion"] != SPEC_VERSION:
        raise ContractError(
            ErrorReason.NOT_A_CLOUDEVENT,
            f"specversion {document['specversion'][:20]!r} is not {SPEC_VERSION!r}",
        )


def _string(document: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = document.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _invalid(f"attribute {name!r} is missing or not a string")
    return value


def _time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _invalid("time is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise _invalid("time must carry a UTC offset")
    return moment


def _sequence(value: str) -> int:
    if not _SEQUENCE_RE.fullmatch(value):
        raise _invalid("sequence must be a string of 1 to 20 decimal digits")
    return int(value)


def _routing(document: dict[str, Any]) -> EventRouting:
    _required_core(document)
    content_type = _string(document, "datacontenttype", required=False)
    if content_type not in (None, DATA_CONTENT_TYPE):
        raise _invalid(f"datacontenttype must be {DATA_CONTENT_TYPE!r}")
    if "data_base64" in document:
        raise _invalid("data_base64 is not accepted; data must be a JSON object")
    if not isinstance(document.get("data"), dict):
        raise _invalid("data must be a JSON object")
    return EventRouting(
        id=document["id"],
        source=document["source"],
        type=document["type"],
        subject=_string(document, "subject", required=True) or "",
        time=_time(_string(document, "time", required=True) or ""),
        partitionkey=_string(document, "partitionkey", required=True) or "",
        sequence=_sequence(_string(document, "sequence", required=True) or ""),
        traceparent=_string(document, "traceparent", required=False),
        tracestate=_string(document, "tracestate", required=False),
    )


def read_routing(raw: bytes, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> EventRouting:
    """Read an event's envelope attributes without validating its data or knowing its type.

    For routers (the subscriber): everything needed to address a message, nothing re-encoded.
    Raises ContractError (TOO_LARGE, INVALID_JSON, NOT_A_CLOUDEVENT, INVALID_ENVELOPE).
    """
    return _routing(_load_object(raw, max_bytes))


def _validation_summary(error: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in item['loc']) or '<data>'}: {item['msg']}"
        for item in error.errors(include_url=False, include_input=False)[:5]
    ]
    more = error.error_count() - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def decode_event(raw: bytes, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> CloudEvent[OrderEvent]:
    """Decode, validate and upcast an encoded event to the current version of its type.

    Never raises anything but ContractError; its `reason` says which check failed.
    """
    document = _load_object(raw, max_bytes)
    routing = _routing(document)
    model = model_for_type(routing.type)
    try:
        data = model.model_validate(document["data"])
    except ValidationError as error:
        raise ContractError(
            ErrorReason.INVALID_DATA, f"{routing.type}: {_validation_summary(error)}"
        ) from None
    if data.order_id != routing.partitionkey or data.order_id != routing.subject:
        raise _invalid("partitionkey and subject must equal data.order_id")
    try:
        current = upcast(data)
    except ValidationError as error:
        raise ContractError(
            ErrorReason.INVALID_DATA, f"{routing.type} upcast: {_validation_summary(error)}"
        ) from None
    return CloudEvent(
        id=routing.id,
        source=routing.source,
        time=routing.time,
        sequence=routing.sequence,
        data=current,
        traceparent=routing.traceparent,
        tracestate=routing.tracestate,
    )
