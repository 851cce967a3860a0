"""Entry point. SIGTERM/SIGINT: take no new batch, finish the in-flight ones and their checkpoints,
close the consumer (releasing partition ownership) and the inbox sender. Backends that are down at
start are waited for, for as long as it takes (unready meanwhile); a stop signal while still
connecting gives up the connecting (exit 0). Invalid settings or a setup a backend refuses (a wrong
key, a missing role, container or queue): one line on stderr naming the cause, exit 2."""

from __future__ import annotations

import asyncio
import signal
import sys
from contextlib import AsyncExitStack

import anyio
import structlog
from aiohttp import web
from pydantic import ValidationError

from eventflow_contracts.telemetry import Telemetry, configure_telemetry
from eventflow_subscriber.adapters.eventhubs_reader import Subscription
from eventflow_subscriber.adapters.servicebus_inbox import ServiceBusInbox
from eventflow_subscriber.bootstrap import ConfigurationError, open_clients
from eventflow_subscriber.forwarding import Forwarder
from eventflow_subscriber.observability import METER, SERVICE, SubscriberMetrics, health_app
from eventflow_subscriber.settings import Settings

LOG = structlog.get_logger("eventflow_subscriber")


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
        sys.stderr.write(f"eventflow-subscriber: invalid settings: {settings_problems(error)}\n")
        raise SystemExit(2) from None


async def run(settings: Settings, telemetry: Telemetry | None = None) -> None:
    metrics = SubscriberMetrics(telemetry)
    stop, connecting = asyncio.Event(), anyio.CancelScope()

    def on_stop_signal() -> None:
        stop.set()
        connecting.cancel()  # gives up the connecting, if it is still under way

    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, on_stop_signal)
    running: list[asyncio.Task[None]] = []
    runner = web.AppRunner(
        health_app(metrics, lambda: bool(running) and not running[0].done()), access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, settings.health_host, settings.health_port).start()
    try:
        async with AsyncExitStack() as stack:
            with connecting:
                clients = await stack.enter_async_context(open_clients(settings))
            if connecting.cancel_called:
                LOG.info("stopped while connecting")
                return
            forwarder = Forwarder(
                ServiceBusInbox(clients.inbox_sender), hub=settings.eventhub_name,
                subscribed=set(settings.subscribed_types) or None, max_message_bytes=settings.max_message_bytes,
                lanes=settings.inbox_lanes, observer=metrics,
            )  # fmt: skip
            subscription = Subscription(
                clients.consumer, forwarder, max_batch_size=settings.max_batch_size,
                max_wait_time=settings.max_wait_time_seconds, starting_position=settings.starting_position,
                on_checkpoint=metrics.checkpointed, on_claim=metrics.claimed, on_release=metrics.released,
                on_failure=metrics.failed,
            )  # fmt: skip
            running.append(asyncio.create_task(subscription.run()))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([running[0], stopping], return_when=asyncio.FIRST_COMPLETED)
            LOG.info("stopping: finishing in-flight batches")
            await subscription.drain(settings.drain_timeout_seconds)
            await running[0]
    finally:
        await runner.cleanup()
    LOG.info("subscriber stopped")


def main() -> None:
    settings = load_settings()
    telemetry = configure_telemetry(SERVICE, settings, METER)
    try:
        asyncio.run(run(settings, telemetry))
    except ConfigurationError as error:
        sys.stderr.write(f"eventflow-subscriber: cannot start: {error}\n")
        raise SystemExit(2) from None
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
