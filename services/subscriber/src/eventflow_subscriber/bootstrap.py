"""The one place that chooses adapters: emulators (local or compose) or Azure, by `settings.mode`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.eventhub.exceptions import AuthenticationError, EventHubError
from azure.servicebus.exceptions import (
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
)
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from eventflow_subscriber.settings import Settings

LOG = structlog.get_logger("eventflow_subscriber.bootstrap")
ATTEMPT_TIMEOUT_S = 15.0
"""One connection attempt's bound: a stalled endpoint is an outage too, and the wait's log line
must keep coming."""
RETRY_MAX_WAIT_S = 10.0
T = TypeVar("T")
_REFUSED = (AuthenticationError, ServiceBusAuthenticationError, ServiceBusAuthorizationError)
_REFUSALS = ("not-found", "unauthorized-access")  # AMQP conditions that no retry changes


@dataclass(frozen=True)
class Clients:
    consumer: Any
    inbox_sender: Any


class ConfigurationError(Exception):
    """A backend refuses this service for a reason a retry cannot fix (a wrong key, a missing role
    assignment, a container or queue that is not there and is not ours to create): exit 2."""


@dataclass(frozen=True)
class Backend:
    name: str  # as the logs and errors say it
    credential: str  # what to check when it refuses this service
    missing: str  # what a 404 means is not there


def _backends(settings: Settings) -> tuple[Backend, Backend, Backend]:
    """Blob Storage (the checkpoints), Service Bus (the inbox) and Event Hubs, as this setup
    names them."""
    role = "its role assignment" if settings.mode == "azure" else None
    return (
        Backend("Blob Storage", role or "SUBSCRIBER_STORAGE_CONNECTION_STRING",
                f"container {settings.checkpoint_container}, and this service does not create it "
                "(SUBSCRIBER_CREATE_CHECKPOINT_CONTAINER)"),
        Backend("Service Bus", role or "SUBSCRIBER_SERVICEBUS_CONNECTION_STRING",
                f"queue {settings.inbox_queue}"),
        Backend("Event Hubs", role or "SUBSCRIBER_EVENTHUBS_CONNECTION_STRING",
                f"event hub {settings.eventhub_name}"),
    )  # fmt: skip


def _amqp_condition(error: BaseException) -> str | None:
    """An Event Hubs error's AMQP condition without its "amqp:" ("not-found", ...), if any."""
    return error.error if isinstance(error, EventHubError) else None


def _setup_problem(backend: Backend, error: BaseException) -> ConfigurationError | None:
    """What in the setup an error names (exit 2), or None when it is not a setup problem."""
    status = getattr(error, "status_code", None)
    condition = _amqp_condition(error)
    if status in (401, 403) or isinstance(error, _REFUSED) or condition == "unauthorized-access":
        return ConfigurationError(f"{backend.name} refused this service"
                                  f"{f' ({status})' if status else ''}: check {backend.credential}")  # fmt: skip
    if isinstance(error, ClientAuthenticationError):
        return ConfigurationError(f"no credential for {backend.name}: {error.message}")
    if status == 404 or isinstance(error, MessagingEntityNotFoundError) or condition == "not-found":
        return ConfigurationError(f"{backend.name} has no {backend.missing}")
    return None


