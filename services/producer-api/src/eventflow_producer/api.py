"""The HTTP surface: routes, request and response models, and how errors become problems."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Header, Path, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from eventflow_contracts import OrderLine
from eventflow_contracts.auth import (
    READ_ROLE,
    WRITE_ROLE,
    Authenticator,
    AuthError,
    Caller,
    Role,
    authorize,
)
from eventflow_contracts.values import (
    MAX_LINES_PER_ORDER,
    CurrencyCode,
    CustomerId,
    Money,
    Quantity,
    Reason,
    Sku,
    UnitPrice,
)
from eventflow_producer.domain import Order, RuleBroken, add_item, cancel, submit
from eventflow_producer.middleware import RequestContext, RequestGuard
from eventflow_producer.ports import OrderStore, StoreConfigurationError, StoreUnavailableError
from eventflow_producer.problems import FieldProblem, component_schemas, described, problem
from eventflow_producer.service import (
    CreateOrder,
    EventsNotKeptError,
    IdempotencyConflictError,
    OrderNotFoundError,
    OrderService,
    Outcome,
    PreconditionFailedError,
    PreconditionRequiredError,
    etag_of,
)
from eventflow_producer.settings import Settings

LOG = structlog.get_logger("eventflow_producer")
ORDER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


@dataclass(frozen=True)
class WriteStrategy:
    """What the write pattern decides for the app; the bootstrap builds it (`write_strategy`)."""

    open_store: Callable[[], AbstractAsyncContextManager[OrderStore]]
    """Opens the store for the app's lifetime (the lifespan)."""
    keeps_events: bool = True
    """False in entity-first: only the order is written, and an order's events answer 404."""
    description: str = "Orders."
    """The OpenAPI document's description of the API."""


FatalHandler = Callable[[str], None]
"""Told why the process must stop (a setup a retry cannot fix); it stops the server."""


def _not_connected() -> StoreUnavailableError:
    return StoreUnavailableError("the store is still connecting", retry_after_seconds=2.0)


class LineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: Sku
    quantity: Quantity
    unit_price: UnitPrice

    def to_line(self) -> OrderLine:
        return OrderLine(sku=self.sku, quantity=self.quantity, unit_price=self.unit_price)


class CreateOrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerId
    currency: CurrencyCode
    lines: list[LineIn] = Field(default_factory=list, max_length=MAX_LINES_PER_ORDER)


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason


class LineOut(BaseModel):
    sku: str
    quantity: int
    unit_price: Money


class OrderOut(BaseModel):
    id: str
    customer_id: str
    currency: str
    status: str
    version: int
    lines: list[LineOut]
    total: Money
    cancel_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, order: Order) -> OrderOut:
        return cls(
            id=order.id, customer_id=order.customer_id, currency=order.currency,
            status=order.status.value, version=order.version, total=order.total,
            lines=[LineOut(sku=line.sku, quantity=line.quantity, unit_price=line.unit_price) for line in order.lines],
            cancel_reason=order.cancel_reason, created_at=order.created_at, updated_at=order.updated_at,
        )  # fmt: skip


async def get_service(request: Request) -> OrderService:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, which cost about
    # a tenth of the producer's CPU per request (benchmarks/producer.py).
    service: OrderService | None = request.app.state.service
    if service is None:
        raise _not_connected()
    return service


ServiceDep = Annotated[OrderService, Depends(get_service)]
BEARER = HTTPBearer(
    auto_error=False, scheme_name="EntraID", bearerFormat="JWT",
    description="An Entra ID v2 access token for this API: app role Orders.ReadWrite for commands, "
    "Orders.Read (or Orders.ReadWrite) for reads; a user's token also needs the scope "
    "user_impersonation. docs/operations.md says how to get one.",
)  # fmt: skip


def _caller_with(role: Role) -> Callable[..., Awaitable[Caller]]:
    async def caller(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> Caller:
        """The authenticated caller, allowed `role`; raises AuthError (401, 403, 503)."""
        authenticator: Authenticator = request.app.state.auth
        found = await authenticator.caller(request.headers.get("authorization"))
        request.state.caller = found.object_id  # logged: the object id only, never the token
        return authorize(found, role)

    return caller


Reader = Annotated[Caller, Depends(_caller_with(READ_ROLE))]
Writer = Annotated[Caller, Depends(_caller_with(WRITE_ROLE))]
OrderIdPath = Annotated[str, Path(pattern=ORDER_ID_PATTERN, max_length=64, description="order id")]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='the ETag the change is based on, e.g. "3" (428 when missing, 412 when stale)',
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$"),
]


def _respond(response: Response, request: Request, outcome: Outcome) -> OrderOut:
    response.headers["ETag"] = etag_of(outcome.order)
    request.state.log = {"order_id": outcome.order.id, "event_ids": list(outcome.event_ids)}
    return OrderOut.of(outcome.order)


