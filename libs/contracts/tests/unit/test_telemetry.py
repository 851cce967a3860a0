"""The services' one telemetry setup (eventflow_contracts.telemetry), its own parts: which traces are recorded, the span file, log lines that carry
the trace. Spans come from a real SDK tracer provider (not the global one)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.trace import Link, SpanKind

from eventflow_contracts.telemetry import EventTraces, configure_logging, span_file


def _recorded(provider: TracerProvider, kind: SpanKind, *, linked: bool = False) -> bool:
    tracer = provider.get_tracer("test")
    other = tracer.start_span("other", kind=SpanKind.SERVER)
    links = [Link(other.get_span_context())] if linked else None
    span = tracer.start_span("span", kind=kind, links=links)
    with trace.use_span(span, end_on_exit=True):
        child = tracer.start_span("child")
        child.end()
    sampled = span.get_span_context().trace_flags.sampled
    assert child.get_span_context().trace_flags.sampled == sampled, "children follow the root"
    return sampled


def test_requests_event_spans_and_linked_batches_are_traced_background_calls_are_not() -> None:
    provider = TracerProvider(sampler=ParentBased(EventTraces(1.0)))
    for kind in (SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER):
        assert _recorded(provider, kind), kind
    assert _recorded(provider, SpanKind.CLIENT, linked=True), "a batch linked to its events"
    assert not _recorded(provider, SpanKind.CLIENT), "a poll of the change feed"
    assert not _recorded(provider, SpanKind.INTERNAL), "a lease renewal"
    off = TracerProvider(sampler=ParentBased(EventTraces(0.0)))
    assert not _recorded(off, SpanKind.SERVER), "ratio 0: nothing"


def test_the_span_file_has_one_line_per_finished_span(tmp_path: Path) -> None:
    provider = TracerProvider()
    processor = span_file("publisher", tmp_path, "r1")
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("parent", kind=SpanKind.PRODUCER) as parent,
        tracer.start_as_current_span("child", attributes={"ids": ["a", "b"]}),
    ):
        pass
    provider.shutdown()
    (path,) = tmp_path.glob("*.jsonl")
    assert path.name == "publisher-r1.jsonl"
    child, first = (orjson.loads(line) for line in path.read_bytes().splitlines())
    assert (first["name"], first["parent_id"], first["kind"]) == ("parent", None, "PRODUCER")
    assert child["parent_id"] == first["span_id"] == f"{parent.get_span_context().span_id:016x}"
    assert child["trace_id"] == first["trace_id"]
    assert child["service"] == "eventflow-publisher"
    assert child["attributes"] == {"ids": ["a", "b"]}
    assert first["start_ns"] <= child["start_ns"] <= child["end_ns"] <= first["end_ns"]


@pytest.fixture
def restore_logging() -> object:
    yield None
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_log_lines_inside_a_span_carry_its_ids(
    capsys: pytest.CaptureFixture[str], restore_logging: object
) -> None:
    configure_logging("publisher", "INFO", "json", "r1")
    provider = TracerProvider()
    log = structlog.get_logger("test")
    with provider.get_tracer("test").start_as_current_span("work") as span:
        log.info("inside")
        logging.getLogger("stdlib").warning("inside too")
    log.info("outside")
    inside, stdlib, outside = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    context = span.get_span_context()
    for line in (inside, stdlib):
        assert line["trace_id"] == f"{context.trace_id:032x}"
        assert line["span_id"] == f"{context.span_id:016x}"
        assert line["service"] == "publisher"
    assert "trace_id" not in outside


def test_the_console_renderer_on_request(
    capsys: pytest.CaptureFixture[str], restore_logging: object
) -> None:
    configure_logging("publisher", "INFO", "console", "r1")
    structlog.get_logger("test").info("readable", order_id="o1")
    out = capsys.readouterr().out
    assert "readable" in out
    assert "order_id" in out
    assert not out.lstrip().startswith("{")


AZURE_MONITOR_CHECK = """
import os
import sys
from opentelemetry import metrics, trace
from prometheus_client import generate_latest
from types import SimpleNamespace
from eventflow_contracts.telemetry import configure_telemetry

settings = SimpleNamespace(log_level="INFO", log_format="json", trace_dir=None, trace_sampling_ratio=1.0,
                           applicationinsights_connection_string=sys.argv[1])
telemetry = configure_telemetry("publisher", settings, "eventflow_publisher")
telemetry.meter.create_counter("eventflow_publisher_check").add(2)
with trace.get_tracer("check").start_as_current_span("span") as span:
    assert span.is_recording(), "the distro records spans"
assert type(trace.get_tracer_provider()).__module__.startswith("opentelemetry.sdk")
assert type(metrics.get_meter_provider()).__module__.startswith("opentelemetry.sdk")
assert b"eventflow_publisher_check_total 2.0" in generate_latest(telemetry.registry)
print("configured", flush=True)
os._exit(0)  # before any export: no token is asked for, nothing leaves the process
"""


def test_with_a_connection_string_the_azure_monitor_distro_takes_the_settings(
    tmp_path: Path,
) -> None:
    """The distro accepts what the module passes (resource, sampling ratio, the Prometheus reader,
    instrumentation options) and /metrics keeps working beside it. Nothing is sent anywhere: the
    ingestion endpoint is a closed local port, and the process ends before the first export."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    connection = f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:{closed}/"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))
    }
    result = subprocess.run([sys.executable, "-c", AZURE_MONITOR_CHECK, connection], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "configured" in result.stdout


CONFIGURED_CHECK = """
import sys
from pathlib import Path
from types import SimpleNamespace

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import generate_latest

from eventflow_contracts.telemetry import configure_telemetry

settings = SimpleNamespace(log_level="INFO", log_format="json", trace_dir=Path(sys.argv[1]),
                           trace_sampling_ratio=1.0, applicationinsights_connection_string=None)
telemetry = configure_telemetry("publisher", settings, "eventflow_publisher")
telemetry.meter.create_counter("eventflow_publisher_check").add(3)
with trace.get_tracer("check").start_as_current_span("send orders", kind=SpanKind.PRODUCER):
    structlog.get_logger("check").info("inside")
assert b"eventflow_publisher_check_total 3.0" in generate_latest(telemetry.registry)
telemetry.shutdown()
"""


@pytest.mark.parametrize("otlp", [False, True], ids=["span-files", "span-files-and-otlp"])
def test_configured_the_service_writes_its_spans_and_logs_them_with_their_ids(
    tmp_path: Path, otlp: bool
) -> None:
    """A process configured as a service: its span lands in the span file, its log line carries
    the span's ids. With an OTLP endpoint set (a closed local port: nothing leaves the machine) the
    exporters are added beside the file and a failed export does not break the process."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))
    }
    if otlp:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed}",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}  # fmt: skip
    result = subprocess.run([sys.executable, "-c", CONFIGURED_CHECK, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = tmp_path.glob("publisher-*.jsonl")
    (span,) = (orjson.loads(line) for line in path.read_bytes().splitlines())
    assert (span["name"], span["kind"], span["service"]) == (
        "send orders", "PRODUCER", "eventflow-publisher",
    )  # fmt: skip
    (line,) = (json.loads(text) for text in result.stdout.splitlines() if '"inside"' in text)
    assert (line["trace_id"], line["span_id"]) == (span["trace_id"], span["span_id"])
    assert line["service"] == "publisher"