def _outage(error: BaseException) -> bool:
    """Whether `error` is a backend not answering yet (to wait out): no connection, no answer in
    time, 408/429/5xx, a broker's connection or busy error."""
    if isinstance(error, HttpResponseError):
        status = error.status_code or 0
        return status in (408, 429) or status >= 500
    refused = isinstance(error, (*_REFUSED, MessagingEntityNotFoundError))
    if refused or _amqp_condition(error) in _REFUSALS:
        return False
    return isinstance(
        error, TimeoutError | ServiceRequestError | ServiceResponseError | ServiceBusError
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


async def _blob_store(settings: Settings, stack: AsyncExitStack, credential: Any = None) -> Any:
    """The checkpoint store, once its container is there (created where this service may). The
    setup's own client does not retry (its SDK backs off 15 s and more): the caller does."""
    from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore  # noqa: PLC0415
    from azure.storage.blob.aio import BlobServiceClient  # noqa: PLC0415

    if credential is None:
        assert settings.storage_connection_string is not None
        connection_string = settings.storage_connection_string.get_secret_value()
        service = BlobServiceClient.from_connection_string(connection_string, retry_total=0)
        store = BlobCheckpointStore.from_connection_string(
            connection_string, container_name=settings.checkpoint_container
        )
    else:
        assert settings.storage_account_url is not None
        service = BlobServiceClient(
            settings.storage_account_url, credential=credential, retry_total=0
        )
        store = BlobCheckpointStore(
            settings.storage_account_url, settings.checkpoint_container, credential=credential
        )
    async with service:
        if settings.creates_checkpoint_container:
            with suppress(ResourceExistsError):
                await service.create_container(settings.checkpoint_container)
        else:
            await service.get_container_client(
                settings.checkpoint_container
            ).get_container_properties()
    return await stack.enter_async_context(store)


async def _inbox(settings: Settings, stack: AsyncExitStack, credential: Any) -> Any:
    """The inbox queue's sender, its link open."""
    from azure.servicebus.aio import ServiceBusClient  # noqa: PLC0415

    if credential is None:
        assert settings.servicebus_connection_string is not None
        service_bus = ServiceBusClient.from_connection_string(
            settings.servicebus_connection_string.get_secret_value()
        )
    else:
        assert settings.servicebus_namespace is not None
        service_bus = ServiceBusClient(settings.servicebus_namespace, credential)
    client = await stack.enter_async_context(service_bus)
    return await stack.enter_async_context(client.get_queue_sender(settings.inbox_queue))


async def _consumer(settings: Settings, stack: AsyncExitStack, credential: Any, store: Any) -> Any:
    """The Event Hubs consumer client, once the hub has answered for its partitions."""
    from azure.eventhub.aio import EventHubConsumerClient  # noqa: PLC0415

    balancing: dict[str, Any] = {
        "load_balancing_interval": settings.load_balancing_interval_seconds,
        "load_balancing_strategy": "greedy",
    }
    if credential is None:
        assert settings.eventhubs_connection_string is not None
        consumer = EventHubConsumerClient.from_connection_string(
            settings.eventhubs_connection_string.get_secret_value(), consumer_group=settings.consumer_group,
            eventhub_name=settings.eventhub_name, checkpoint_store=store, **balancing,
        )  # fmt: skip
    else:
        assert settings.eventhubs_namespace is not None
        consumer = EventHubConsumerClient(
            settings.eventhubs_namespace, settings.eventhub_name, settings.consumer_group, credential,
            checkpoint_store=store, **balancing,
        )  # fmt: skip
    consumer = await stack.enter_async_context(consumer)
    await consumer.get_partition_ids()
    return consumer


async def _azure_sdk(settings: Settings, stack: AsyncExitStack) -> Clients:
    """The clients, once each backend answers (`waited_for`)."""
    credential = None
    if settings.mode == "azure":
        from azure.identity.aio import DefaultAzureCredential  # noqa: PLC0415

        credential = await stack.enter_async_context(DefaultAzureCredential())
    blobs, servicebus, eventhubs = _backends(settings)
    store = await waited_for(
        blobs, stack, lambda attempt: _blob_store(settings, attempt, credential)
    )
    sender = await waited_for(
        servicebus, stack, lambda attempt: _inbox(settings, attempt, credential)
    )
    consumer = await waited_for(
        eventhubs, stack, lambda attempt: _consumer(settings, attempt, credential, store)
    )
    return Clients(consumer, sender)


async def open_hub(
    settings: Settings, stack: AsyncExitStack, reader_group: str | None = None
) -> tuple[Any, Callable[[], Any], str]:
    """For the admin commands: the checkpoint store, a factory of consumer clients without it, in
    `reader_group` (default: the subscriber's; each read at a position gets a client of its own),
    and the namespace the checkpoints are named by."""
    from azure.eventhub.aio import EventHubConsumerClient  # noqa: PLC0415

    group, hub = reader_group or settings.consumer_group, settings.eventhub_name
    if settings.mode != "azure":
        assert settings.eventhubs_connection_string is not None
        store = await _blob_store(settings, stack)
        connection_string = settings.eventhubs_connection_string.get_secret_value()

        def client() -> Any:
            return EventHubConsumerClient.from_connection_string(
                connection_string, consumer_group=group, eventhub_name=hub
            )
    else:
        from azure.identity.aio import DefaultAzureCredential  # noqa: PLC0415

        credential = await stack.enter_async_context(DefaultAzureCredential())
        store = await _blob_store(settings, stack, credential)
        assert settings.eventhubs_namespace is not None
        namespace = settings.eventhubs_namespace

        def client() -> Any:
            return EventHubConsumerClient(namespace, hub, group, credential)

    # The name the SDK's processor stores checkpoints and claims under (EventProcessor reads the
    # same attribute): the host, with the port when the endpoint has one (the emulators).
    probe = client()
    namespace_name = str(probe._address.hostname)
    await probe.close()
    return store, client, namespace_name


@asynccontextmanager
async def open_clients(settings: Settings) -> AsyncIterator[Clients]:
    async with AsyncExitStack() as stack:
        clients = await _azure_sdk(settings, stack)
        LOG.info("clients ready", mode=settings.mode, hub=settings.eventhub_name, consumer_group=settings.consumer_group,
                 inbox=settings.inbox_queue)  # fmt: skip
        yield clients
