"""The one error type that decoding raises, with a machine-readable reason."""

from __future__ import annotations

from enum import StrEnum


class ErrorReason(StrEnum):
    """Why bytes could not become an event. Consumers dead-letter with this value as the reason."""

    TOO_LARGE = "too-large"
    """The encoded event is larger than the configured maximum."""
    INVALID_JSON = "invalid-json"
    """The bytes are not UTF-8 JSON."""
    NOT_A_CLOUDEVENT = "not-a-cloudevent"
    """Valid JSON, but not a CloudEvents 1.0 structured-mode object
    (no specversion, id, source or type)."""
    INVALID_ENVELOPE = "invalid-envelope"
    """A CloudEvent, but an attribute this system relies on is missing or malformed
    (subject, time, partitionkey, sequence, traceparent, datacontenttype, data)."""
    UNKNOWN_TYPE = "unknown-type"
    """The type names no event this library knows."""
    UNSUPPORTED_VERSION = "unsupported-version"
    """A known event, in a version this library cannot read (newer than current, or retired)."""
    INVALID_DATA = "invalid-data"
    """The data does not satisfy the schema of the event's type and version."""


class ContractError(ValueError):
    """Raised when bytes or values do not satisfy an event contract.

    `reason` is stable and machine-readable; `detail` is a short human-readable explanation that
    never includes the payload itself (it may be large or sensitive).
    """

    def __init__(self, reason: ErrorReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
