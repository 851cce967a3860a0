"""Entry point. SIGTERM/SIGINT: accept no new session, finish the in-flight message, close.
Backends that are down at start are waited for, for as long as it takes: the HTTP endpoint answers
meanwhile (/healthz 200, /readyz and the read API 503); a stop signal while still connecting gives
up the connecting (exit 0). Invalid settings or a setup a backend refuses (a wrong key, a missing
role, container or queue): one line on stderr naming the cause, exit 2."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import structlog
from aiohttp import web
from pydantic import ValidationError

from eventflow_consumer.adapters.cosmos_membership import CosmosLaneCounts, CosmosMembership
from eventflow_consumer.adapters.servicebus_lanes import LaneHolder, ServiceBusSessionProbe
from eventflow_consumer.adapters.servicebus_sessions import SessionPump
from eventflow_consumer.barrier import GenerationBarrier
from eventflow_consumer.bootstrap import ConfigurationError, Resources, open_resources, worker_of
from eventflow_consumer.handling import InboxHandler
from eventflow_consumer.lanes import LaneSettings, LaneWorker
from eventflow_consumer.observability import METER, SERVICE, ConsumerMetrics, http_app
from eventflow_consumer.ports import TransientStoreError
from eventflow_consumer.sessions import SessionWorker, WorkerSettings
from eventflow_consumer.settings import Settings
from eventflow_consumer.share import EXPIRY_PERIODS, LaneShare
from eventflow_contracts.auth import Authenticator
from eventflow_contracts.lanes import Lane
from eventflow_contracts.telemetry import Telemetry, configure_telemetry

LOG = structlog.get_logger("eventflow_consumer")


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
        sys.stderr.write(f"eventflow-consumer: invalid settings: {settings_problems(error)}\n")
        raise SystemExit(2) from None


def lanes_of(
    settings: Settings,
    resources: Resources,
    sessions: SessionWorker,
    metrics: ConsumerMetrics,
    *,
    shared: bool = False,
    barrier: GenerationBarrier | None = None,
) -> LaneHolder | None:
    """The holder of this consumer's lanes, or None: no lanes (`INBOX_LANES` 0). Both poison
    policies run per order inside a lane. `shared`: the holder waits for its plan from the fair
    share (`share_of`); otherwise it tries every lane. `barrier`: the generation barrier
    (`barrier_of`) early events wait behind before their gap wait starts."""
    if settings.inbox_lanes == 0:
        return None
    worker = lane_worker_of(settings, resources, sessions, metrics, barrier)
    session_ids = [Lane(settings.inbox_lanes, n).session_id for n in range(settings.inbox_lanes)]
    return LaneHolder(
        resources.lane_servicebus or resources.servicebus, settings.inbox_queue, worker, session_ids,
        renew_seconds=settings.session_renew_seconds, retry_seconds=settings.lane_retry_seconds,
        unplanned_retry_seconds=settings.lane_share_seconds if shared else None,
        prefetch=settings.lane_prefetch, wanted=frozenset() if shared else None,
    )  # fmt: skip


def lane_worker_of(
    settings: Settings,
    resources: Resources,
    sessions: SessionWorker,
    metrics: ConsumerMetrics,
    barrier: GenerationBarrier | None = None,
) -> LaneWorker:
    """The lane worker; it shares the session worker's view of the store's health."""
    worker_settings = WorkerSettings(
        policy=settings.poison_policy, gap_wait_seconds=settings.gap_wait_seconds,
        retry_max_seconds=settings.store_retry_max_seconds, max_deferred=settings.max_deferred_per_session,
    )  # fmt: skip
    # An idle receive holds the lane's receiver, and the lock renewal takes its turn after it: the
    # wait stays within one renewal period, so a renewal is never late by more than two periods.
    idle = min(max(settings.session_idle_seconds, 1.0), settings.session_renew_seconds)
    lane_settings = LaneSettings(
        worker=worker_settings, idle_seconds=idle, max_in_flight=settings.lane_max_in_flight,
        order_max_in_flight=settings.order_max_in_flight,
        unblock_poll_seconds=settings.unblock_poll_seconds,
        barrier_max_seconds=settings.lane_barrier_max_seconds,
    )  # fmt: skip
    return LaneWorker(
        InboxHandler(resources.store), resources.store, lane_settings, observer=metrics,
        health=sessions.health, barrier=barrier,
    )  # fmt: skip


def barrier_of(
    settings: Settings, resources: Resources, *, consumer: bool = True
) -> GenerationBarrier | None:
    """The generation barrier: the lane counts the inbox has been used with in the consumer's
    store, and looks into the inbox's other sessions through the lanes' client. `consumer`: this
    process consumes with `INBOX_LANES` (its count is noted as the newest); not the admin CLI."""
    if settings.inbox_lanes == 0 or resources.members is None:
        return None
    return GenerationBarrier(
        CosmosLaneCounts(resources.members, queue=settings.inbox_queue),
        ServiceBusSessionProbe(
            resources.lane_servicebus or resources.servicebus, settings.inbox_queue
        ),
        current=settings.inbox_lanes if consumer else None,
        poll_seconds=settings.lane_barrier_seconds,
    )


def share_of(settings: Settings, resources: Resources, holder: LaneHolder) -> LaneShare:
    """The fair share of the lanes between this inbox's replicas, through membership records in
    the consumer's own store."""
    member_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    membership = CosmosMembership(
        resources.members, queue=settings.inbox_queue, member_id=member_id,
        lanes=settings.inbox_lanes, expiry_seconds=EXPIRY_PERIODS * settings.lane_share_seconds,
    )  # fmt: skip
    return LaneShare(holder.lanes, membership, holder, period=settings.lane_share_seconds)


