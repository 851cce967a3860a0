"""The one place that chooses adapters: emulators (local or compose) or Azure, by `settings.mode`;
and that builds the session worker (`worker_of`), for the service and its admin CLI."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import certifi
import structlog
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.cosmos import PartitionKey
from azure.cosmos.exceptions import CosmosClientTimeoutError
from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.exceptions import (
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
)
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from eventflow_consumer.adapters.cosmos_membership import MEMBERS_PARTITION_KEY_PATH
from eventflow_consumer.adapters.cosmos_projection import PARTITION_KEY_PATH, CosmosProjectionStore
from eventflow_consumer.handling import InboxHandler
from eventflow_consumer.observability import ConsumerMetrics
from eventflow_consumer.sessions import PoisonPolicy, SessionWorker, WorkerSettings
from eventflow_consumer.settings import Settings

LOG = structlog.get_logger("eventflow_consumer.bootstrap")
ATTEMPT_TIMEOUT_S = 15.0
"""One connection attempt's bound: a stalled endpoint is an outage too, and the wait's log line
must keep coming."""
RETRY_MAX_WAIT_S = 10.0
T = TypeVar("T")
_REFUSED = (ServiceBusAuthenticationError, ServiceBusAuthorizationError)


@dataclass(frozen=True)
class Resources:
    servicebus: Any
    store: CosmosProjectionStore
    members: Any = None  # the membership container (lanes' fair share); None without lanes
    lane_servicebus: Any = None  # the lanes' client (no SDK retries, see `_lane_client`)


class ConfigurationError(Exception):
    """A backend refuses this service for a reason a retry cannot fix (a wrong key, a missing role
    assignment, a container or queue that is not there and is not ours to create): exit 2."""


@dataclass(frozen=True)
class Backend:
    name: str  # as the logs and errors say it
    credential: str  # what to check when it refuses this service
    missing: str  # what a 404 means is not there


def _backends(settings: Settings) -> tuple[Backend, Backend]:
    """Cosmos DB and Service Bus, as this setup names them."""
    role = "its role assignment" if settings.mode == "azure" else None
    return (
        Backend("Cosmos DB", role or "CONSUMER_COSMOS_KEY",
                f"container {settings.database}/{settings.projections_container}, and this service "
                "does not create it (CONSUMER_CREATE_CONTAINERS)"),
        Backend("Service Bus", role or "CONSUMER_SERVICEBUS_CONNECTION_STRING",
                f"queue {settings.inbox_queue}"),
    )  # fmt: skip


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


def tls_context() -> ssl.SSLContext:
    """The CA bundle the SDK uses by default (certifi's), loaded once per process. Without it the
    SDK builds a new SSL context for every connection, loading the bundle each time, even on a
    plain-TCP emulator connection; and it opens a connection per session receiver, so that was
    about 26 ms of CPU per session accept here (docs/performance.md)."""
    return ssl.create_default_context(cafile=certifi.where())


async def _servicebus_client(settings: Settings, stack: AsyncExitStack, **options: Any) -> Any:
    """A Service Bus client for the mode (not opened); `options` go to the SDK's constructor."""
    from azure.servicebus.aio import ServiceBusClient as AzureServiceBusClient  # noqa: PLC0415

    if settings.mode != "azure":
        assert settings.servicebus_connection_string is not None
        return AzureServiceBusClient.from_connection_string(
            settings.servicebus_connection_string.get_secret_value(), ssl_context=tls_context(),
            **options,
        )  # fmt: skip
    from azure.identity.aio import DefaultAzureCredential  # noqa: PLC0415

    credential = await stack.enter_async_context(DefaultAzureCredential())
    assert settings.servicebus_namespace is not None
    return AzureServiceBusClient(
        settings.servicebus_namespace, credential, ssl_context=tls_context(), **options
    )


async def _servicebus(settings: Settings, stack: AsyncExitStack) -> Any:
    client = await stack.enter_async_context(await _servicebus_client(settings, stack))
    # The broker answers for the inbox: a peek at its dead-letter queue takes no session and no
    # lock, and needs no more than the receiving right the service has anyway.
    async with client.get_queue_receiver(
        settings.inbox_queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as dead_letters:
        await dead_letters.peek_messages(max_message_count=1)
    return client


async def _container(settings: Settings, stack: AsyncExitStack, name: str, key_path: str) -> Any:
    """A container of the consumer's database, created (TTL on, default -1: an item's own `ttl`
    expires it) where the service may create it, else read to prove it is there."""
    cosmos = await open_cosmos_client(settings, stack)
    if not settings.creates_containers:
        container = cosmos.get_database_client(settings.database).get_container_client(name)
        await container.read()
        return container
    database = await cosmos.create_database_if_not_exists(settings.database)
    return await database.create_container_if_not_exists(
        id=name, partition_key=PartitionKey(path=key_path), default_ttl=-1
    )


async def _lane_client(settings: Settings, stack: AsyncExitStack) -> Any:
    """The client of the lanes' receivers, with the SDK's retries off (`retry_total=0`). A lane's
    accept by id while another replica still holds it fails with SessionCannotBeLockedError, which
    azure-servicebus retries with exponential backoff (each try a new connection): a lane let go a
    moment later was then taken ~15 s late. The lane holder retries every LANE_RETRY_SECONDS itself;
    a held lane's failed receive or settlement releases the lane, which is accepted again."""
    return await stack.enter_async_context(await _servicebus_client(settings, stack, retry_total=0))


def _setup_problem(backend: Backend, error: BaseException) -> ConfigurationError | None:
    """What in the setup an error names (exit 2), or None when it is not a setup problem."""
    status = getattr(error, "status_code", None)
    if status in (401, 403) or isinstance(error, _REFUSED):
        return ConfigurationError(f"{backend.name} refused this service"
                                  f"{f' ({status})' if status else ''}: check {backend.credential}")  # fmt: skip
    if isinstance(error, ClientAuthenticationError):
        return ConfigurationError(f"no credential for {backend.name}: {error.message}")
    if status == 404 or isinstance(error, MessagingEntityNotFoundError):
        return ConfigurationError(f"{backend.name} has no {backend.missing}")
    return None


def _outage(error: BaseException) -> bool:
    """No connection, no answer in time, a status Cosmos DB uses for "not now", a broker's
    connection or busy error."""
    if isinstance(error, HttpResponseError):
        status = error.status_code or 0
        # 409: replicas starting together on a new database create the same container; the one
        # that lost the race finds it on its next attempt.
        return status in (408, 409, 429, 449) or status >= 500
    return not isinstance(error, (*_REFUSED, MessagingEntityNotFoundError)) and isinstance(
        error, TimeoutError | ServiceRequestError | ServiceResponseError | CosmosClientTimeoutError
        | ServiceBusError,
    )  # fmt: skip


async def _attempt(stack: AsyncExitStack, connect: Callable[[AsyncExitStack], Awaitable[T]]) -> T:
    """`connect`'s result, its clients opened afresh: closed if it fails or is silent past
    ATTEMPT_TIMEOUT_S, handed to `stack` if it succeeds."""
    async with AsyncExitStack() as attempt, asyncio.timeout(ATTEMPT_TIMEOUT_S):
        connected = await connect(attempt)
        stack.push_async_exit(attempt.pop_all())
    return connected


async def waited_for(
    backend: Backend, stack: AsyncExitStack, connect: Callable[[AsyncExitStack], Awaitable[T]]
) -> T:
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
        retry=retry_if_exception(_outage), before_sleep=still_waiting, reraise=True,
        wait=wait_exponential_jitter(multiplier=0.5, max=RETRY_MAX_WAIT_S),
    )  # fmt: skip
    try:
        return await retrying(_attempt, stack, connect)
    except Exception as error:
        if problem := _setup_problem(backend, error):
            raise problem from error
        raise


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    """The Service Bus client and the projection store, closed on exit, once Cosmos DB and Service
    Bus answer (`waited_for`: waits out outages, raises ConfigurationError for a wrong setup)."""
    cosmos, servicebus_backend = _backends(settings)
    async with AsyncExitStack() as stack:
        container = await waited_for(cosmos, stack, lambda attempt: _container(
            settings, attempt, settings.projections_container, PARTITION_KEY_PATH))  # fmt: skip
        servicebus = await waited_for(
            servicebus_backend, stack, lambda attempt: _servicebus(settings, attempt)
        )
        members = None
        if settings.inbox_lanes:
            missing = (f"container {settings.database}/{settings.members_container}, and this "
                       "service does not create it (CONSUMER_CREATE_CONTAINERS)")  # fmt: skip
            members = await waited_for(
                Backend(cosmos.name, cosmos.credential, missing), stack,
                lambda attempt: _container(
                    settings, attempt, settings.members_container, MEMBERS_PARTITION_KEY_PATH),
            )  # fmt: skip
        lane_servicebus = await _lane_client(settings, stack) if settings.inbox_lanes else None
        LOG.info(
            "resources ready",
            mode=settings.mode,
            inbox=settings.inbox_queue,
            policy=settings.poison_policy,
        )
        yield Resources(
            servicebus,
            CosmosProjectionStore(container, mark_ttl_seconds=settings.inbox_mark_ttl_seconds),
            members,
            lane_servicebus,
        )


def worker_of(
    settings: Settings,
    resources: Resources,
    metrics: ConsumerMetrics | None = None,
    *,
    policy: PoisonPolicy | None = None,
) -> SessionWorker:
    """`policy` overrides the setting (an unblock replays under the block policy)."""
    worker_settings = WorkerSettings(
        policy=policy or settings.poison_policy, gap_wait_seconds=settings.gap_wait_seconds,
        retry_max_seconds=settings.store_retry_max_seconds, max_deferred=settings.max_deferred_per_session,
    )  # fmt: skip
    return SessionWorker(
        InboxHandler(resources.store), resources.store, worker_settings, observer=metrics
    )
