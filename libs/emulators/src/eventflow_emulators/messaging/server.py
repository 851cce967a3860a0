"""The emulator process: wiring and the console script.

    eventflow-messaging-emulator --host 127.0.0.1 --port 5672 \\
        --eventhubs-config emulators/eventhubs.json --servicebus-config emulators/servicebus.json \\
        --data .local/messaging [--key SAS_KEY_VALUE] [--admin-port 0]

Prints `eventflow-messaging-emulator listening on amqp://<host>:<port>` and
`eventflow-messaging-emulator admin on http://<host>:<admin port>`, then serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from .admin import start_admin
from .amqp.connection import FRAME_TIMEOUT_S, Connection
from .broker import MessagingBroker
from .config import load_eventhubs, load_servicebus
from .eventhubs.model import EventHubsModel
from .servicebus.model import ServiceBusModel
from .store import Store

DEFAULT_KEY_NAME = "RootManageSharedAccessKey"
DEFAULT_KEY = "SAS_KEY_VALUE"  # the official emulators' documented key
PURGE_EVERY_S = 60.0

log = logging.getLogger("eventflow_emulators.messaging")


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    admin_port: int
    eventhubs_config: Path | None
    servicebus_config: Path | None
    data: Path
    key_name: str
    key: str
    shutdown_delay: float = 0.0
    frame_timeout: float = FRAME_TIMEOUT_S


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="eventflow-messaging-emulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5672, help="AMQP port; 0 picks a free one")
    parser.add_argument(
        "--admin-port", type=int, default=0, help="fault-control HTTP port; 0 picks"
    )
    parser.add_argument("--eventhubs-config", type=Path)
    parser.add_argument("--servicebus-config", type=Path)
    parser.add_argument("--data", type=Path, default=Path(".local/messaging"))
    parser.add_argument("--key-name", default=DEFAULT_KEY_NAME)
    parser.add_argument("--key", default=DEFAULT_KEY)
    parser.add_argument("--shutdown-delay", type=float, default=0.0,
                        help="seconds to keep serving after SIGTERM/SIGINT (default 0)")  # fmt: skip
    parser.add_argument("--frame-timeout", type=float, default=FRAME_TIMEOUT_S,
                        help="seconds a connection may take to finish its handshake or a frame"
                        f" it began (default {FRAME_TIMEOUT_S:g})")  # fmt: skip
    args = parser.parse_args(argv)
    return Options(args.host, args.port, args.admin_port, args.eventhubs_config,
                   args.servicebus_config, args.data, args.key_name, args.key,
                   args.shutdown_delay, args.frame_timeout)  # fmt: skip


async def serve(options: Options, *, ready: asyncio.Event | None = None) -> None:
    store = Store(options.data)
    eventhubs = EventHubsModel(load_eventhubs(options.eventhubs_config), store)
    loop = asyncio.get_running_loop()
    servicebus = ServiceBusModel(
        load_servicebus(options.servicebus_config), store, schedule=loop.call_later
    )
    broker = MessagingBroker(eventhubs, servicebus, {options.key_name: options.key})

    def new_connection() -> Connection:
        connection = Connection(
            broker, on_close=broker.connection_lost, frame_timeout=options.frame_timeout
        )
        broker.connections.add(connection)
        return connection

    server = await loop.create_server(new_connection, options.host, options.port)
    port = server.sockets[0].getsockname()[1]
    admin_runner, admin_port = await start_admin(broker, options.host, options.admin_port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The one line a launcher waits for (testing.py), then the admin URL; flushed at once.
    sys.stdout.write(f"eventflow-messaging-emulator listening on amqp://{options.host}:{port}\n")
    sys.stdout.write(f"eventflow-messaging-emulator admin on http://{options.host}:{admin_port}\n")
    sys.stdout.flush()
    if ready is not None:
        ready.set()

    async def housekeeping() -> None:
        while True:
            await asyncio.sleep(PURGE_EVERY_S)
            eventhubs.purge()
            servicebus.housekeeping()

    chores = asyncio.create_task(housekeeping())
    try:
        await stop.wait()
        # Under one supervisor (make dev) every process gets the stop signal at once: serving a
        # little longer lets the services settle, checkpoint and release partitions and sessions.
        await asyncio.sleep(options.shutdown_delay)
    finally:
        chores.cancel()
        server.close()
        broker.drop_connections()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
        await admin_runner.cleanup()
        store.close()


def main(argv: list[str] | None = None) -> None:
    level = os.environ.get("EVENTFLOW_MESSAGING_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    asyncio.run(serve(parse_args(argv)))
    sys.exit(0)


if __name__ == "__main__":
    main()
