"""The publisher process (`eventflow_publisher.main`) with every handler call recorded as a JSON
line in $RECORD_HANDLER_CALLS: pid, feed range, start and end (the machine's monotonic clock,
shared by its processes), the documents, and whether the call returned. For the overlap count of
tests/integration/test_multiprocess_overlaps.py."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import orjson

from eventflow_publisher import main as entry
from eventflow_publisher.changefeed import LeaseContext
from eventflow_publisher.publishing import EventPublisher

_RECORD = open(os.environ["RECORD_HANDLER_CALLS"], "ab", buffering=0)  # noqa: SIM115 - the process's lifetime
_handle = EventPublisher.__call__


async def _recorded(
    self: EventPublisher, context: LeaseContext, documents: Sequence[dict[str, Any]]
) -> None:
    began, returned = time.monotonic(), False
    try:
        await _handle(self, context, documents)
        returned = True
    finally:
        span = context.feed_range["Range"]
        _RECORD.write(orjson.dumps({
            "pid": os.getpid(), "min": span["min"], "max": span["max"], "lease": context.lease_id,
            "start": began, "end": time.monotonic(), "ok": returned,
            "ids": [document.get("id") for document in documents],
        }) + b"\n")  # fmt: skip


EventPublisher.__call__ = _recorded  # type: ignore[method-assign]

if __name__ == "__main__":
    entry.main()
