"""The one place that chooses adapters: emulators (local or compose) or Azure, by `settings.mode`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import structlog
from azure.core.exceptions import ResourceExistsError

from eventflow_subscriber.settings import Settings

LOG = structlog.get_logger("eventflow_subscriber.bootstrap")


@dataclass(frozen=True)
class Clients:
    consumer: Any
    inbox_sender: Any


async def _blob_store(settings: Settings, stack: AsyncExitStack, credential: Any = None) -> Any:
    from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore  # noqa: PLC0415
    from azure.storage.blob.aio import BlobServiceClient  # noqa: PLC0415

    if credential is None:
        assert settings.storage_connection_string is not None
        connection_string = settings.storage_connection_string.get_secret_value()
        service = BlobServiceClient.from_connection_string(connection_string)
        store = BlobCheckpointStore.from_connection_string(
            connection_string, container_name=settings.checkpoint_container
        )
    else:
        assert settings.storage_account_url is not None
        service = BlobServiceClient(settings.storage_account_url, credential=credential)
        store = BlobCheckpointStore(
            settings.storage_account_url, settings.checkpoint_container, credential=credential
        )
    if settings.creates_checkpoint_container:
        async with service:
            with suppress(ResourceExistsError):
                await service.create_container(settings.checkpoint_container)
    return await stack.enter_async_context(store)


async def _azure_sdk(settings: Settings, stack: AsyncExitStack) -> Clients:
    from azure.eventhub.aio import EventHubConsumerClient  # noqa: PLC0415
    from azure.servicebus.aio import ServiceBusClient  # noqa: PLC0415

    balancing: dict[str, Any] = {
        "load_balancing_interval": settings.load_balancing_interval_seconds,
        "load_balancing_strategy": "greedy",
    }
    if settings.mode != "azure":
        assert settings.eventhubs_connection_string is not None
        assert settings.servicebus_connection_string is not None
        store = await _blob_store(settings, stack)
        consumer = EventHubConsumerClient.from_connection_string(
            settings.eventhubs_connection_string.get_secret_value(), consumer_group=settings.consumer_group,
            eventhub_name=settings.eventhub_name, checkpoint_store=store, **balancing,
        )  # fmt: skip
        service_bus = ServiceBusClient.from_connection_string(
            settings.servicebus_connection_string.get_secret_value()
        )
    else:
        from azure.identity.aio import DefaultAzureCredential  # noqa: PLC0415

        credential = await stack.enter_async_context(DefaultAzureCredential())
        store = await _blob_store(settings, stack, credential)
        assert settings.eventhubs_namespace is not None
        assert settings.servicebus_namespace is not None
        consumer = EventHubConsumerClient(
            settings.eventhubs_namespace, settings.eventhub_name, settings.consumer_group, credential,
            checkpoint_store=store, **balancing,
        )  # fmt: skip
        service_bus = ServiceBusClient(settings.servicebus_namespace, credential)
    client = await stack.enter_async_context(service_bus)
    return Clients(
        consumer, await stack.enter_async_context(client.get_queue_sender(settings.inbox_queue))
    )


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
