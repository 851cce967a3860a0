"""The service's one place of wiring: the adapters for `settings.mode` (emulators, local or
compose, or Azure) and what the write pattern decides (`write_strategy`); the rest of the service
never reads `settings.write_pattern`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any, Final

import structlog
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
from azure.cosmos import PartitionKey
from tenacity import RetryCallState, retry, retry_if_exception, wait_exponential_jitter

from eventflow_contracts.orders_container import PARTITION_KEY_PATH, WritePattern, keeps_events
from eventflow_producer.adapters.cosmos_event_store import CosmosEventStore
from eventflow_producer.adapters.cosmos_store import CosmosOrderStore, unavailable_from
from eventflow_producer.api import WriteStrategy
from eventflow_producer.ports import OrderStore, StoreConfigurationError
from eventflow_producer.settings import Settings

LOG = structlog.get_logger("eventflow_producer.bootstrap")
ATTEMPT_TIMEOUT_S = 15.0
"""One connection attempt's bound: a stalled endpoint is an outage too, and the wait's log line
must keep coming."""
RETRY_MAX_WAIT_S = 10.0


async def open_cosmos_client(settings: Settings, stack: AsyncExitStack) -> Any:
    """The SDK's aio client: with the key of an emulator (local, compose), or with the managed
    identity in Azure. Its transport does not read the environment (`use_env_settings=False`):
    aiohttp's default looks up proxies and ~/.netrc in a worker thread for every request, which
    more than doubled the client CPU per operation here (docs/performance.md). No proxy from the
    environment is used for Cosmos DB, then."""
    from azure.core.pipeline.transport import AioHttpTransport  # noqa: PLC0415
    from azure.cosmos.aio import CosmosClient  # noqa: PLC0415

    assert settings.cosmos_endpoint is not None
    # Entered first: closed even when the client's own setup (`__aenter__`) fails or is given up.
    transport = await stack.enter_async_context(AioHttpTransport(use_env_settings=False))
    if settings.mode == "azure":
        from azure.identity.aio import DefaultAzureCredential  # noqa: PLC0415

        credential = await stack.enter_async_context(DefaultAzureCredential())
        client = CosmosClient(settings.cosmos_endpoint, credential=credential, transport=transport)
    else:
        assert settings.cosmos_key is not None
        # Endpoint discovery off: an emulator in compose advertises its own host name.
        client = CosmosClient(
            settings.cosmos_endpoint, credential=settings.cosmos_key.get_secret_value(),
            transport=transport, enable_endpoint_discovery=False, connection_verify=False,
        )  # fmt: skip
    return await stack.enter_async_context(client)


async def _container(settings: Settings, client: Any) -> Any:
    """The orders container, created (TTL on, no default expiry) where the service may create it."""
    if not settings.creates_containers:
        container = client.get_database_client(settings.database).get_container_client(
            settings.orders_container
        )
        await container.read()
        return container
    database = await client.create_database_if_not_exists(settings.database)
    return await database.create_container_if_not_exists(
        id=settings.orders_container, partition_key=PartitionKey(path=PARTITION_KEY_PATH),
        default_ttl=-1,
    )  # fmt: skip


def _setup_problem(settings: Settings, error: BaseException) -> StoreConfigurationError | None:
    """What in the setup an error names (exit 2, a restart cannot help), or None when it is an
    outage to wait out or something else to raise."""
    if isinstance(error, ClientAuthenticationError):
        return StoreConfigurationError(f"no credential for Cosmos DB: {error.message}")
    if not isinstance(error, HttpResponseError):
        return None
    if error.status_code in (401, 403):
        return StoreConfigurationError(
            f"Cosmos DB refused this service ({error.status_code}): check "
            + ("its role assignment" if settings.mode == "azure" else "PRODUCER_COSMOS_KEY")
        )
    if error.status_code == 404 and not settings.creates_containers:
        return StoreConfigurationError(
            f"Cosmos DB has no container {settings.database}/{settings.orders_container}, and this "
            "service does not create it (PRODUCER_CREATE_CONTAINERS)"
        )
    return None


def _is_outage(error: BaseException) -> bool:
    return isinstance(error, TimeoutError) or (
        isinstance(error, AzureError) and unavailable_from(error) is not None
    )


def _still_waiting(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    LOG.warning(
        "still waiting for Cosmos DB", error=type(error).__name__,
        attempts=state.attempt_number, retry_in_s=round(state.upcoming_sleep, 1),
    )  # fmt: skip


@retry(retry=retry_if_exception(_is_outage), before_sleep=_still_waiting, reraise=True,
       wait=wait_exponential_jitter(multiplier=0.5, max=RETRY_MAX_WAIT_S))  # fmt: skip
async def _attempt(settings: Settings, stack: AsyncExitStack) -> Any:
    """The orders container, its client opened afresh (the client's own setup, the account read in
    `__aenter__`, included): closed if the attempt fails or is silent past ATTEMPT_TIMEOUT_S,
    handed to `stack` if it succeeds. Retried (tenacity) while it meets an outage."""
    async with AsyncExitStack() as attempt, asyncio.timeout(ATTEMPT_TIMEOUT_S):
        container = await _container(settings, await open_cosmos_client(settings, attempt))
        stack.push_async_exit(attempt.pop_all())
    return container


async def _connected(settings: Settings, stack: AsyncExitStack) -> Any:
    """The orders container once Cosmos DB answers: waits out an outage (no connection, a stall
    past ATTEMPT_TIMEOUT_S, 408/429/449/5xx) with backoff for as long as it lasts, logging each
    wait; only the caller's cancellation (the stop signal) ends the wait. Raises
    StoreConfigurationError for a setup that a retry cannot fix."""
    try:
        return await _attempt(settings, stack)
    except Exception as error:
        if problem := _setup_problem(settings, error):
            raise problem from error
        raise


@asynccontextmanager
async def open_store(
    settings: Settings, store_of: Callable[[Any], OrderStore]
) -> AsyncIterator[OrderStore]:
    """The order store `store_of` makes of the orders container, with its clients closed on exit,
    once Cosmos DB answers (`_connected`: waits out outages, raises StoreConfigurationError for a
    wrong setup)."""
    async with AsyncExitStack() as stack:
        container = await _connected(settings, stack)
        LOG.info(
            "store ready",
            mode=settings.mode,
            database=settings.database,
            container=settings.orders_container,
            write_pattern=settings.write_pattern,
        )
        yield store_of(container)


DESCRIPTIONS: Final[dict[WritePattern, str]] = {  # the API's, by write pattern (docs/patterns.md)
    "outbox": "Orders with a transactional outbox: every change commits the order and its events together.",
    "entity-first": "Orders written as documents only; the publisher derives whole-state events from their "
    "versions on the change feed (GET /orders/{order_id}/events answers 404).",
    "event-first": "Orders as their events: every change appends events, the source of truth; a read model "
    "kept from the change feed serves reads, folded up to the latest event.",
}


def write_strategy(settings: Settings) -> WriteStrategy:
    """What `settings.write_pattern` decides: the store (the outbox's and entity-first's is the
    same store, given no events to write in entity-first; event-first appends events and reads a
    folded read model), whether events are kept, and the API's description. Nothing connects
    until the app opens the store."""
    pattern = settings.write_pattern

    def store_of(container: Any) -> OrderStore:
        if pattern == "event-first":
            return CosmosEventStore(
                container, idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
                timeout_seconds=settings.store_timeout_seconds,
            )  # fmt: skip
        return CosmosOrderStore(
            container, event_ttl_seconds=settings.event_ttl_seconds,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            timeout_seconds=settings.store_timeout_seconds,
        )  # fmt: skip

    return WriteStrategy(
        open_store=partial(open_store, settings, store_of), keeps_events=keeps_events(pattern),
        description=DESCRIPTIONS[pattern],
    )  # fmt: skip
