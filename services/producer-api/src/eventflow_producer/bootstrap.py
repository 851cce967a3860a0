"""The one place that chooses adapters: emulators (local or compose) or Azure, by `settings.mode`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import structlog
from azure.core.exceptions import AzureError
from azure.cosmos import PartitionKey

from eventflow_producer.adapters.cosmos_event_store import CosmosEventStore
from eventflow_producer.adapters.cosmos_store import PARTITION_KEY_PATH, CosmosOrderStore
from eventflow_producer.settings import Settings

LOG = structlog.get_logger("eventflow_producer.bootstrap")
STARTUP_TIMEOUT_S = 120.0


async def open_cosmos_client(settings: Settings, stack: AsyncExitStack) -> Any:
    """The SDK's aio client: with the key of an emulator (local, compose), or with the managed
    identity in Azure. Its aiohttp session does not read the environment (`trust_env=False`):
    aiohttp's default looks up proxies and ~/.netrc in a worker thread for every request, which
    more than doubled the client CPU per operation here (docs/performance.md). No proxy from the
    environment is used for Cosmos DB, then."""
    import aiohttp  # noqa: PLC0415
    from azure.core.pipeline.transport import AioHttpTransport  # noqa: PLC0415
    from azure.cosmos.aio import CosmosClient  # noqa: PLC0415

    assert settings.cosmos_endpoint is not None
    session = await stack.enter_async_context(aiohttp.ClientSession(trust_env=False))
    transport = AioHttpTransport(session=session, session_owner=False)
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
    """The orders container, created (TTL on, no default expiry) where the service may create it.
    Retries while the store is still starting (emulators in compose)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    delay = 0.5
    while True:
        try:
            if not settings.creates_containers:
                container = client.get_database_client(settings.database).get_container_client(
                    settings.orders_container
                )
                await container.read()
                return container
            database = await client.create_database_if_not_exists(settings.database)
            return await database.create_container_if_not_exists(
                id=settings.orders_container,
                partition_key=PartitionKey(path=PARTITION_KEY_PATH),
                default_ttl=-1,
            )
        except AzureError as error:
            if time.monotonic() > deadline:
                raise
            LOG.warning("cosmos not ready; retrying", error=type(error).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[CosmosOrderStore]:
    """The Cosmos order store for `settings.mode` and the write pattern, with its clients closed
    on exit: the outbox's and entity-first's (which is given no events to write) is the same
    store; event-first appends events and reads a folded read model."""
    async with AsyncExitStack() as stack:
        client = await open_cosmos_client(settings, stack)
        container = await _container(settings, client)
        LOG.info(
            "store ready",
            mode=settings.mode,
            database=settings.database,
            container=settings.orders_container,
            write_pattern=settings.write_pattern,
        )
        if settings.write_pattern == "event-first":
            yield CosmosEventStore(
                container, idempotency_ttl_seconds=settings.idempotency_ttl_seconds
            )
        else:
            yield CosmosOrderStore(
                container,
                event_ttl_seconds=settings.event_ttl_seconds,
                idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            )
