"""Entry point: settings, logging, the app, uvicorn. SIGTERM stops accepting, finishes in-flight
requests, then closes the store (the app's lifespan); while the app is still starting it gives up
the start at once and exits 0. A store that is down is waited for (the app answers unready
meanwhile); invalid settings or a setup the store refuses (a wrong key, a missing role or
container): one line on stderr naming the cause, exit 2."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Iterator
from types import FrameType

import structlog
import uvicorn
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from pydantic import ValidationError

from eventflow_contracts.telemetry import Telemetry, configure_telemetry
from eventflow_producer.api import create_app
from eventflow_producer.bootstrap import write_strategy
from eventflow_producer.settings import Settings

LOG = structlog.get_logger("eventflow_producer")


def settings_problems(error: ValidationError) -> str:
    """What is wrong with the settings, on one line, by environment variable; never their values."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        message = item["msg"].removeprefix("Value error, ")
        name = "_".join(str(part) for part in item["loc"]).upper()
        problems.append(f"{prefix}{name}: {message}" if name else message)
    return " ".join("; ".join(problems).split())


def load_settings() -> Settings:
    """The settings from the environment; invalid ones end the process with exit code 2."""
    try:
        return Settings()
    except ValidationError as error:
        sys.stderr.write(f"eventflow-producer-api: invalid settings: {settings_problems(error)}\n")
        raise SystemExit(2) from None


class Server(uvicorn.Server):
    """uvicorn looks at a stop signal only once the app's startup is over, and the startup waits
    a few seconds for the store. This server gives up the startup instead; and it stops when the
    app finds its setup wrong (`stop_for`)."""

    serving: asyncio.Task[None] | None = None
    fatal: str | None = None

    def stop_for(self, reason: str) -> None:
        self.fatal = reason
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """A stop signal is this service's normal end: once the graceful stop is over, exit 0 as
        the other services do, instead of uvicorn raising the signal again (exit 143)."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.serving = asyncio.current_task()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if not self.started and self.serving is not None:
            self.serving.get_loop().call_soon_threadsafe(self.serving.cancel)


def instrumented_app(settings: Settings, server: Server | None = None) -> FastAPI:
    """The app with an OpenTelemetry server span per request (health probes left out; no spans
    of their own for the ASGI send and receive calls). A wrong setup stops `server`."""
    app = create_app(settings, write_strategy(settings), *([server.stop_for] if server else []))
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz,readyz", exclude_spans=["receive", "send"]
    )
    return app


def telemetry_of(settings: Settings) -> Telemetry:
    """The project's one OpenTelemetry and logging setup, under this service's name."""
    telemetry = configure_telemetry("producer-api", settings, "eventflow_producer")
    logging.getLogger("uvicorn.access").disabled = True  # requests are logged by our middleware
    return telemetry


def create_default_app() -> FastAPI:
    """The app from the environment's settings (for `uvicorn --factory`)."""
    settings = Settings()
    telemetry_of(settings)
    return instrumented_app(settings)


def main() -> None:
    settings = load_settings()
    telemetry = telemetry_of(settings)
    server = Server(uvicorn.Config("", host=settings.host, port=settings.port, log_config=None,
                                   access_log=False, timeout_graceful_shutdown=20))  # fmt: skip
    server.config.app = instrumented_app(settings, server)
    try:
        server.run()
    except asyncio.CancelledError:
        LOG.info("stopped while starting")
    finally:
        telemetry.shutdown()
    if server.fatal is not None:
        sys.stderr.write(f"eventflow-producer-api: cannot start: {server.fatal}\n")
        raise SystemExit(2)


if __name__ == "__main__":
    main()
