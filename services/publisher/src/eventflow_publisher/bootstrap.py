"""The service's one place of wiring: the adapters for `settings.mode` (emulators, local or
compose, or Azure), and the workers for the write pattern (`processors`: which documents carry the
events, and whether a read-model maintainer runs); the rest of the service never reads
`settings.write_pattern`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import structlog
from azure.core.exceptions import AzureError
from azure.cosmos import PartitionKey

from eventflow_contracts.orders_container import WritePattern
from eventflow_publisher.adapters.cosmos_changefeed import (
    CosmosChangeFeed,
    CosmosLeaseStore,
    CosmosPoisonStore,
)
from eventflow_publisher.adapters.cosmos_read_model import CosmosReadModelStore
from eventflow_publisher.adapters.eventhubs_sender import EventHubsSender
from eventflow_publisher.changefeed import ChangeFeedProcessor, ProcessorOptions
from eventflow_publisher.deriving import ENTITY_FIRST, OUTBOX, EventSource
from eventflow_publisher.observability import PublisherMetrics
from eventflow_publisher.publishing import EventPublisher, SendHealth
from eventflow_publisher.readmodel import ReadModelMaintainer
from eventflow_publisher.settings import Settings

LOG = structlog.get_logger("eventflow_publisher.bootstrap")
STARTUP_TIMEOUT_S = 120.0
T = TypeVar("T")


@dataclass(frozen=True)
class Resources:
    feed: CosmosChangeFeed
    leases: CosmosLeaseStore
    poison: CosmosPoisonStore
    producer: Any
    read_model_leases: CosmosLeaseStore | None = None
    """event-first: the read-model maintainer's leases (a prefix of its own) and read models."""
    read_models: CosmosReadModelStore | None = None


async def retrying(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Retry while a dependency is still starting (emulators, or the producer creating the
    orders container), for up to STARTUP_TIMEOUT_S."""
    deadline, delay = time.monotonic() + STARTUP_TIMEOUT_S, 0.5
    while True:
        try:
            return await attempt()
        except AzureError as error:
            if time.monotonic() > deadline:
                raise
            LOG.warning(f"{what} not ready; retrying", error=type(error).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


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


async def _producer(settings: Settings, stack: AsyncExitStack) -> Any:
    """The Event Hubs producer for the mode."""
    from azure.eventhub.aio import EventHubProducerClient as AzureProducer  # noqa: PLC0415

    if settings.mode != "azure":
        assert settings.eventhubs_connection_string is not None
        producer = AzureProducer.from_connection_string(
            settings.eventhubs_connection_string.get_secret_value(),
            eventhub_name=settings.eventhub_name,
        )
    else:
        from azure.identity.aio import DefaultAzureCredential  # noqa: PLC0415

        credential = await stack.enter_async_context(DefaultAzureCredential())
        assert settings.eventhubs_namespace is not None
        producer = AzureProducer(settings.eventhubs_namespace, settings.eventhub_name, credential)
    return await stack.enter_async_context(producer)


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    async with AsyncExitStack() as stack:
        cosmos = await open_cosmos_client(settings, stack)
        producer = await _producer(settings, stack)
        database = cosmos.get_database_client(settings.database)
        if settings.creates_containers:
            database = await retrying(
                "cosmos", lambda: cosmos.create_database_if_not_exists(settings.database)
            )
            leases = await retrying("cosmos", lambda: database.create_container_if_not_exists(
                id=settings.leases_container, partition_key=PartitionKey(path="/id"), default_ttl=-1))  # fmt: skip
        else:
            leases = database.get_container_client(settings.leases_container)
        orders = database.get_container_client(settings.orders_container)
        await retrying("the orders container", orders.read)  # the producer owns and creates it
        feed = CosmosChangeFeed(orders)
        identity = await feed.identity()
        prefix = f"{settings.processor_name}:{identity}"
        LOG.info("resources ready", mode=settings.mode, prefix=prefix, hub=settings.eventhub_name,
                 write_pattern=settings.write_pattern)  # fmt: skip
        maintaining = maintains_read_models(settings.write_pattern)
        read_model_prefix = f"{settings.read_model_processor_name}:{identity}"
        yield Resources(
            feed, CosmosLeaseStore(leases, prefix), CosmosPoisonStore(leases, prefix), producer,
            read_model_leases=CosmosLeaseStore(leases, read_model_prefix) if maintaining else None,
            read_models=CosmosReadModelStore(orders) if maintaining else None,
        )  # fmt: skip


SOURCES: Final[dict[WritePattern, EventSource]] = {
    "outbox": OUTBOX, "entity-first": ENTITY_FIRST, "event-first": OUTBOX,
}  # fmt: skip
"""Which documents carry the events in each write pattern, and how an event is read from one."""


def maintains_read_models(pattern: WritePattern) -> bool:
    """event-first only: the events are the source of truth, and the producer's API reads the
    read models this service folds from them."""
    return pattern == "event-first"


def options_of(settings: Settings) -> ProcessorOptions:
    return ProcessorOptions(
        instance_name=settings.instance_name, start=settings.start, poll_delay=settings.poll_delay_seconds,
        max_poll_delay=settings.max_poll_delay_seconds, max_items=settings.max_items_per_page,
        acquire_interval=settings.acquire_interval_seconds, renew_interval=settings.renew_interval_seconds,
        expiry=settings.lease_expiry_seconds, lag_interval=settings.lag_interval_seconds,
        stalled_after=settings.stalled_after_seconds,
        oldest_change_limit=settings.event_ttl_seconds * settings.oldest_event_alert_share,
    )  # fmt: skip


def processors(
    settings: Settings, resources: Resources, *, health: SendHealth, metrics: PublisherMetrics
) -> list[ChangeFeedProcessor]:
    """The workers: the change feed processor that publishes the write pattern's events to Event
    Hubs; in event-first also a second one on the same container, with its own leases, that folds
    the events into the read models the producer's API reads."""
    publisher = EventPublisher(
        EventHubsSender(resources.producer), resources.poison, health=health, observer=metrics,
        source=SOURCES[settings.write_pattern],
    )  # fmt: skip
    publishing = ChangeFeedProcessor(
        feed=resources.feed, leases=resources.leases, handler=publisher,
        options=options_of(settings), observer=metrics,
    )  # fmt: skip
    if not maintains_read_models(settings.write_pattern):
        return [publishing]
    assert resources.read_model_leases is not None
    assert resources.read_models is not None
    maintaining = ChangeFeedProcessor(
        feed=resources.feed, leases=resources.read_model_leases,
        handler=ReadModelMaintainer(resources.read_models, resources.poison),
        options=options_of(settings), observer=metrics,
    )  # fmt: skip
    return [publishing, maintaining]
