"""The one place that chooses adapters: local stand-ins, emulators or Azure, by `settings.mode`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from azure.cosmos import PartitionKey

from eventflow_consumer.adapters.cosmos_projection import PARTITION_KEY_PATH, CosmosProjectionStore
from eventflow_consumer.settings import Settings

LOG = structlog.get_logger("eventflow_consumer.bootstrap")


@dataclass(frozen=True)
class Resources:
    servicebus: Any
    store: CosmosProjectionStore


async def _clients(settings: Settings, stack: AsyncExitStack) -> tuple[Any, Any]:
    cosmos: Any
    servicebus: Any
    if settings.mode == "local":
        from azure.servicebus.exceptions import MessagingEntityAlreadyExistsError  # noqa: PLC0415

        from eventflow_local import LocalEnvironment  # noqa: PLC0415 - dev-only dependency
        from eventflow_local.cosmos import CosmosClient  # noqa: PLC0415
        from eventflow_local.servicebus import ServiceBusAdministrationClient, ServiceBusClient  # noqa: PLC0415

        environment = LocalEnvironment(settings.local_dir)
        async with ServiceBusAdministrationClient(environment) as admin:
            with suppress(MessagingEntityAlreadyExistsError):
                await admin.create_queue(
                    settings.inbox_queue, requires_session=True, requires_duplicate_detection=True,
                    duplicate_detection_history_time_window=timedelta(minutes=10), max_delivery_count=10,
                    lock_duration=timedelta(seconds=30),
                )  # fmt: skip
        return CosmosClient(environment), ServiceBusClient(environment)
    from azure.cosmos.aio import CosmosClient as AzureCosmosClient  # noqa: PLC0415
    from azure.servicebus.aio import ServiceBusClient as AzureServiceBusClient  # noqa: PLC0415

    assert settings.cosmos_endpoint is not None
    if settings.mode == "emulator":
        assert settings.cosmos_key is not None
        assert settings.servicebus_connection_string is not None
        cosmos = AzureCosmosClient(settings.cosmos_endpoint, credential=settings.cosmos_key.get_secret_value(),
                                   enable_endpoint_discovery=False, connection_verify=False)  # fmt: skip
        servicebus = AzureServiceBusClient.from_connection_string(
            settings.servicebus_connection_string.get_secret_value()
        )
    else:
        from azure.identity.aio import DefaultAzureCredential  # noqa: PLC0415

        credential = await stack.enter_async_context(DefaultAzureCredential())
        assert settings.servicebus_namespace is not None
        cosmos = AzureCosmosClient(settings.cosmos_endpoint, credential=credential)
        servicebus = AzureServiceBusClient(settings.servicebus_namespace, credential)
    return cosmos, servicebus


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    async with AsyncExitStack() as stack:
        cosmos, servicebus = await _clients(settings, stack)
        cosmos = await stack.enter_async_context(cosmos)
        servicebus = await stack.enter_async_context(servicebus)
        if settings.creates_containers:
            database = await cosmos.create_database_if_not_exists(settings.database)
            container = await database.create_container_if_not_exists(
                id=settings.projections_container,
                partition_key=PartitionKey(path=PARTITION_KEY_PATH),
                default_ttl=-1,
            )
        else:
            container = cosmos.get_database_client(settings.database).get_container_client(
                settings.projections_container
            )
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
