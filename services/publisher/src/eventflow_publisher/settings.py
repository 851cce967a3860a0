"""The publisher's settings: one class, read from PUBLISHER_* environment variables at start."""

from __future__ import annotations

import os
import socket
from typing import Literal, Self

from pydantic import AwareDatetime, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventflow_contracts.orders_container import WritePattern
from eventflow_contracts.telemetry import TelemetryFields
from eventflow_publisher.changefeed import ProcessorOptions

# The Cosmos DB emulators' published well-known key (the official emulator's and this project's):
# not a secret; it only ever opens a local emulator.
EMULATOR_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)
LOCAL_COSMOS_ENDPOINT = "http://127.0.0.1:8081/"
LOCAL_MESSAGING = (  # the project's Event Hubs + Service Bus emulator, with the official emulators' key
    "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=RootManageSharedAccessKey;"
    "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true"
)


def _instance_name() -> str:
    return os.environ.get("CONTAINER_APP_REPLICA_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings, TelemetryFields):
    model_config = SettingsConfigDict(env_prefix="PUBLISHER_", extra="ignore")

    mode: Literal["local", "emulator", "azure"] = "local"
    cosmos_endpoint: str | None = None
    cosmos_key: SecretStr | None = None
    database: str = "eventflow"
    orders_container: str = "orders"
    leases_container: str = "leases"
    create_containers: bool | None = None
    eventhubs_namespace: str | None = Field(
        default=None, description="azure: <name>.servicebus.windows.net"
    )
    eventhubs_connection_string: SecretStr | None = Field(
        default=None, description="local / emulator"
    )
    eventhub_name: str = "orders"

    write_pattern: WritePattern = Field(
        default="outbox",
        description="the producer's (PRODUCER_WRITE_PATTERN): outbox and event-first publish the "
        "event documents; entity-first derives an OrderStateChanged from each order document read; "
        "event-first also runs the read-model maintainer",
    )
    read_model_processor_name: str = Field(
        default="read-model",
        description="event-first: the lease prefix of the read-model maintainer",
    )
    processor_name: str = "publisher"
    instance_name: str = Field(default_factory=_instance_name)
    start: Literal["beginning", "now"] | AwareDatetime = Field(
        default="beginning",
        description="a time needs its offset (e.g. 2026-11-28T08:00:00Z); `now` is this machine's clock",
    )
    poll_delay_seconds: float = Field(
        default=0.15,
        gt=0,
        description="wait after a read that did not move the position; further idle reads double it",
    )
    max_poll_delay_seconds: float = Field(default=0.15, gt=0, description="longest wait when idle")
    max_items_per_page: int = Field(default=1000, ge=1, le=10000)
    acquire_interval_seconds: float = Field(default=13.0, gt=0)
    renew_interval_seconds: float = Field(default=17.0, gt=0)
    lease_expiry_seconds: float = Field(default=60.0, gt=0)
    handover_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="how long an owner asked for its lease lets the page in flight run; past it "
        "the page is cancelled (read again by the asker) and the lease released",
    )
    lease_call_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="the bound of one lease-store call of a worker (a call that hangs is abandoned "
        "and retried); default half the lease deadline's span, at least 5 s",
    )
    lease_margin_seconds: float | None = Field(
        default=None,
        gt=0,
        description="how long before the earliest takeover of its lease an owner stops handling "
        "(its lease deadline); default a tenth of the restart takeover time",
    )
    lag_interval_seconds: float = Field(default=5.0, gt=0)
    unready_after_failing_seconds: float = Field(default=30.0, gt=0)
    stalled_after_seconds: float = Field(
        default=120.0,
        gt=0,
        description="unready when a lease with waiting changes has not checkpointed for this long",
    )
    event_ttl_seconds: int = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="the producer's outbox TTL (PRODUCER_EVENT_TTL_SECONDS)",
    )
    oldest_event_alert_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="unready when the oldest unpublished change is older than this share of the TTL",
    )

    health_host: str = "127.0.0.1"
    health_port: int = Field(default=8001, ge=0, le=65535)

    @model_validator(mode="after")
    def _backend_settings_fit_the_mode(self) -> Self:
        if self.mode == "local":  # the project's own emulators on this machine (make dev)
            self.cosmos_endpoint = self.cosmos_endpoint or LOCAL_COSMOS_ENDPOINT
            self.cosmos_key = self.cosmos_key or SecretStr(EMULATOR_KEY)
            self.eventhubs_connection_string = self.eventhubs_connection_string or SecretStr(
                LOCAL_MESSAGING
            )
        if self.mode == "emulator" and not (
            self.cosmos_endpoint and self.cosmos_key and self.eventhubs_connection_string
        ):
            raise ValueError(
                "mode=emulator needs PUBLISHER_COSMOS_ENDPOINT, _COSMOS_KEY, _EVENTHUBS_CONNECTION_STRING"
            )
        if self.mode == "azure":
            if not (self.cosmos_endpoint and self.eventhubs_namespace):
                raise ValueError(
                    "mode=azure needs PUBLISHER_COSMOS_ENDPOINT and PUBLISHER_EVENTHUBS_NAMESPACE"
                )
            if self.cosmos_key is not None or self.eventhubs_connection_string is not None:
                raise ValueError("mode=azure uses managed identity: no keys or connection strings")
        if not self.renew_interval_seconds < self.lease_expiry_seconds:
            raise ValueError("the renew interval must be shorter than the lease expiry")
        self._lease_timings_fit()
        if self.read_model_processor_name == self.processor_name:
            raise ValueError("the read-model maintainer needs a lease prefix of its own")
        if self.poll_delay_seconds > self.max_poll_delay_seconds:
            raise ValueError("the poll delay must not exceed the max poll delay")
        return self

    def _lease_timings_fit(self) -> None:
        """The lease deadline's span (the restart takeover time less the margin) must be left,
        and a lease-store call set here must time out within it (so that a retry can still
        succeed before it)."""
        options = ProcessorOptions(
            instance_name=self.instance_name, renew_interval=self.renew_interval_seconds,
            expiry=self.lease_expiry_seconds, lease_margin=self.lease_margin_seconds,
            lease_call_timeout=self.lease_call_timeout_seconds,
        )  # fmt: skip
        takeover, span = options.takeover_after, options.held_for
        if span <= 0:
            raise ValueError(
                f"PUBLISHER_LEASE_MARGIN_SECONDS ({self.lease_margin_seconds:g}) must be shorter "
                f"than the restart takeover time ({takeover:g} s: 1.5 renew intervals, at most "
                "the lease expiry), or no page could ever be handled"
            )
        if self.lease_call_timeout_seconds is not None and self.lease_call_timeout_seconds >= span:
            raise ValueError(
                f"PUBLISHER_LEASE_CALL_TIMEOUT_SECONDS ({self.lease_call_timeout_seconds:g}) must "
                f"be shorter than the lease deadline's span ({span:g} s: the restart takeover "
                "time less the margin), so that a call abandoned at its timeout is retried before "
                "the deadline stops the handler"
            )

    @property
    def creates_containers(self) -> bool:
        return (
            self.create_containers if self.create_containers is not None else self.mode != "azure"
        )
