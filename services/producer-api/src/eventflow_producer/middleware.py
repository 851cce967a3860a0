"""ASGI middleware: request guard (body size, media type), trace context, request logs."""

from __future__ import annotations

import secrets
import time
from typing import Any

import structlog
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventflow_contracts import is_valid_traceparent
from eventflow_contracts.tracing import current_trace_headers
from eventflow_producer.problems import problem

LOG = structlog.get_logger("eventflow_producer.requests")
_JSON_TYPES = ("application/json",)


def request_traceparent(incoming: str | None) -> str:
    """The traceparent of this request: its OpenTelemetry server span's (which continues the
    caller's trace), or without OpenTelemetry a new span id in the caller's trace or a new trace."""
    traceparent, _ = current_trace_headers()
    return traceparent or child_traceparent(incoming)


def child_traceparent(incoming: str | None) -> str:
    """A traceparent for this request: a new span in the caller's trace, or a new trace."""
    span = secrets.token_hex(8)
    if incoming and is_valid_traceparent(incoming):
        _, trace_id, _, flags = incoming.split("-")[:4]
        return f"00-{trace_id}-{span}-{flags}"
    return f"00-{secrets.token_hex(16)}-{span}-01"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";")[0].strip().lower()
    return media in _JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def _annotate_span(bound: dict[str, Any]) -> None:
    """The order (and events) a request changed, on its server span: `make trace` finds it."""
    span = trace.get_current_span()
    if "order_id" in bound:
        span.set_attribute("eventflow.order_id", str(bound["order_id"]))
    if bound.get("event_ids"):
        span.set_attribute("eventflow.event_ids", [str(i) for i in bound["event_ids"]])


class RequestGuard:
    """Reads a request body up to `max_body_bytes` (413 beyond), requires a JSON media type for a
    non-empty body (415), and hands the buffered body to the app."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and not _is_json(_header(scope, b"content-type")):
            await problem(415, "unsupported-media-type", "Unsupported media type",
                          "send the request body as application/json")(scope, receive, send)  # fmt: skip
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413, "body-too-large", "Body too large", f"the limit is {self.max_body_bytes} bytes"
        )
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


class RequestContext:
    """Gives each request a traceparent (request.state.traceparent) and logs one line per request:
    method, route, status, duration, and what handlers bound (order id, event ids)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        traceparent = request_traceparent(_header(scope, b"traceparent"))
        scope.setdefault("state", {})["traceparent"] = traceparent
        status = 500
        started = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # The server span ends with the response body: annotate it before.
                _annotate_span(scope["state"].get("log", {}))
            await send(message)

        with structlog.contextvars.bound_contextvars(trace_id=traceparent.split("-")[1]):
            try:
                await self.app(scope, receive, capture)
            finally:
                route: Any = scope.get("route")
                LOG.info(
                    "request",
                    method=scope["method"],
                    route=getattr(route, "path", scope["path"]),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    caller=scope["state"].get("caller"),
                    **scope["state"].get("log", {}),
                )
