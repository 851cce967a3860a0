"""The producer's settings: one class, read from PRODUCER_* environment variables at start."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventflow_contracts.auth import AuthFields
from eventflow_contracts.orders_container import WritePattern
from eventflow_contracts.telemetry import TelemetryFields

DAY = 24 * 3600

# The Cosmos DB emulators' published well-known key (the official emulator's and this project's):
# not a secret; it only ever opens a local emulator.
EMULATOR_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)
LOCAL_COSMOS_ENDPOINT = "http://127.0.0.1:8081/"


class Settings(BaseSettings, TelemetryFields, AuthFields):
    """`mode` picks the backends: `local` (the project's emulators on this machine, endpoints and
    keys by default), `emulator` (an emulator named by endpoint and key: compose, the official
    one) or `azure` (managed identity, no keys). The SDK code path is the same for all three.
    Callers' tokens (AuthFields): required in azure mode, from Entra ID only; off in the emulator
    modes unless PRODUCER_AUTH_TENANT_ID and PRODUCER_AUTH_CLIENT_ID are set."""

    model_config = SettingsConfigDict(env_prefix="PRODUCER_", extra="ignore")

    mode: Literal["local", "emulator", "azure"] = "local"
    cosmos_endpoint: str | None = None
    cosmos_key: SecretStr | None = None
    database: str = "eventflow"
    orders_container: str = "orders"
    create_containers: bool | None = Field(
        default=None, description="create database and container at start; default: not in azure"
    )
    write_pattern: WritePattern = Field(
        default="outbox",
        description="outbox: the order and its events in one batch; entity-first: the order only "
        "(events are derived by the publisher); event-first: the events only (the source of truth, "
        "never expiring; a read model is kept by the publisher's read-model maintainer)",
    )
    event_ttl_seconds: int = Field(
        default=7 * DAY, ge=60, description="the outbox's TTL (the outbox pattern only)"
    )
    idempotency_ttl_seconds: int = Field(default=DAY, ge=60)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    store_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="bound of one store operation, the SDK's retries "
        "included; past it the request answers 503 store-unavailable",
    )
    startup_wait_seconds: float = Field(
        default=5.0,
        ge=0,
        description="how long the app waits for its store before it answers; "
        "after that it answers unready (503) while it keeps connecting",
    )
    event_source: str = "/eventflow/producer-api"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    @model_validator(mode="after")
    def _backend_settings_fit_the_mode(self) -> Self:
        if self.mode == "local":  # the project's own emulators on this machine (make dev)
            self.cosmos_endpoint = self.cosmos_endpoint or LOCAL_COSMOS_ENDPOINT
            self.cosmos_key = self.cosmos_key or SecretStr(EMULATOR_KEY)
        if self.mode == "emulator" and not (self.cosmos_endpoint and self.cosmos_key):
            raise ValueError("mode=emulator needs PRODUCER_COSMOS_ENDPOINT and PRODUCER_COSMOS_KEY")
        if self.mode == "azure":
            if not self.cosmos_endpoint:
                raise ValueError("mode=azure needs PRODUCER_COSMOS_ENDPOINT")
            if self.cosmos_key is not None:
                raise ValueError("mode=azure uses managed identity: do not set PRODUCER_COSMOS_KEY")
        self.refuse_insecure_auth(self.mode)
        return self

    @property
    def creates_containers(self) -> bool:
        return (
            self.create_containers if self.create_containers is not None else self.mode != "azure"
        )
