"""OpenTelemetry (traces, metrics, logs) and structlog, as every eventflow service sets them up: one
trace per change only works when the four services agree on how spans are named, sampled, linked and
written, so this setup travels with the contracts (the `telemetry` extra) instead of in four copies.
Each service calls it once at start with its name and its settings.

Azure (an Application Insights connection string is set): the Azure Monitor distro, with the
managed identity (the component accepts no keys). Elsewhere: the SDK, exporting over OTLP when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard OTEL_* variables apply), and writing finished
spans as JSON lines into `trace_dir` when that is set (`make dev`, `make trace`, the e2e tests).
The Azure SDKs' own spans (Cosmos DB, Event Hubs, Service Bus) come through azure-core's
OpenTelemetry plugin. Log lines inside a span carry its `trace_id` and `span_id`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
import structlog
from azure.core.settings import settings as azure_settings
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

FILE_EXPORT_DELAY_MS = 200
"""Spans reach the trace files this soon; a SIGKILLed process loses at most this much."""


class TelemetryFields(BaseModel):
    """The settings every service reads for its logs and telemetry; a service's settings class
    inherits them (under its own environment prefix, e.g. PUBLISHER_TRACE_DIR)."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: the console renderer on a terminal, JSON lines otherwise"
    )
    trace_dir: Path | None = Field(
        default=None, description="write finished spans as JSON lines here (make dev, make trace)"
    )
    trace_sampling_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    applicationinsights_connection_string: str | None = Field(
        default=None,
        validation_alias="APPLICATIONINSIGHTS_CONNECTION_STRING",
        description="Azure Monitor; not a secret: the component takes no keys (Entra ID only)",
    )


class TelemetrySettings(Protocol):
    """What the setup reads of a service's settings."""

    @property
    def log_level(self) -> str: ...
    @property
    def log_format(self) -> str: ...
    @property
    def trace_dir(self) -> Path | None: ...
    @property
    def trace_sampling_ratio(self) -> float: ...
    @property
    def applicationinsights_connection_string(self) -> str | None: ...


@dataclass(frozen=True)
class Telemetry:
    """The service's meter, the registry `/metrics` serves (Prometheus text of the same
    instruments), and the flush-and-stop call for shutdown."""

    meter: Meter
    registry: CollectorRegistry
    shutdown: Callable[[], None]


def metrics_only(meter_name: str) -> Telemetry:
    """Instruments seen only at `/metrics`: no global state (tests)."""
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[_prometheus(registry)])
    return Telemetry(provider.get_meter(meter_name), registry, provider.shutdown)


def _prometheus(registry: CollectorRegistry) -> PrometheusMetricReader:
    return PrometheusMetricReader(
        disable_target_info=True, scope_info_enabled=False, registry=registry
    )


def configure_telemetry(service: str, settings: TelemetrySettings, meter_name: str) -> Telemetry:
    """Set the global tracer, meter and logging configuration of `service` (e.g. "publisher":
    resource `eventflow-publisher`, span files `publisher-<replica>.jsonl`, logs `service=publisher`)
    from its settings; its instruments come from `meter_name`."""
    replica = os.environ.get("CONTAINER_APP_REPLICA_NAME", f"{socket.gethostname()}-{os.getpid()}")
    resource = Resource.create({"service.name": f"eventflow-{service}",
                                "service.instance.id": replica})  # fmt: skip
    configure_logging(service, settings.log_level, settings.log_format, replica)
    azure_settings.tracing_implementation = "opentelemetry"
    registry = CollectorRegistry()
    if settings.applicationinsights_connection_string:
        shutdown = _azure_monitor(settings, resource, _prometheus(registry))
        return Telemetry(metrics.get_meter(meter_name), registry, shutdown)
    otlp = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    # Spans that no exporter takes are not recorded: their ids still travel and reach the logs.
    ratio = settings.trace_sampling_ratio if otlp or settings.trace_dir else 0.0
    tracer = TracerProvider(resource=resource, sampler=ParentBased(EventTraces(ratio)))
    readers = _otlp(tracer, resource) if otlp else []
    if settings.trace_dir is not None:
        tracer.add_span_processor(span_file(service, settings.trace_dir, replica))
    trace.set_tracer_provider(tracer)
    meter = MeterProvider(resource=resource, metric_readers=[_prometheus(registry), *readers])
    metrics.set_meter_provider(meter)

    def stop() -> None:
        tracer.shutdown()
        meter.shutdown()

    return Telemetry(meter.get_meter(meter_name), registry, stop)


