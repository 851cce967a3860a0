"""The subscriber's settings: one class, read from SUBSCRIBER_* environment variables at start."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from eventflow_contracts.lanes import MAX_LANES
from eventflow_contracts.telemetry import TelemetryFields
from eventflow_subscriber.routing import type_names

# What the consumer's order-summary projection applies: without any one of them its orders would
# meet a gap that never closes (or, for OrderStateChanged in the entity-first write pattern, which
# carries every change there, never change at all).
PROJECTION_NEEDS = (
    "eventflow.orders.OrderCreated",
    "eventflow.orders.OrderItemAdded",
    "eventflow.orders.OrderSubmitted",
    "eventflow.orders.OrderCancelled",
    "eventflow.orders.OrderStateChanged",
)
LOWERCASE = "keep it lowercase: the checkpoint store lowercases blob names and KEDA reads them"


LOCAL_MESSAGING = (  # the project's Event Hubs + Service Bus emulator, with the official emulators' key
    "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=RootManageSharedAccessKey;"
    "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"
)
LOCAL_STORAGE = (  # Azurite's published development account
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)


class Settings(BaseSettings, TelemetryFields):
    model_config = SettingsConfigDict(env_prefix="SUBSCRIBER_", extra="ignore")

    mode: Literal["local", "emulator", "azure"] = "local"

    eventhubs_namespace: str | None = Field(
        default=None, description="azure: <name>.servicebus.windows.net"
    )
    eventhubs_connection_string: SecretStr | None = None
    eventhub_name: str = "orders"
    consumer_group: str = "inbox-subscriber"
    storage_account_url: str | None = Field(
        default=None, description="azure: https://<account>.blob.core.windows.net"
    )
    storage_connection_string: SecretStr | None = Field(
        default=None, description="local / emulator: Azurite"
    )
    checkpoint_container: str = "checkpoints"
    create_checkpoint_container: bool | None = None

    servicebus_namespace: str | None = None
    servicebus_connection_string: SecretStr | None = None
    inbox_queue: str = "inbox"
    inbox_lanes: int = Field(
        default=32,
        ge=0,
        le=MAX_LANES,
        description="the inbox's lane count: each order's events go to the session lanes<N>-<n> "
        "(eventflow_contracts.lanes); 0 = one session per order. Every consumer must understand "
        "lanes before this is turned on (docs/operations.md)",
    )

    subscribed_types: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="empty: every type; compared by type name, in any version",
    )
    required_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(PROJECTION_NEEDS),
        description="types the consumer's projection cannot do without: a filter must let them through",
    )
    starting_position: str = Field(
        default="-1", description="without a checkpoint: -1 = beginning of retention"
    )
    max_batch_size: int = Field(default=300, ge=1, le=1000)
    max_wait_time_seconds: float | None = None
    load_balancing_interval_seconds: float = Field(default=10.0, gt=0)
    max_message_bytes: int = Field(default=256 * 1024 - 8 * 1024, ge=1024)
    drain_timeout_seconds: float = Field(default=20.0, gt=0)

    health_host: str = "127.0.0.1"
    health_port: int = Field(default=8002, ge=0, le=65535)

    @field_validator("subscribed_types", "required_types", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return (
            [item.strip() for item in value.split(",") if item.strip()]
            if isinstance(value, str)
            else value
        )

    @model_validator(mode="after")
    def _filter_keeps_what_the_consumer_needs(self) -> Self:
        if not self.subscribed_types:
            return self
        missing = sorted(type_names(self.required_types) - type_names(self.subscribed_types))
        if missing:
            raise ValueError(
                f"SUBSCRIBER_SUBSCRIBED_TYPES leaves out {', '.join(missing)}, which the consumer's projection "
                "needs (its orders would wait forever for those events); add them or empty the filter"
            )
        return self

    @field_validator("eventhub_name", "consumer_group", "checkpoint_container")
    @classmethod
    def _lowercase(cls, value: str) -> str:
        if value != value.lower():
            raise ValueError(LOWERCASE)
        return value

    @model_validator(mode="after")
    def _backend_settings_fit_the_mode(self) -> Self:
        if (
            self.mode == "local"
        ):  # the project's own emulators and Azurite on this machine (make dev)
            self.eventhubs_connection_string = self.eventhubs_connection_string or SecretStr(
                LOCAL_MESSAGING
            )
            self.servicebus_connection_string = self.servicebus_connection_string or SecretStr(
                LOCAL_MESSAGING
            )
            self.storage_connection_string = self.storage_connection_string or SecretStr(
                LOCAL_STORAGE
            )
        if self.mode == "emulator" and not (
            self.eventhubs_connection_string
            and self.storage_connection_string
            and self.servicebus_connection_string
        ):
            raise ValueError(
                "mode=emulator needs the Event Hubs, Storage and Service Bus connection strings"
            )
        if self.mode == "azure":
            if not (
                self.eventhubs_namespace and self.storage_account_url and self.servicebus_namespace
            ):
                raise ValueError(
                    "mode=azure needs SUBSCRIBER_EVENTHUBS_NAMESPACE, _STORAGE_ACCOUNT_URL, _SERVICEBUS_NAMESPACE"
                )
            if (
                self.eventhubs_connection_string
                or self.storage_connection_string
                or self.servicebus_connection_string
            ):
                raise ValueError("mode=azure uses managed identity: no connection strings")
        return self

    @property
    def creates_checkpoint_container(self) -> bool:
        if self.create_checkpoint_container is not None:
            return self.create_checkpoint_container
        return self.mode != "azure"
