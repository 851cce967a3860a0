"""One hub batch → the inbox: route every event, send what must go, retry, and only then let the
caller checkpoint. Nothing is checkpointed past an event the inbox did not accept."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from eventflow_subscriber.routing import (
    Filtered,
    HubEvent,
    InboxMessage,
    route,
    too_large,
    type_names,
)

LOG = structlog.get_logger("eventflow_subscriber.forwarding")


@dataclass(frozen=True, slots=True)
class SendResult:
    batch_sizes: tuple[int, ...]
    too_large: tuple[int, ...] = ()


class SendRefusedError(Exception):
    """The inbox did not accept a batch. `busy` when the broker asked the client to back off."""

    def __init__(self, detail: str, *, busy: bool = False) -> None:
        super().__init__(detail)
        self.busy = busy


class ForwardingFailedError(Exception):
    """Sends kept failing past the retry budget: raised out of the callback as the last resort
    (the SDK then closes the partition and a later claim resumes from the last checkpoint)."""


class InboxSender(Protocol):
    async def send(self, messages: Sequence[InboxMessage]) -> SendResult:
        """Send in order, in batches; messages too large for an empty batch are skipped and listed
        in `too_large`. Raises SendRefusedError; batches before the refused one may have gone."""
        ...


class ForwarderObserver:
    def received(self, events: int) -> None: ...

    def forwarded(self, messages: int) -> None: ...

    def filtered(self, events: int) -> None: ...

    def markers(self, messages: int) -> None: ...

    def send_retry(self, *, busy: bool) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with full jitter; a server-busy answer waits at least `busy_delay`
    (the SDK's guidance for ServerBusy is 10 s)."""

    base_delay: float = 0.2
    max_delay: float = 30.0
    busy_delay: float = 10.0
    max_attempts: int = 12

    def delay(self, attempt: int, *, busy: bool) -> float:
        jittered = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** min(attempt, 16)))
        return max(jittered, self.busy_delay) if busy else jittered


class Forwarder:
    def __init__(
        self,
        sender: InboxSender,
        *,
        hub: str,
        subscribed: Collection[str] | None,
        max_message_bytes: int,
        lanes: int,
        retry: RetryPolicy | None = None,
        observer: ForwarderObserver | None = None,
    ) -> None:
        self._sender = sender
        # One Service Bus sender serves every partition's callback, and the SDK's senders are not
        # coroutine-safe: sends take turns.
        self._sending = asyncio.Lock()
        self._hub = hub
        self._subscribed = None if subscribed is None else type_names(subscribed)
        self._max_message_bytes = max_message_bytes
        self._lanes = lanes
        self._retry = retry or RetryPolicy()
        self._observer = observer or ForwarderObserver()

    async def forward(self, events: Sequence[HubEvent]) -> None:
        """Returns once every event is in the inbox (forwarded, or as a marker) or filtered."""
        self._observer.received(len(events))
        messages: list[InboxMessage] = []
        sources: list[HubEvent] = []
        for event in events:
            routed = route(
                event,
                hub=self._hub,
                subscribed=self._subscribed,
                max_message_bytes=self._max_message_bytes,
                lanes=self._lanes,
            )
            if isinstance(routed, Filtered):
                self._observer.filtered(1)
                continue
            if routed.is_marker:
                LOG.error(
                    "unroutable event",
                    partition=event.partition_id,
                    offset=event.offset,
                    reason=routed.properties["reason"],
                )
            messages.append(routed)
            sources.append(event)
        if not messages:
            return
        result = await self._send(messages)
        markers = [too_large(sources[index], self._hub) for index in result.too_large]
        if markers:
            LOG.error("events too large for the inbox sent as markers", count=len(markers))
            await self._send(markers)
        sent = [m for index, m in enumerate(messages) if index not in set(result.too_large)]
        self._observer.markers(sum(m.is_marker for m in sent) + len(markers))
        self._observer.forwarded(sum(not m.is_marker for m in sent))

    async def _send(self, messages: Sequence[InboxMessage]) -> SendResult:
        for attempt in range(1, self._retry.max_attempts + 1):
            try:
                async with self._sending:
                    return await self._sender.send(messages)
            except SendRefusedError as error:
                self._observer.send_retry(busy=error.busy)
                if attempt == self._retry.max_attempts:
                    raise ForwardingFailedError(
                        f"inbox refused {attempt} times: {error}"
                    ) from error
                delay = self._retry.delay(attempt, busy=error.busy)
                LOG.warning(
                    "inbox refused the batch; retrying",
                    attempt=attempt,
                    busy=error.busy,
                    retry_in_s=round(delay, 3),
                    error=str(error),
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")
