"""The emulator process: wiring and the console script.

    eventflow-cosmos-emulator --host 127.0.0.1 --port 8081 --data .local/cosmos \\
        [--partition-key-ranges 4] [--key <base64>] [--request-units-per-second N]
    eventflow-cosmos-emulator admin --endpoint http://127.0.0.1:8081/ status|split|throttle|change-feed-scan|fault|outage|reset

Prints `eventflow-cosmos-emulator listening on http://<host>:<port>/` once it accepts
connections (with `--port 0`, the port picked), and exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from eventflow_emulators.cosmos.admin import FAULT_KINDS, OPERATIONS, Controls, CosmosEmulatorAdmin
from eventflow_emulators.cosmos.model import Account
from eventflow_emulators.cosmos.protocol.auth import MasterKey
from eventflow_emulators.cosmos.protocol.http import CosmosProtocol
from eventflow_emulators.cosmos.store import Store

EMULATOR_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)
"""The well-known key of Microsoft's Cosmos DB emulator, the default here too."""
PURGE_INTERVAL_S = 5.0
LOG = logging.getLogger("eventflow_emulators.cosmos")


def build_app(account: Account, controls: Controls, key: str) -> web.Application:
    protocol = CosmosProtocol(account, controls, MasterKey(key))
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", protocol.handle)
    return app


async def _purge_forever(account: Account) -> None:
    """Expired items are invisible at once; this removes them from the file now and then."""
    while True:
        await asyncio.sleep(PURGE_INTERVAL_S)
        account.purge_expired()


async def serve(arguments: argparse.Namespace) -> None:
    store = Store(Path(arguments.data) / "cosmos.sqlite")
    account = Account(store, ranges_per_container=arguments.partition_key_ranges)
    controls = Controls(request_units_per_second=arguments.request_units_per_second)
    runner = web.AppRunner(build_app(account, controls, arguments.key), access_log=None,
                           handle_signals=False)  # fmt: skip
    # Handlers first: a supervisor may send SIGTERM as soon as it reads the listening line.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await runner.setup()
    site = web.TCPSite(runner, arguments.host, arguments.port, reuse_address=True)
    await site.start()
    port = runner.addresses[0][1]
    sys.stdout.write(f"eventflow-cosmos-emulator listening on http://{arguments.host}:{port}/\n")
    sys.stdout.flush()
    purge = asyncio.create_task(_purge_forever(account))
    try:
        await stop.wait()
        # Under one supervisor (make dev) every process gets the stop signal at once: serving a
        # little longer lets the services finish their own shutdown writes (lease releases).
        await asyncio.sleep(arguments.shutdown_delay)
    finally:
        purge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purge
        await runner.cleanup()
        store.close()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventflow-cosmos-emulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--data", default=".local/cosmos", help="folder of the SQLite file")
    parser.add_argument("--partition-key-ranges", type=_positive, default=4,
                        help="partition key ranges of a new container (default 4)")  # fmt: skip
    parser.add_argument("--key", default=EMULATOR_KEY, help="base64 master key")
    parser.add_argument("--request-units-per-second", type=float, default=None,
                        help="throttle (429) past this budget; default: never")  # fmt: skip
    parser.add_argument("--shutdown-delay", type=float, default=0.0,
                        help="seconds to keep serving after SIGTERM/SIGINT (default 0)")  # fmt: skip
    return parser


def _admin_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventflow-cosmos-emulator admin")
    parser.add_argument("--endpoint", default="http://127.0.0.1:8081/")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status")
    commands.add_parser("reset", help="remove every fault rule")
    split = commands.add_parser("split", help="split a partition key range")
    split.add_argument("database")
    split.add_argument("container")
    split.add_argument("range_id")
    throttle = commands.add_parser("throttle", help="set the RU/s budget ('none' for no limit)")
    throttle.add_argument("request_units_per_second")
    scan = commands.add_parser(
        "change-feed-scan", help="LSNs examined per change feed read ('none' for all)"
    )
    scan.add_argument("lsns")
    fault = commands.add_parser("fault", help="fail the next COUNT matching requests")
    fault.add_argument("kind", choices=[k for k in FAULT_KINDS if k != "outage"])
    fault.add_argument("--count", type=int, default=1)
    fault.add_argument("--operation", choices=OPERATIONS)
    fault.add_argument("--path-contains")
    outage = commands.add_parser("outage", help="answer 503 to matching requests for SECONDS")
    outage.add_argument("seconds", type=float)
    outage.add_argument("--operation", choices=OPERATIONS)
    outage.add_argument("--path-contains")
    return parser


def run_admin(argv: Sequence[str]) -> int:
    arguments = _admin_parser().parse_args(argv)
    admin = CosmosEmulatorAdmin(arguments.endpoint)
    result: object = None
    if arguments.command == "status":
        result = admin.status()
    elif arguments.command == "reset":
        admin.reset_faults()
    elif arguments.command == "split":
        result = admin.split(arguments.database, arguments.container, arguments.range_id)
    elif arguments.command == "throttle":
        value = arguments.request_units_per_second
        admin.set_request_units_per_second(None if value == "none" else float(value))
    elif arguments.command == "change-feed-scan":
        admin.set_change_feed_scan(None if arguments.lsns == "none" else int(arguments.lsns))
    elif arguments.command == "fault":
        result = admin.inject_fault(arguments.kind, count=arguments.count,
                                    operation=arguments.operation, path_contains=arguments.path_contains)  # fmt: skip
    elif arguments.command == "outage":
        result = admin.outage(arguments.seconds, operation=arguments.operation,
                              path_contains=arguments.path_contains)  # fmt: skip
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["admin"]:
        return run_admin(args[1:])
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(_server_parser().parse_args(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