def _traceparent(request: Request) -> str | None:
    value: str | None = getattr(request.state, "traceparent", None)
    return value


def routes(app: FastAPI) -> None:
    change_problems = described(400, 401, 403, 404, 409, 412, 413, 415, 422, 428, 503)

    @app.post("/orders", status_code=201, response_model=OrderOut, tags=["orders"],
              responses=described(400, 401, 403, 409, 413, 415, 422, 503))  # fmt: skip
    async def create_order(
        caller: Writer, body: CreateOrderIn, request: Request, response: Response,
        service: ServiceDep, idempotency_key: IdempotencyKey = None,
    ) -> OrderOut:  # fmt: skip
        """Open an order. Emits OrderCreated. Repeat with the same Idempotency-Key safely: a key
        belongs to its caller (another caller's same key opens another order)."""
        command = CreateOrder(
            body.customer_id, body.currency, tuple(line.to_line() for line in body.lines)
        )
        outcome = await service.create(
            command, idempotency_key=idempotency_key, traceparent=_traceparent(request),
            caller=caller.object_id,
        )  # fmt: skip
        response.headers["Location"] = f"/orders/{outcome.order.id}"
        if outcome.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return _respond(response, request, outcome)

    @app.get(
        "/orders/{order_id}",
        response_model=OrderOut,
        tags=["orders"],
        responses=described(401, 403, 404, 422, 503),
    )
    async def read_order(
        _: Reader, order_id: OrderIdPath, request: Request, response: Response, service: ServiceDep
    ) -> OrderOut:
        """The order, with its ETag."""
        return _respond(response, request, Outcome(await service.get(order_id)))

    @app.post(
        "/orders/{order_id}/items",
        response_model=OrderOut,
        tags=["orders"],
        responses=change_problems,
    )
    async def add_order_item(
        _: Writer, order_id: OrderIdPath, body: LineIn, request: Request, response: Response, service: ServiceDep,
        if_match: IfMatch = None,
    ) -> OrderOut:  # fmt: skip
        """Add a line to an open order. Emits OrderItemAdded."""
        line = body.to_line()
        outcome = await service.change(
            order_id, if_match=if_match, traceparent=_traceparent(request),
            change=lambda order, now: add_item(order, line, now),
        )  # fmt: skip
        return _respond(response, request, outcome)

    @app.post(
        "/orders/{order_id}/submit",
        response_model=OrderOut,
        tags=["orders"],
        responses=change_problems,
    )
    async def submit_order(
        _: Writer,
        order_id: OrderIdPath,
        request: Request,
        response: Response,
        service: ServiceDep,
        if_match: IfMatch = None,
    ) -> OrderOut:
        """Submit an open order with lines. Emits OrderSubmitted."""
        outcome = await service.change(
            order_id, if_match=if_match, change=submit, traceparent=_traceparent(request)
        )
        return _respond(response, request, outcome)

    @app.post(
        "/orders/{order_id}/cancel",
        response_model=OrderOut,
        tags=["orders"],
        responses=change_problems,
    )
    async def cancel_order(
        _: Writer, order_id: OrderIdPath, body: CancelIn, request: Request, response: Response, service: ServiceDep,
        if_match: IfMatch = None,
    ) -> OrderOut:  # fmt: skip
        """Cancel an order that is not cancelled yet. Emits OrderCancelled."""
        outcome = await service.change(
            order_id, if_match=if_match, traceparent=_traceparent(request),
            change=lambda order, now: cancel(order, body.reason, now),
        )  # fmt: skip
        return _respond(response, request, outcome)

    @app.get("/orders/{order_id}/events", response_model=list[dict[str, Any]], tags=["orders"],
             responses=described(401, 403, 404, 422, 503))  # fmt: skip
    async def list_order_events(
        _: Reader, order_id: OrderIdPath, request: Request, service: ServiceDep
    ) -> list[dict[str, Any]]:
        """The order's stored events (CloudEvents, structured JSON) in sequence order: the outbox's while their TTL keeps them, every one in event-first; none in entity-first (404 events-not-kept)."""
        request.state.log = {"order_id": order_id}
        return await service.events(order_id)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses=described(503))
    async def readyz(request: Request) -> dict[str, str]:
        """The store answers (503 while it is still connecting or does not answer)."""
        store: OrderStore | None = request.app.state.store
        if store is None:
            raise _not_connected()
        await store.check()
        return {"status": "ready"}


def _field_problems(error: RequestValidationError) -> list[FieldProblem]:
    return [
        FieldProblem(location=list(item["loc"]), message=item["msg"], kind=item["type"])
        for item in error.errors()[:20]
    ]