def _azure_monitor(
    settings: TelemetrySettings, resource: Resource, prometheus: PrometheusMetricReader
) -> Callable[[], None]:
    from azure.identity import DefaultAzureCredential  # noqa: PLC0415
    from azure.monitor.opentelemetry import configure_azure_monitor  # noqa: PLC0415

    configure_azure_monitor(
        connection_string=settings.applicationinsights_connection_string,
        credential=DefaultAzureCredential(), resource=resource,
        sampling_ratio=settings.trace_sampling_ratio, enable_live_metrics=False,
        metric_readers=[prometheus],
        # The producer instruments its own app (probes and ASGI send/receive spans left out).
        instrumentation_options={"fastapi": {"enabled": False}},
    )  # fmt: skip

    def shutdown() -> None:
        for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
            stop: Any = getattr(provider, "shutdown", None)
            if stop is not None:
                stop()

    return shutdown


def _otlp(tracer: TracerProvider, resource: Resource) -> list[Any]:
    """Spans, logs and metrics over OTLP (endpoint, headers, protocol from OTEL_* variables)."""
    from opentelemetry._logs import set_logger_provider  # noqa: PLC0415
    from opentelemetry.exporter.otlp.proto.http import _log_exporter, metric_exporter  # noqa: PLC0415
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler  # noqa: PLC0415
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: PLC0415

    tracer.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(BatchLogRecordProcessor(_log_exporter.OTLPLogExporter()))
    set_logger_provider(logs)
    logging.getLogger().addHandler(LoggingHandler(logger_provider=logs))
    return [PeriodicExportingMetricReader(metric_exporter.OTLPMetricExporter())]


def span_file(service: str, folder: Path, replica: str) -> BatchSpanProcessor:
    """Finished spans as JSON lines, one file per process (readers: `make trace`, the e2e test)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = (folder / f"{service}-{replica}.jsonl").open("a", encoding="utf-8")
    resource_name = f"eventflow-{service}"

    def line(span: ReadableSpan) -> str:
        context, parent = span.get_span_context(), span.parent
        assert context is not None
        return orjson.dumps({
            "name": span.name, "service": resource_name, "kind": span.kind.name,
            "trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}",
            "parent_id": f"{parent.span_id:016x}" if parent else None,
            "start_ns": span.start_time, "end_ns": span.end_time, "status": span.status.status_code.name,
            "attributes": dict(span.attributes or {}),
            "links": [[f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}"] for link in span.links],
        }).decode() + "\n"  # fmt: skip

    exporter = ConsoleSpanExporter(out=out, formatter=line)
    # A queue deep enough for a burst of pages between two writes (the SDK's 2048 drops spans,
    # with a warning, at a few thousand events per second).
    return BatchSpanProcessor(
        exporter, schedule_delay_millis=FILE_EXPORT_DELAY_MS, max_queue_size=65536
    )


class EventTraces(Sampler):
    """Which new traces to record: requests, per-event spans and batches linked to events, at
    `ratio`. A root span of another kind without links is an SDK's background call (change feed
    polls, lease renewals, settlements): not recorded, nor its children."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None, trace_state: TraceState | None = None,
                      ) -> SamplingResult:  # fmt: skip
        if kind in (SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER) or links:
            return self._ratio.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return f"EventTraces{{{self._ratio.get_description()}}}"


def _trace_ids(_: Any, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


def configure_logging(
    service: str, level: str, log_format: str = "json", replica: str = ""
) -> None:
    """Route structlog and the standard library to stdout: JSON lines, or the console renderer
    (`console`, or `auto` on a terminal)."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _trace_ids,
    ]
    console = log_format == "console" or (log_format == "auto" and sys.stdout.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer()
        if console
        else structlog.processors.JSONRenderer(serializer=lambda v, **_: orjson.dumps(v).decode())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        cache_logger_on_first_use=True,
    )  # fmt: skip
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *([] if console else [structlog.processors.format_exc_info]), renderer],
    )  # fmt: skip
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("azure").setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(service=service, replica=replica or str(os.getpid()))
