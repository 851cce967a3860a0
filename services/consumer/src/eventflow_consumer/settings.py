"""The consumer's settings: one class, read from CONSUMER_* environment variables at start."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventflow_contracts.auth import AuthFields
from eventflow_contracts.lanes import MAX_LANES
from eventflow_contracts.telemetry import TelemetryFields

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


class Settings(BaseSettings, TelemetryFields, AuthFields):
    """The read API's callers' tokens (AuthFields): required in azure mode, from Entra ID only;
    off in the emulator modes unless CONSUMER_AUTH_TENANT_ID and CONSUMER_AUTH_CLIENT_ID are set."""

    model_config = SettingsConfigDict(env_prefix="CONSUMER_", extra="ignore")

    mode: Literal["local", "emulator", "azure"] = "local"
    servicebus_namespace: str | None = None
    servicebus_connection_string: SecretStr | None = None
    inbox_queue: str = "inbox"
    inbox_lanes: int = Field(
        default=32,
        ge=0,
        le=MAX_LANES,
        description="the inbox's lane count (eventflow_contracts.lanes), the same as the "
        "subscriber's SUBSCRIBER_INBOX_LANES; 0 = one session per order. A resubmitted message goes to "
        "its order's lane under this count",
    )
    lane_max_in_flight: int = Field(
        default=1000,
        ge=1,
        le=5000,
        description="messages one held lane keeps at once (queued, in handling, early ones waiting)",
    )
    lane_prefetch: int = Field(
        default=200, ge=0, le=1000, description="prefetch of a lane's receiver"
    )
    lane_retry_seconds: float = Field(
        default=1.0,
        gt=0,
        description="how often a lane of this replica's fair share that another replica still "
        "holds is tried again",
    )
    # Fair share of the lanes between replicas (eventflow_consumer.share).
    lane_share_seconds: float = Field(
        default=5.0,
        ge=0.2,
        description="the hold/rebalance period: each replica writes its membership record and "
        "re-plans its lanes this often; a record older than 3 periods no longer counts; while the "
        "membership cannot be read, lanes not held are tried this often",
    )
    members_container: str = Field(
        default="consumer-members",
        description="the consumer's membership records (partition key /queue, TTL on)",
    )
    leftover_sessions: int = Field(
        default=8,
        ge=1,
        le=256,
        description="with lanes: sessions that are not this consumer's lanes (per-order sessions of "
        "an earlier release, the unroutable-event session, lanes of another count) held at once",
    )
    # Per order inside a lane (lanes.py): the cap and the unblock requests' poll.
    order_max_in_flight: int = Field(
        default=100,
        ge=1,
        le=5000,
        description="messages of one order a held lane keeps at once; past it they are deferred "
        "(recorded in the store) and brought back in order as the order drains",
    )
    unblock_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="how often a lane with blocked orders looks for an unblock request",
    )
    lane_barrier_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often an early event in a lane looks again whether another session of the "
        "inbox (its order's lane under another lane count, or the order's own session) still holds an "
        "earlier event of its order; the gap wait starts only once none does (eventflow_consumer.barrier)",
    )
    lane_barrier_max_seconds: float = Field(
        default=600.0,
        gt=0,
        description="the longest an early event waits behind the generation barrier for a session it "
        "cannot look into (held by another receiver) before its gap wait starts anyway (logged)",
    )
    cosmos_endpoint: str | None = None
    cosmos_key: SecretStr | None = None
    database: str = "eventflow"
    projections_container: str = "order-summaries"
    create_containers: bool | None = None

    max_concurrent_sessions: int = Field(
        default=64,
        ge=1,
        le=256,
        description="sessions held (or being accepted) at once; each is one AMQP connection, and a "
        "session accept takes ~0.5 s of mostly waiting in the SDK, so one event per session needs many",
    )
    session_idle_seconds: float = Field(
        default=0.5, gt=0, description="how long a held session's empty receive waits"
    )
    session_accept_wait_seconds: float = Field(
        default=3.0,
        ge=1.5,
        description="bound of one next-session accept with its first receive: the connection and "
        "link (about 1 s is left for them) and the broker's wait for a session; the idle pump "
        "looks again after it",
    )
    session_renew_seconds: float = Field(default=10.0, gt=0)
    poison_policy: Literal["skip", "block"] = "skip"
    inbox_mark_ttl_seconds: int = Field(
        default=14 * 24 * 3600, ge=3600, description="longer than any replay window"
    )
    gap_wait_seconds: float = Field(
        default=30.0, gt=0, description="how long an early event waits for the events before it"
    )
    store_retry_max_seconds: float = Field(
        default=5.0, gt=0, description="cap of the backoff while the store is unavailable"
    )
    max_deferred_per_session: int = Field(
        default=1000, ge=1, le=2000,
        description="deferred messages of one blocked session, or of one order inside a lane (its "
        "deferral record in the store stays far below Cosmos DB's 2 MB per item)",
    )  # fmt: skip

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8003, ge=0, le=65535)

    @model_validator(mode="after")
    def _backend_settings_fit_the_mode(self) -> Self:
        if self.mode == "local":  # the project's own emulators on this machine (make dev)
            self.cosmos_endpoint = self.cosmos_endpoint or LOCAL_COSMOS_ENDPOINT
            self.cosmos_key = self.cosmos_key or SecretStr(EMULATOR_KEY)
            self.servicebus_connection_string = self.servicebus_connection_string or SecretStr(
                LOCAL_MESSAGING
            )
        if self.mode == "emulator" and not (
            self.servicebus_connection_string and self.cosmos_endpoint and self.cosmos_key
        ):
            raise ValueError(
                "mode=emulator needs CONSUMER_SERVICEBUS_CONNECTION_STRING, _COSMOS_ENDPOINT, _COSMOS_KEY"
            )
        if self.mode == "azure":
            if not (self.servicebus_namespace and self.cosmos_endpoint):
                raise ValueError(
                    "mode=azure needs CONSUMER_SERVICEBUS_NAMESPACE and CONSUMER_COSMOS_ENDPOINT"
                )
            if self.servicebus_connection_string or self.cosmos_key:
                raise ValueError("mode=azure uses managed identity: no keys or connection strings")
        self.refuse_insecure_auth(self.mode)
        return self

    @property
    def creates_containers(self) -> bool:
        return (
            self.create_containers if self.create_containers is not None else self.mode != "azure"
        )
