"""The one place that chooses adapters: emulators (local or compose) or Azure, by `settings.mode`."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import certifi
import structlog
from azure.core.exceptions import AzureError
from azure.cosmos import PartitionKey

from eventflow_consumer.adapters.cosmos_projection import PARTITION_KEY_PATH, CosmosProjectionStore
from eventflow_consumer.settings import Settings

LOG = structlog.get_logger("eventflow_consumer.bootstrap")
STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Resources:
    servicebus: Any
    store: CosmosProjectionStore


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


def tls_context() -> ssl.SSLContext:
    """The CA bundle the SDK uses by default (certifi's), loaded once per process. Without it the
    SDK builds a new SSL context for every connection, loading the bundle each time, even on a
    plain-TCP emulator connection; and it opens a connection per session receiver, so that was
    about 26 ms of CPU per session accept here (docs/performance.md)."""
    return ssl.create_default_context(cafile=certifi.where())


async def _servicebus(settings: Settings, stack: AsyncExitStack) -> Any:
    from azure.servicebus.aio import ServiceBusClient as AzureServiceBusClient  # noqa: PLC0415

    if settings.mode != "azure":
        assert settings.servicebus_connection_string is not None
        servicebus = AzureServiceBusClient.from_connection_string(
            settings.servicebus_connection_string.get_secret_value(), ssl_context=tls_context()
        )
    else:
        from azure.identity.aio import DefaultAzureCredential  # noqa: PLC0415

        credential = await stack.enter_async_context(DefaultAzureCredential())
        assert settings.servicebus_namespace is not None
        servicebus = AzureServiceBusClient(
            settings.servicebus_namespace, credential, ssl_context=tls_context()
        )
    return await stack.enter_async_context(servicebus)


async def _projections(settings: Settings, cosmos: Any) -> Any:
    """The projections container (created where the service may create it), retried while the
    store is still starting (an emulator started beside it)."""
    deadline, delay = time.monotonic() + STARTUP_TIMEOUT_S, 0.5
    while True:
        try:
            if not settings.creates_containers:
                database = cosmos.get_database_client(settings.database)
                return database.get_container_client(settings.projections_container)
            database = await cosmos.create_database_if_not_exists(settings.database)
            return await database.create_container_if_not_exists(
                id=settings.projections_container,
                partition_key=PartitionKey(path=PARTITION_KEY_PATH),
                default_ttl=-1,
            )
        except AzureError as error:
            if time.monotonic() > deadline:
                raise
            LOG.warning("cosmos not ready; retrying", error=type(error).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    async with AsyncExitStack() as stack:
        cosmos = await open_cosmos_client(settings, stack)
        servicebus = await _servicebus(settings, stack)
        container = await _projections(settings, cosmos)
        LOG.info(
            "resources ready",
            mode=settings.mode,
            inbox=settings.inbox_queue,
            policy=settings.poison_policy,
        )
        yield Resources(
            servicebus,
            CosmosProjectionStore(container, mark_ttl_seconds=settings.inbox_mark_ttl_seconds),
        )
