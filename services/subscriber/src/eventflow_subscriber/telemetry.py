"""This service's telemetry: the project's one OpenTelemetry and logging setup
(`eventflow_contracts.telemetry`: Azure Monitor in Azure, OTLP where OTEL_EXPORTER_OTLP_ENDPOINT is set,
span files for `make trace`) under this service's name."""

from __future__ import annotations

from eventflow_contracts import telemetry as shared
from eventflow_contracts.telemetry import Telemetry
from eventflow_subscriber.settings import Settings

SERVICE = "subscriber"
METER = "eventflow_subscriber"

__all__ = ["SERVICE", "Telemetry", "configure_telemetry", "metrics_only"]


def configure_telemetry(settings: Settings) -> Telemetry:
    telemetry = shared.configure_telemetry(SERVICE, settings, METER)
    return telemetry


def metrics_only() -> Telemetry:
    """Instruments seen only at `/metrics`: no global state (tests)."""
    return shared.metrics_only(METER)