def error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        return problem(422, "validation-error", "Invalid request", "the request does not match the API's schema",
                       instance=request.url.path, errors=_field_problems(error))  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        codes = {400: "malformed-body", 404: "not-found", 405: "method-not-allowed"}
        return problem(error.status_code, codes.get(error.status_code, "http-error"), str(error.detail),
                       instance=request.url.path, headers=dict(error.headers or {}))  # fmt: skip

    @app.exception_handler(RuleBroken)
    async def rule_broken(request: Request, error: RuleBroken) -> Response:
        return problem(
            409,
            error.code,
            "The order's state does not allow this",
            error.detail,
            instance=request.url.path,
        )

    @app.exception_handler(OrderNotFoundError)
    async def not_found(request: Request, _: OrderNotFoundError) -> Response:
        return problem(404, "order-not-found", "No such order", instance=request.url.path)

    @app.exception_handler(EventsNotKeptError)
    async def events_not_kept(request: Request, _: EventsNotKeptError) -> Response:
        return problem(404, "events-not-kept", "This producer stores no events",
                       "the entity-first write pattern writes the order only; its events are derived from "
                       "the order's versions by the publisher", instance=request.url.path)  # fmt: skip

    @app.exception_handler(PreconditionRequiredError)
    async def precondition_required(request: Request, _: PreconditionRequiredError) -> Response:
        return problem(428, "if-match-required", "If-Match required",
                       "send the order's ETag in If-Match", instance=request.url.path)  # fmt: skip

    @app.exception_handler(PreconditionFailedError)
    async def precondition_failed(request: Request, _: PreconditionFailedError) -> Response:
        return problem(412, "stale-etag", "If-Match is stale",
                       "the order changed since it was read: read it again", instance=request.url.path)  # fmt: skip

    @app.exception_handler(IdempotencyConflictError)
    async def idempotency(request: Request, error: IdempotencyConflictError) -> Response:
        status = 422 if error.code == "idempotency-key-reused" else 409
        return problem(
            status, error.code, "Idempotency-Key conflict", error.detail, instance=request.url.path
        )

    @app.exception_handler(AuthError)
    async def refused(request: Request, error: AuthError) -> Response:
        # The reason is the validation's own sentence: never the token or its claims.
        LOG.info("caller refused", status=error.status, reason=error.detail)
        return problem(error.status, error.code, error.title, error.detail,
                       instance=request.url.path, headers=error.headers)  # fmt: skip

    @app.exception_handler(StoreUnavailableError)
    async def unavailable(request: Request, error: StoreUnavailableError) -> Response:
        LOG.warning("store unavailable", detail=str(error))
        return problem(503, "store-unavailable", "Store unavailable", "retry later", instance=request.url.path,
                       retry_after_seconds=error.retry_after_seconds)  # fmt: skip

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        LOG.exception("unhandled error", error_type=type(error).__name__)
        return problem(500, "internal-error", "Internal error", instance=request.url.path)


def _complete_the_openapi_document(app: FastAPI) -> None:
    """If-Match is required, but a missing one must answer 428 (precondition required), not the
    422 FastAPI gives a missing required header: optional in code, required in the OpenAPI. The
    problem responses refer to the Problem schema among the components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(component_schemas())
        for path in schema["paths"].values():
            for operation in path.values():
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "header" and parameter["name"] == "If-Match":
                        parameter["required"] = True
                        parameter["schema"] = {"type": "string", "minLength": 1}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _log_fatal(reason: str) -> None:
    LOG.error("cannot start", reason=reason)


def create_app(
    settings: Settings, strategy: WriteStrategy, on_fatal: FatalHandler = _log_fatal
) -> FastAPI:
    """The ASGI app. `strategy.open_store` opens the store for the app's lifetime. The app
    waits up to `settings.startup_wait_seconds` for it, then answers anyway while it keeps
    connecting: liveness 200, readiness and every store route 503 until the store is open. A
    StoreConfigurationError goes to `on_fatal`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = app.state.service = None
        async with AsyncExitStack() as stack:
            stack.push_async_callback(app.state.auth.close)  # the key set's HTTP session

            async def connect() -> None:
                store = await stack.enter_async_context(strategy.open_store())
                app.state.store = store
                app.state.service = OrderService(
                    store, source=settings.event_source, keeps_events=strategy.keeps_events
                )

            def settled(task: asyncio.Task[None]) -> None:
                error = None if task.cancelled() else task.exception()
                if isinstance(error, StoreConfigurationError):
                    on_fatal(str(error))
                elif error is not None:
                    LOG.error("the store could not be opened", exc_info=error)
                    on_fatal(f"the store could not be opened: {type(error).__name__}")

            connecting = asyncio.create_task(connect(), name="open-store")
            connecting.add_done_callback(settled)
            await asyncio.wait({connecting}, timeout=settings.startup_wait_seconds)
            try:
                yield
            finally:
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)

    app = FastAPI(
        title="eventflow orders API", version="1.0.0", lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operation ids: create_order, ...
        description=strategy.description,
    )  # fmt: skip
    app.state.auth = Authenticator(settings.auth_config())
    routes(app)
    _complete_the_openapi_document(app)
    error_handlers(app)
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContext)
    return app