async def _together(*parts: Awaitable[None]) -> None:
    await asyncio.gather(*parts)


async def run(settings: Settings, telemetry: Telemetry | None = None) -> None:
    metrics = ConsumerMetrics(telemetry)
    stop, connecting = asyncio.Event(), anyio.CancelScope()

    def on_stop_signal() -> None:
        stop.set()
        connecting.cancel()  # gives up the connecting, if it is still under way

    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, on_stop_signal)
    connected: list[Resources] = []  # once connected: the read API answers from its store
    checks: list[Callable[[], bool]] = []  # once running: readiness

    async def read_order(order_id: str) -> dict[str, Any] | None:
        if not connected:
            raise TransientStoreError("still connecting to Cosmos DB")
        return await connected[0].store.get(order_id)

    auth = Authenticator(settings.auth_config())
    runner = web.AppRunner(
        http_app(metrics, read_order, lambda: bool(checks) and checks[0](), auth), access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, settings.http_host, settings.http_port).start()
    try:
        async with AsyncExitStack() as stack:
            with connecting:
                resources = await stack.enter_async_context(open_resources(settings))
            if connecting.cancel_called:
                LOG.info("stopped while connecting")
                return
            connected.append(resources)
            worker = worker_of(settings, resources, metrics)
            barrier = barrier_of(settings, resources)
            holder = lanes_of(
                settings, resources, worker, metrics, shared=resources.members is not None,
                barrier=barrier,
            )  # fmt: skip
            share = share_of(settings, resources, holder) if holder and resources.members else None
            pump = SessionPump(
                resources.servicebus, settings.inbox_queue, worker,
                concurrency=settings.leftover_sessions if holder else settings.max_concurrent_sessions,
                idle_seconds=settings.session_idle_seconds, renew_seconds=settings.session_renew_seconds,
                accept_wait_seconds=settings.session_accept_wait_seconds, lanes=holder,
                seen=barrier.seen if barrier else None, lane_worker=holder.worker if holder else None,
            )  # fmt: skip
            parts = [pump.run()] + ([holder.run()] if holder else [])
            parts += [share.run()] if share else []
            running = asyncio.create_task(_together(*parts))

            def ready() -> bool:
                lanes_ok = holder is None or holder.connected
                return (
                    not running.done() and worker.health.available and pump.connected and lanes_ok
                )

            checks.append(ready)
            await asyncio.wait(
                [running, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            if share and await share.leave() and not running.done():
                # The others read the new membership within a period and start trying this
                # replica's lanes: it keeps them until then, so none stays unheld for long.
                LOG.info("leaving the lane share: lanes kept one more period", seconds=share.period)
                await asyncio.wait([running], timeout=share.period)
            LOG.info("stopping: finishing in-flight messages")
            pump.stop()
            if holder:
                holder.stop()
            await running
    finally:
        await runner.cleanup()
        await auth.close()
    LOG.info("consumer stopped")


def main() -> None:
    settings = load_settings()
    telemetry = configure_telemetry(SERVICE, settings, METER)
    try:
        asyncio.run(run(settings, telemetry))
    except ConfigurationError as error:
        sys.stderr.write(f"eventflow-consumer: cannot start: {error}\n")
        raise SystemExit(2) from None
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
