"""The one place that chooses adapters: emulators (local or compose) or Azure, by `settings.mode`."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

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
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from eventflow_consumer.adapters.cosmos_projection import PARTITION_KEY_PATH, CosmosProjectionStore
from eventflow_consumer.settings import Settings

LOG = structlog.get_logger("eventflow_consumer.bootstrap")
ATTEMPT_TIMEOUT_S = 15.0
"""One connection attempt's bound: a stalled endpoint is an outage too, and the wait's log line
must keep coming."""
RETRY_MAX_WAIT_S = 10.0


@dataclass(frozen=True)
class Resources:
    servicebus: Any
    store: CosmosProjectionStore


class ConfigurationError(Exception):
    """Cosmos DB refuses this service for a reason a retry cannot fix (a wrong key, a missing role
    assignment, a container that is not there and is not ours to create): the process exits 2."""


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


async def _projections(settings: Settings, stack: AsyncExitStack) -> Any:
    """The projections container, created where the service may create it."""
    cosmos = await open_cosmos_client(settings, stack)
    if not settings.creates_containers:
        container = cosmos.get_database_client(settings.database).get_container_client(
            settings.projections_container
        )
        await container.read()
        return container
    database = await cosmos.create_database_if_not_exists(settings.database)
    return await database.create_container_if_not_exists(
        id=settings.projections_container, partition_key=PartitionKey(path=PARTITION_KEY_PATH),
        default_ttl=-1,
    )  # fmt: skip


def _setup_problem(settings: Settings, error: BaseException) -> ConfigurationError | None:
    """What in the setup an error names (exit 2), or None when it is not a setup problem."""
    status = getattr(error, "status_code", None)
    if status in (401, 403):
        return ConfigurationError(
            f"Cosmos DB refused this service ({status}): check "
            + ("its role assignment" if settings.mode == "azure" else "CONSUMER_COSMOS_KEY")
        )
    if isinstance(error, ClientAuthenticationError):
        return ConfigurationError(f"no credential for Cosmos DB: {error.message}")
    if status == 404:
        return ConfigurationError(
            f"Cosmos DB has no container {settings.database}/{settings.projections_container}, "
            "and this service does not create it (CONSUMER_CREATE_CONTAINERS)"
        )
    return None


def _outage(error: BaseException) -> bool:
    """No connection, no answer in time, or a status Cosmos DB uses for "not now"."""
    if isinstance(error, HttpResponseError):
        status = error.status_code or 0
        return status in (408, 429, 449) or status >= 500
    return isinstance(
        error, TimeoutError | ServiceRequestError | ServiceResponseError | CosmosClientTimeoutError
    )


def _still_waiting(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    LOG.warning(
        "still waiting for Cosmos DB", error=type(error).__name__,
        attempts=state.attempt_number, retry_in_s=round(state.upcoming_sleep, 1),
    )  # fmt: skip


async def _connected(settings: Settings, stack: AsyncExitStack) -> Any:
    """The projections container once Cosmos DB answers: an outage (`_outage`, or an attempt
    silent past ATTEMPT_TIMEOUT_S) is waited out with backoff for as long as it lasts, logging
    each wait; only the caller's cancellation (the stop signal) ends the wait. The client's own
    setup (the account read in `__aenter__`) is inside each attempt. Raises ConfigurationError
    for a setup a retry cannot fix."""
    retrying = AsyncRetrying(
        retry=retry_if_exception(_outage), before_sleep=_still_waiting, reraise=True,
        wait=wait_exponential_jitter(multiplier=0.5, max=RETRY_MAX_WAIT_S),
    )  # fmt: skip
    async for attempt in retrying:
        with attempt:
            async with AsyncExitStack() as attempt_stack:
                try:
                    async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                        container = await _projections(settings, attempt_stack)
                except Exception as error:
                    problem = None if _outage(error) else _setup_problem(settings, error)
                    if problem is not None:
                        raise problem from error
                    raise
                await stack.enter_async_context(attempt_stack.pop_all())
                return container
    raise AssertionError("unreachable: the retry loop returns or raises")


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    """The Service Bus client and the projection store, closed on exit, once Cosmos DB answers
    (`_connected`). The Service Bus client connects as its receivers open (the session pump
    retries them while the broker is down)."""
    async with AsyncExitStack() as stack:
        container = await _connected(settings, stack)
        servicebus = await _servicebus(settings, stack)
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
