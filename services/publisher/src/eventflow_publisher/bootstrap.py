"""The service's one place of wiring: the adapters for `settings.mode` (emulators, local or
compose, or Azure), and the workers for the write pattern (`processors`: which documents carry the
events, and whether a read-model maintainer runs); the rest of the service never reads
`settings.write_pattern`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import structlog
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.cosmos import PartitionKey
from azure.cosmos.exceptions import CosmosClientTimeoutError
from azure.eventhub.exceptions import AuthenticationError, EventHubError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

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
ATTEMPT_TIMEOUT_S = 15.0
"""One connection attempt's bound: a stalled endpoint is an outage too, and the wait's log line
must keep coming."""
RETRY_MAX_WAIT_S = 10.0
T = TypeVar("T")
_REFUSALS = ("not-found", "unauthorized-access")  # AMQP conditions that no retry changes


@dataclass(frozen=True)
class Resources:
    feed: CosmosChangeFeed
    leases: CosmosLeaseStore
    poison: CosmosPoisonStore
    producer: Any
    read_model_leases: CosmosLeaseStore | None = None
    """event-first: the read-model maintainer's leases (a prefix of its own) and read models."""
    read_models: CosmosReadModelStore | None = None


class ConfigurationError(Exception):
    """A backend refuses this service for a reason a retry cannot fix (a wrong key, a missing role
    assignment, a container that is not there and is not ours to create): the process exits 2."""


@dataclass(frozen=True)
class Backend:
    name: str  # as the logs and errors say it
    credential: str  # what to check when it refuses this service
    missing: str  # what a 404 means is not there


def _backends(settings: Settings) -> tuple[Backend, Backend]:
    """Cosmos DB and Event Hubs, as this setup names them."""
    role = "its role assignment" if settings.mode == "azure" else None
    return (
        Backend("Cosmos DB", role or "PUBLISHER_COSMOS_KEY",
                f"container {settings.database}/{settings.orders_container} or "
                f"{settings.database}/{settings.leases_container}, and this service does not "
                "create them (PUBLISHER_CREATE_CONTAINERS)"),
        Backend("Event Hubs", role or "PUBLISHER_EVENTHUBS_CONNECTION_STRING",
                f"event hub {settings.eventhub_name}"),
    )  # fmt: skip


def _amqp_condition(error: BaseException) -> str | None:
    """An Event Hubs error's AMQP condition without its "amqp:" ("not-found", ...), if any."""
    return error.error if isinstance(error, EventHubError) else None


def _setup_problem(backend: Backend, error: BaseException) -> ConfigurationError | None:
    """What in the setup an error names (exit 2), or None when it is not a setup problem."""
    status = getattr(error, "status_code", None)
    condition = _amqp_condition(error)
    if (
        status in (401, 403)
        or isinstance(error, AuthenticationError)
        or condition == "unauthorized-access"
    ):
        return ConfigurationError(f"{backend.name} refused this service"
                                  f"{f' ({status})' if status else ''}: check {backend.credential}")  # fmt: skip
    if isinstance(error, ClientAuthenticationError):
        return ConfigurationError(f"no credential for {backend.name}: {error.message}")
    if status == 404 or condition == "not-found":
        return ConfigurationError(f"{backend.name} has no {backend.missing}")
    return None


def _outage(settings: Settings, error: BaseException) -> bool:
    """Whether `error` is a backend not answering yet (to wait out): no connection, no answer in
    time, 408/429/449/5xx, or the orders container not there yet where the producer beside this
    service creates it (emulators)."""
    if isinstance(error, HttpResponseError):
        status = error.status_code or 0
        return status in (408, 429, 449) or status >= 500 or (
            status == 404 and settings.creates_containers
        )  # fmt: skip
    if isinstance(error, AuthenticationError) or _amqp_condition(error) in _REFUSALS:
        return False
    return isinstance(
        error, TimeoutError | ServiceRequestError | ServiceResponseError | CosmosClientTimeoutError
        | EventHubError,
    )  # fmt: skip


async def _attempt(stack: AsyncExitStack, connect: Callable[[AsyncExitStack], Awaitable[T]]) -> T:
    """`connect`'s result, its clients opened afresh: closed if it fails or is silent past
    ATTEMPT_TIMEOUT_S, handed to `stack` if it succeeds."""
    async with AsyncExitStack() as attempt, asyncio.timeout(ATTEMPT_TIMEOUT_S):
        connected = await connect(attempt)
        stack.push_async_exit(attempt.pop_all())
    return connected


async def waited_for(
    backend: Backend, settings: Settings, stack: AsyncExitStack,
    connect: Callable[[AsyncExitStack], Awaitable[T]],
) -> T:  # fmt: skip
    """`connect`'s result once `backend` answers: tenacity retries the attempt while it meets an
    outage (`_outage`, or silence past ATTEMPT_TIMEOUT_S), with backoff, for as long as that lasts,
    logging "still waiting for <backend>" before each retry; only the caller's cancellation (the
    stop signal) ends the wait. Raises ConfigurationError for a setup a retry cannot fix."""

    def still_waiting(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        LOG.warning(
            f"still waiting for {backend.name}", error=type(error).__name__,
            attempts=state.attempt_number, retry_in_s=round(state.upcoming_sleep, 1),
        )  # fmt: skip

    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda error: _outage(settings, error)), before_sleep=still_waiting,
        wait=wait_exponential_jitter(multiplier=0.5, max=RETRY_MAX_WAIT_S), reraise=True,
    )  # fmt: skip
    try:
        return await retrying(_attempt, stack, connect)
    except Exception as error:
        if problem := _setup_problem(backend, error):
            raise problem from error
        raise


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


async def _producer(settings: Settings, stack: AsyncExitStack) -> Any:
    """The Event Hubs producer for the mode, its send link open."""
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
    producer = await stack.enter_async_context(producer)
    await producer.create_batch()  # opens the send link: the hub answers, and takes this identity
    return producer


async def _containers(settings: Settings, stack: AsyncExitStack) -> tuple[Any, Any, str]:
    """The orders container (the producer owns and creates it), the leases container (created
    where this service may create containers) and the orders container's identity."""
    cosmos = await open_cosmos_client(settings, stack)
    database = cosmos.get_database_client(settings.database)
    if settings.creates_containers:
        database = await cosmos.create_database_if_not_exists(settings.database)
        leases = await database.create_container_if_not_exists(
            id=settings.leases_container, partition_key=PartitionKey(path="/id"), default_ttl=-1
        )
    else:
        leases = database.get_container_client(settings.leases_container)
        await leases.read()
    orders = database.get_container_client(settings.orders_container)
    return orders, leases, await CosmosChangeFeed(orders).identity()


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    """The clients and stores, closed on exit, once Cosmos DB and Event Hubs answer
    (`waited_for`: waits out outages, raises ConfigurationError for a wrong setup)."""
    cosmos, eventhubs = _backends(settings)
    async with AsyncExitStack() as stack:
        orders, leases, identity = await waited_for(
            cosmos, settings, stack, lambda attempt: _containers(settings, attempt)
        )
        producer = await waited_for(
            eventhubs, settings, stack, lambda attempt: _producer(settings, attempt)
        )
        feed = CosmosChangeFeed(orders)
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
        stalled_after=settings.stalled_after_seconds, handover_timeout=settings.handover_timeout_seconds,
        lease_call_timeout=settings.lease_call_timeout_seconds, lease_margin=settings.lease_margin_seconds,
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
