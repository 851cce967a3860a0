"""Fault controls over HTTP, reachable from another process.

Server side (`start_admin`): a small aiohttp app on the admin port. Client side:
`MessagingEmulatorAdmin(admin_url)` (synchronous, stdlib only, so tests and scripts in any process
can use it) and the CLI `python -m eventflow_emulators.messaging.admin <admin url> <command> ...`.

Endpoints (all POST with a JSON body unless noted):
- `/faults/drop-connections`            drop every client connection now (TCP abort, no close frame)
- `/faults/stall` {seconds}             stop reading and writing on every connection for T seconds
- `/faults/server-busy` {seconds, operations?}  refuse with `com.microsoft:server-busy` for T seconds
- `/faults/steal-partition` {hub, partition, consumer_group?}  detach the partition's readers with
  `amqp:link:stolen`, as when a higher owner level takes it
- `/faults/expire-lock` {queue, session_id? | sequence_number?}  expire a session or message lock now
- `/faults/apply-then-drop` {operation, count?}  apply the next `operation` (send | settle |
  management | receive), then drop its connection before the acknowledgement
- `/faults/clear`                       end server-busy and pending apply-then-drop
- GET `/health`                         {"status": "ok", "connections": n}
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .broker import MessagingBroker


async def start_admin(broker: MessagingBroker, host: str, port: int) -> tuple[web.AppRunner, int]:
    app = web.Application()

    async def body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        data = await request.json()
        return data if isinstance(data, dict) else {}

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "connections": len(broker.connections)})

    async def drop(_: web.Request) -> web.Response:
        return web.json_response({"dropped": broker.drop_connections()})

    async def stall(request: web.Request) -> web.Response:
        data = await body(request)
        return web.json_response({"stalled": broker.stall(float(data["seconds"]))})

    async def busy(request: web.Request) -> web.Response:
        data = await body(request)
        broker.faults.server_busy(float(data["seconds"]), data.get("operations"))
        return web.json_response({"busy_for": float(data["seconds"])})

    async def steal(request: web.Request) -> web.Response:
        data = await body(request)
        stolen = broker.eventhubs.steal(
            str(data["hub"]), data.get("consumer_group"), str(data["partition"])
        )
        return web.json_response({"stolen": stolen})

    async def expire(request: web.Request) -> web.Response:
        data = await body(request)
        expired = broker.servicebus.expire_lock(
            str(data["queue"]), session_id=data.get("session_id"),
            sequence_number=data.get("sequence_number"),
        )  # fmt: skip
        return web.json_response({"expired": expired})

    async def apply_then_drop(request: web.Request) -> web.Response:
        data = await body(request)
        try:
            broker.faults.apply_then_drop(str(data["operation"]), int(data.get("count", 1)))
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response({"armed": data["operation"]})

    async def clear(_: web.Request) -> web.Response:
        broker.faults.clear()
        return web.json_response({"cleared": True})

    app.router.add_get("/health", health)
    app.router.add_post("/faults/drop-connections", drop)
    app.router.add_post("/faults/stall", stall)
    app.router.add_post("/faults/server-busy", busy)
    app.router.add_post("/faults/steal-partition", steal)
    app.router.add_post("/faults/expire-lock", expire)
    app.router.add_post("/faults/apply-then-drop", apply_then_drop)
    app.router.add_post("/faults/clear", clear)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes the bound port only here
    assert server is not None
    bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, int(bound)


class MessagingEmulatorAdmin:
    """A typed client of the admin endpoint; each call returns the endpoint's JSON answer."""

    def __init__(self, admin_url: str, *, timeout: float = 10.0) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.timeout = timeout

    def _call(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.admin_url + path, data=data, method="GET" if data is None else "POST",
            headers={"content-type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def health(self) -> dict[str, Any]:
        return self._call("/health")

    def drop_connections(self) -> int:
        return int(self._call("/faults/drop-connections", {})["dropped"])

    def stall(self, seconds: float) -> int:
        return int(self._call("/faults/stall", {"seconds": seconds})["stalled"])

    def server_busy(self, seconds: float, operations: list[str] | None = None) -> None:
        self._call("/faults/server-busy", {"seconds": seconds, "operations": operations})

    def steal_partition(self, hub: str, partition: str, consumer_group: str | None = None) -> int:
        payload = {"hub": hub, "partition": partition, "consumer_group": consumer_group}
        return int(self._call("/faults/steal-partition", payload)["stolen"])

    def expire_lock(
        self, queue: str, *, session_id: str | None = None, sequence_number: int | None = None
    ) -> int:
        payload = {"queue": queue, "session_id": session_id, "sequence_number": sequence_number}
        return int(self._call("/faults/expire-lock", payload)["expired"])

    def apply_then_drop(self, operation: str, count: int = 1) -> None:
        self._call("/faults/apply-then-drop", {"operation": operation, "count": count})

    def clear(self) -> None:
        self._call("/faults/clear", {})


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eventflow_emulators.messaging.admin")
    parser.add_argument("admin_url")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("health")
    commands.add_parser("drop-connections")
    commands.add_parser("clear")
    commands.add_parser("stall").add_argument("seconds", type=float)
    busy = commands.add_parser("server-busy")
    busy.add_argument("seconds", type=float)
    busy.add_argument("--operation", action="append")
    steal = commands.add_parser("steal-partition")
    steal.add_argument("hub")
    steal.add_argument("partition")
    steal.add_argument("--consumer-group")
    expire = commands.add_parser("expire-lock")
    expire.add_argument("queue")
    expire.add_argument("--session-id")
    expire.add_argument("--sequence-number", type=int)
    drop = commands.add_parser("apply-then-drop")
    drop.add_argument("operation")
    drop.add_argument("--count", type=int, default=1)
    args = parser.parse_args(argv)
    admin = MessagingEmulatorAdmin(args.admin_url)
    actions: dict[str, Callable[[], Any]] = {
        "health": admin.health,
        "drop-connections": admin.drop_connections,
        "clear": admin.clear,
        "stall": lambda: admin.stall(args.seconds),
        "server-busy": lambda: admin.server_busy(args.seconds, args.operation),
        "steal-partition": lambda: admin.steal_partition(
            args.hub, args.partition, args.consumer_group
        ),
        "expire-lock": lambda: admin.expire_lock(
            args.queue, session_id=args.session_id, sequence_number=args.sequence_number
        ),
        "apply-then-drop": lambda: admin.apply_then_drop(args.operation, args.count),
    }
    sys.stdout.write(json.dumps(actions[args.command]()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
