"""HTTP requests of the Cosmos DB REST API to model calls, and replies to HTTP responses.

One catch-all route: the path names the resource (`dbs/{db}/colls/{coll}/docs/{id}`), the verb
and a few headers the operation (`x-ms-documentdb-isquery`, `x-ms-cosmos-is-batch-request`,
`x-ms-documentdb-is-upsert`, `A-IM: Incremental Feed`). Header names are the SDK's
(azure/cosmos/http_constants.py `HttpHeaders`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from eventflow_emulators.cosmos import errors
from eventflow_emulators.cosmos.admin import ADMIN_PREFIX, Controls, ThrottledError
from eventflow_emulators.cosmos.epk import EpkRange
from eventflow_emulators.cosmos.errors import CosmosError
from eventflow_emulators.cosmos.model import (
    MAX_ITEM_BYTES,
    MAX_QUERY_CHARACTERS,
    Account,
    ChangeFeedRequest,
    ItemOperation,
    QueryRequest,
    Reply,
    Scope,
    body_partition_key,
    parse_http_date,
    parse_partition_key_header,
)
from eventflow_emulators.cosmos.protocol.auth import MasterKey
from eventflow_emulators.cosmos.resources import Container

LOG = logging.getLogger("eventflow_emulators.cosmos")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PARTITION_KEY = "x-ms-documentdb-partitionkey"
RANGE_ID = "x-ms-documentdb-partitionkeyrangeid"
_STATIC_HEADERS = {
    "x-ms-gatewayversion": "version=2.14.0",
    "x-ms-serviceversion": "version=2.14.0.0",
    "x-ms-schemaversion": "1.18",
}
_BATCH_KINDS = {"Create": "create", "Upsert": "upsert", "Read": "read", "Delete": "delete",
                "Replace": "replace", "Patch": "patch"}  # fmt: skip
_BATCH_KINDS_BY_ID = {"read", "delete", "replace", "patch"}
_BATCH_KINDS_WITH_BODY = {"create", "upsert", "replace", "patch"}


class CosmosProtocol:
    """The request handler: auth, faults/throttling, dispatch, and the reply on the wire."""

    def __init__(self, account: Account, controls: Controls, key: MasterKey) -> None:
        self.account = account
        self.controls = controls
        self.key = key

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith(ADMIN_PREFIX):
            return await self._admin(request, path[len(ADMIN_PREFIX) :])
        activity = request.headers.get("x-ms-activity-id", "")
        segments = _segments(request)
        try:
            headers = request.headers
            self.key.verify(request.method, segments, headers.get("authorization"),
                            headers.get("x-ms-date", ""), headers.get("date", ""))  # fmt: skip
            operation = _operation_kind(request.method, segments, headers)
            timeout_after = self.controls.admit(operation, path)
            body = await _read_body(request)
            reply = self._dispatch(request, segments, body)
            self.controls.charge(reply.charge)
            if timeout_after:
                raise CosmosError(
                    408, "Request timed out after it was applied (injected by the emulator)."
                )
            self.controls.stats.answered(reply.status)
            return self._respond(reply, activity)
        except CosmosError as error:
            self.controls.stats.answered(error.status)
            return self._error(error, activity)
        except sqlite3.Error as failure:
            # The store failed (disk full, file removed): the service's equivalent is a 500.
            LOG.exception("store failure")
            self.controls.stats.answered(500)
            return self._error(
                CosmosError(500, f"The emulator's store failed: {failure}"), activity
            )
        except Exception as failure:
            # A defect of the emulator: still the service's JSON error body, and the log says why.
            LOG.exception("unexpected failure on %s %s", request.method, path)
            self.controls.stats.answered(500)
            return self._error(CosmosError(500, f"The emulator failed: {failure!r}"), activity)

    # -- dispatch -------------------------------------------------------------------------------

    def _dispatch(self, request: web.Request, segments: list[str], body: bytes) -> Reply:
        call = Call(request, segments, body)
        route = _ROUTES.get((_shape(segments), request.method))
        if route is None:
            raise CosmosError(
                405, f"{request.method} /{'/'.join(segments)} is not supported by the emulator."
            )
        return route(self, call)

    def _account(self, call: Call) -> Reply:
        return self._database_account(call.request)

    def _databases_post(self, call: Call) -> Reply:
        if call.is_query:
            return self.account.list_databases(*_query_body(call.body))
        return self.account.create_database(_object(call.body))

    def _databases_get(self, _call: Call) -> Reply:
        return self.account.list_databases(None, [])

    def _database_get(self, call: Call) -> Reply:
        return self.account.read_database(call.segments[1])

    def _database_delete(self, call: Call) -> Reply:
        return self.account.delete_database(call.segments[1])

    def _containers_post(self, call: Call) -> Reply:
        if call.is_query:
            return self.account.list_containers(call.segments[1], *_query_body(call.body))
        return self.account.create_container(call.segments[1], _object(call.body))

    def _containers_get(self, call: Call) -> Reply:
        return self.account.list_containers(call.segments[1], None, [])

    def _container_get(self, call: Call) -> Reply:
        return self.account.read_container(call.segments[1], call.segments[3])

    def _container_put(self, call: Call) -> Reply:
        return self.account.replace_container(
            call.segments[1], call.segments[3], _object(call.body)
        )

    def _container_delete(self, call: Call) -> Reply:
        return self.account.delete_container(call.segments[1], call.segments[3])

    def _container(self, call: Call) -> Container:
        container = self.account.container(call.segments[1], call.segments[3])
        intended = call.headers.get("x-ms-cosmos-intended-collection-rid")
        if intended is not None and intended != container.rid:
            # The container was deleted and recreated under the same name: the SDK refreshes its
            # cache on 400/1024 (azure/cosmos/exceptions.py `_container_recreate_exception`).
            raise errors.bad_request(
                "The collection rid in the request does not match the container.",
                errors.COLLECTION_RID_MISMATCH,
            )
        return container

    def _pkranges_get(self, call: Call) -> Reply:
        self._container(call)
        return self.account.partition_key_ranges(
            call.segments[1], call.segments[3], call.headers.get("If-None-Match")
        )

    def _docs_post(self, call: Call) -> Reply:
        container, headers = self._container(call), call.headers
        if headers.get("x-ms-cosmos-is-query-plan-request"):
            # The SDK asks only after a 400/1004, which this emulator never answers.
            raise errors.bad_request(
                "The emulator serves no query plans: it executes the supported queries itself."
            )
        if call.is_query:
            text, parameters = _query_body(call.body)
            return self.account.query(container, QueryRequest(
                text, parameters, _scope(headers), headers.get("x-ms-continuation"),
                _max_items(headers)))  # fmt: skip
        pk = _required_partition_key(headers)
        if headers.get("x-ms-cosmos-is-batch-request"):
            if len(call.body) > MAX_ITEM_BYTES:
                # The whole batch payload is limited to 2 MB (docs: transactional-batch.md).
                raise CosmosError(413, "Request size is too large.")
            return self.account.batch(container, pk, _batch_operations(container, pk, call.body))
        kind = _post_kind(headers)
        operation = ItemOperation(
            kind,
            pk,
            body=_item_body(call.body),
            if_match=call.if_match,
            if_none_match=call.if_none_match,
        )
        return _minimal(self.account.write_item(container, operation), headers)

    def _docs_get(self, call: Call) -> Reply:
        container, headers = self._container(call), call.headers
        feed = headers.get("A-IM")
        if feed is None:
            return self.account.query(container, QueryRequest(
                "SELECT * FROM c", [], _scope(headers, cross_partition=True),
                headers.get("x-ms-continuation"), _max_items(headers)))  # fmt: skip
        if feed.lower() != "incremental feed":
            raise errors.bad_request(
                f"A-IM {feed!r} (all versions and deletes) is not supported by the emulator."
            )
        since = headers.get("If-Modified-Since")
        return self.account.change_feed(container, ChangeFeedRequest(
            _scope(headers), headers.get("If-None-Match"),
            None if since is None else parse_http_date(since), _max_items(headers)))  # fmt: skip

    def _doc_get(self, call: Call) -> Reply:
        container = self._container(call)
        pk = _required_partition_key(call.headers)
        return self.account.read_item(
            container, pk, call.segments[5], call.headers.get("If-None-Match")
        )

    def _doc_put(self, call: Call) -> Reply:
        container = self._container(call)
        pk = _required_partition_key(call.headers)
        operation = ItemOperation(
            "replace",
            pk,
            call.segments[5],
            _item_body(call.body),
            if_match=call.if_match,
            if_none_match=call.if_none_match,
        )
        return _minimal(self.account.write_item(container, operation), call.headers)

    def _doc_delete(self, call: Call) -> Reply:
        container = self._container(call)
        pk = _required_partition_key(call.headers)
        return self.account.write_item(
            container,
            ItemOperation(
                "delete",
                pk,
                call.segments[5],
                if_match=call.if_match,
                if_none_match=call.if_none_match,
            ),
        )

    def _doc_patch(self, call: Call) -> Reply:
        container = self._container(call)
        pk = _required_partition_key(call.headers)
        patch = _object(call.body)
        operation = ItemOperation("patch", pk, call.segments[5], patch=_list(patch.get("operations")),
                                  condition=patch.get("condition"), if_match=call.if_match, if_none_match=call.if_none_match)  # fmt: skip
        return _minimal(self.account.write_item(container, operation), call.headers)

    def _database_account(self, request: web.Request) -> Reply:
        """The account, advertising the endpoint the client used (so endpoint discovery stays on
        this host and scheme; http://127.0.0.1:<port>/ works with the default constructor)."""
        endpoint = f"{request.scheme}://{request.host}/"
        location = [{"name": "Emulator", "databaseAccountEndpoint": endpoint}]
        body = {
            "_self": "", "id": "localhost", "_rid": request.host, "media": "//media/",
            "addresses": "//addresses/", "_dbs": "//dbs/", "writableLocations": location,
            "readableLocations": location, "enableMultipleWriteLocations": False,
            "userReplicationPolicy": {"asyncReplication": False, "minReplicaSetSize": 1, "maxReplicasetSize": 4},
            "userConsistencyPolicy": {"defaultConsistencyLevel": "Session"},
            "systemReplicationPolicy": {"minReplicaSetSize": 1, "maxReplicasetSize": 4},
            "readPolicy": {"primaryReadCoefficient": 1, "secondaryReadCoefficient": 1},
            "queryEngineConfiguration": "{}",
        }  # fmt: skip
        return Reply(200, orjson.dumps(body), charge=0)

    # -- responses ------------------------------------------------------------------------------

    @staticmethod
    def _respond(reply: Reply, activity: str) -> web.Response:
        headers = {"x-ms-activity-id": activity, "x-ms-request-charge": str(reply.charge),
                   **_STATIC_HEADERS}  # fmt: skip
        if reply.etag is not None:
            headers["etag"] = reply.etag
        if reply.session_token is not None:
            headers["x-ms-session-token"] = reply.session_token
        if reply.continuation is not None:
            headers["x-ms-continuation"] = reply.continuation
        if reply.item_count is not None:
            headers["x-ms-item-count"] = str(reply.item_count)
        headers.update(reply.headers)
        if reply.body is None:
            return web.Response(status=reply.status, headers=headers)
        return web.Response(status=reply.status, body=reply.body, headers=headers,
                            content_type="application/json")  # fmt: skip

    @staticmethod
    def _error(error: CosmosError, activity: str) -> web.Response:
        headers = {"x-ms-activity-id": activity, "x-ms-request-charge": "0", **_STATIC_HEADERS}
        if error.sub_status:
            headers["x-ms-substatus"] = str(error.sub_status)
        if isinstance(error, ThrottledError):
            headers["x-ms-retry-after-ms"] = str(error.retry_after_ms)
        return web.Response(status=error.status, body=orjson.dumps(error.body()), headers=headers,
                            content_type="application/json")  # fmt: skip

    # -- admin routes ---------------------------------------------------------------------------

    async def _admin(self, request: web.Request, route: str) -> web.Response:
        try:
            result = await self._admin_call(request, route)
        except CosmosError as error:
            return web.json_response(error.body(), status=error.status)
        return web.json_response(result)

    async def _admin_call(self, request: web.Request, route: str) -> Any:  # noqa: PLR0911 - one return per route
        method = request.method
        body: dict[str, Any] = await request.json() if request.can_read_body else {}
        if route == "status" and method == "GET":
            return self.controls.status()
        if route == "throttle" and method == "PUT":
            budget = body.get("request_units_per_second")
            self.controls.request_units_per_second = None if budget is None else float(budget)
            return self.controls.status()
        if route == "faults" and method == "POST":
            rule = self.controls.add_fault(
                str(body.get("kind")), operation=body.get("operation"),
                path_contains=body.get("path_contains"), count=int(body.get("count") or 1),
                seconds=body.get("seconds"),
            )  # fmt: skip
            return {"id": rule.id}
        if route == "faults" and method == "DELETE":
            self.controls.reset()
            return {}
        if route == "split" and method == "POST":
            children = self.account.split(
                body["database"], body["container"], str(body["range_id"])
            )
            return {"children": [child.id for child in children]}
        if route == "change-feed" and method == "PUT":
            scan = body.get("scan_lsns")
            if scan is not None and (not isinstance(scan, int) or scan < 1):
                raise errors.bad_request("scan_lsns must be a positive integer or null.")
            self.account.change_feed_scan_lsns = scan
            return {"scan_lsns": scan}
        if route == "ranges" and method == "GET":
            container = self.account.container(
                request.query["database"], request.query["container"]
            )
            return [container.range_to_wire(r) for r in container.live_ranges()]
        raise errors.not_found(f"No admin route {method} {ADMIN_PREFIX}{route}.")


@dataclass(frozen=True)
class Call:
    """One request as the route handlers see it."""

    request: web.Request
    segments: list[str]
    body: bytes

    @property
    def headers(self) -> Any:
        return self.request.headers

    @property
    def is_query(self) -> bool:
        return bool(self.request.headers.get("x-ms-documentdb-isquery"))

    @property
    def if_match(self) -> str | None:
        value: str | None = self.request.headers.get("If-Match")
        return value

    @property
    def if_none_match(self) -> str | None:
        value: str | None = self.request.headers.get("If-None-Match")
        return value


_SHAPES = {0: "account", 1: "databases", 2: "database", 3: "containers", 4: "container"}


def _shape(segments: list[str]) -> str:
    """What a path names: account, databases, database, containers, container, pkranges, documents
    or document; anything else is "unknown" (refused)."""
    depth = len(segments)
    if (depth and segments[0] != "dbs") or (depth >= 3 and segments[2] != "colls"):
        return "unknown"
    if depth >= 5:
        return _CHILD_SHAPES.get((depth, segments[4]), "unknown")
    return _SHAPES.get(depth, "unknown")


_CHILD_SHAPES = {(5, "pkranges"): "pkranges", (5, "docs"): "documents", (6, "docs"): "document"}


_ROUTES: dict[tuple[str, str], Callable[[CosmosProtocol, Call], Reply]] = {
    ("account", "GET"): CosmosProtocol._account,
    ("databases", "POST"): CosmosProtocol._databases_post,
    ("databases", "GET"): CosmosProtocol._databases_get,
    ("database", "GET"): CosmosProtocol._database_get,
    ("database", "DELETE"): CosmosProtocol._database_delete,
    ("containers", "POST"): CosmosProtocol._containers_post,
    ("containers", "GET"): CosmosProtocol._containers_get,
    ("container", "GET"): CosmosProtocol._container_get,
    ("container", "PUT"): CosmosProtocol._container_put,
    ("container", "DELETE"): CosmosProtocol._container_delete,
    ("pkranges", "GET"): CosmosProtocol._pkranges_get,
    ("documents", "POST"): CosmosProtocol._docs_post,
    ("documents", "GET"): CosmosProtocol._docs_get,
    ("document", "GET"): CosmosProtocol._doc_get,
    ("document", "PUT"): CosmosProtocol._doc_put,
    ("document", "DELETE"): CosmosProtocol._doc_delete,
    ("document", "PATCH"): CosmosProtocol._doc_patch,
}
_DOCUMENT_OPERATIONS = {"GET": "read", "PUT": "replace", "DELETE": "delete", "PATCH": "patch"}


# -- request parsing ----------------------------------------------------------------------------


MAX_REQUEST_BYTES = 8 * 1024 * 1024
"""The largest body the emulator reads; anything larger is drained unread and answered 413
(items and batches have their own 2 MB limits)."""
_CHUNK_BYTES = 256 * 1024


async def _read_body(request: web.Request) -> bytes:
    """The request body, or 413 with the service's JSON error once it passes MAX_REQUEST_BYTES
    (the rest is drained so the client reads the answer instead of a reset connection)."""
    if not request.can_read_body:
        return b""
    chunks: list[bytes] = []
    size = 0
    too_large = (request.content_length or 0) > MAX_REQUEST_BYTES
    async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
        size += len(chunk)
        too_large = too_large or size > MAX_REQUEST_BYTES
        if not too_large:
            chunks.append(chunk)
    if too_large:
        raise CosmosError(413, f"Request size is too large ({size} bytes).")
    return b"".join(chunks)


def _segments(request: web.Request) -> list[str]:
    """The path's segments, each percent-decoded once. The SDK quotes a name-based link once
    (azure/cosmos/_base.py `GetPathFromLink`), so an id `a%20b` arrives as `a%2520b`; the
    decoded `request.path` must not be decoded again, and a `%2F` inside a segment stays in it."""
    raw = request.rel_url.raw_path.strip("/")
    return [unquote(part) for part in raw.split("/")] if raw else []


def _operation_kind(method: str, segments: list[str], headers: Any) -> str:
    """The operation kind fault rules and throttling match on (admin.OPERATIONS)."""
    shape = _shape(segments)
    if shape in ("account", "pkranges"):
        return shape
    if shape == "document":
        return _DOCUMENT_OPERATIONS.get(method, "metadata")
    if shape != "documents":
        return "metadata"
    if method == "GET":
        return "change_feed" if "A-IM" in headers else "read_feed"
    return _post_kind(headers)


def _post_kind(headers: Any) -> str:
    """A POST to a container's docs: a query, a batch, an upsert or a create."""
    if headers.get("x-ms-documentdb-isquery"):
        return "query"
    if headers.get("x-ms-cosmos-is-batch-request"):
        return "batch"
    return "upsert" if headers.get("x-ms-documentdb-is-upsert", "").lower() == "true" else "create"


def _object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.bad_request("The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise errors.bad_request("The request body must be a JSON object.")
    return value


def _list(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise errors.bad_request("Expected a JSON array of operations.")
    return value


def _item_body(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_ITEM_BYTES:
        raise CosmosError(413, "Request size is too large.")
    return _object(body)


def _query_body(body: bytes) -> tuple[str, list[dict[str, Any]]]:
    query = _object(body)
    text = query.get("query")
    if not isinstance(text, str):
        raise errors.bad_request("The query body has no query text.")
    if len(text) > MAX_QUERY_CHARACTERS:
        raise errors.bad_request(
            f"The SQL query text exceeded the maximum limit of {MAX_QUERY_CHARACTERS} characters."
        )
    parameters = query.get("parameters") or []
    return text, _list(parameters)


def _max_items(headers: Any) -> int | None:
    value = headers.get("x-ms-max-item-count")
    try:
        return None if value is None else int(value)
    except ValueError:
        raise errors.bad_request(f"x-ms-max-item-count {value!r} is not a number.") from None


def _required_partition_key(headers: Any) -> list[Any]:
    value = headers.get(PARTITION_KEY)
    if value is None:
        raise errors.bad_request(
            "PartitionKey value must be supplied for this operation (x-ms-documentdb-partitionkey)."
        )
    return parse_partition_key_header(value)


def _scope(headers: Any, *, cross_partition: bool = False) -> Scope:
    pk = headers.get(PARTITION_KEY)
    epk = None
    if (
        headers.get("x-ms-read-key-type") == "EffectivePartitionKeyRange"
        or "x-ms-start-epk" in headers
    ):
        epk = EpkRange(headers.get("x-ms-start-epk", ""), headers.get("x-ms-end-epk", "FF"))
    enabled = headers.get("x-ms-documentdb-query-enablecrosspartition", "").lower() == "true"
    return Scope(headers.get(RANGE_ID), epk,
                 None if pk is None else parse_partition_key_header(pk), cross_partition or enabled)  # fmt: skip


def _minimal(reply: Reply, headers: Any) -> Reply:
    """`Prefer: return=minimal` drops the body of a write (responsePayloadOnWriteDisabled)."""
    if headers.get("Prefer") == "return=minimal":
        reply.body = None
    return reply


def _batch_operations(container: Any, pk: list[Any], body: bytes) -> list[ItemOperation]:
    """The SDK's batch body (azure/cosmos/_base.py `_format_batch_operations`) as operations."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.bad_request("The batch body is not valid JSON.") from None
    operations = []
    for entry in _list(raw):
        if not isinstance(entry, dict):
            raise errors.bad_request("Each batch operation must be a JSON object.")
        kind = _BATCH_KINDS.get(str(entry.get("operationType")))
        if kind is None:
            raise errors.bad_request(f"Unknown batch operationType {entry.get('operationType')!r}.")
        resource, item_id = entry.get("resourceBody"), entry.get("id")
        if kind in _BATCH_KINDS_BY_ID and (not isinstance(item_id, str) or not item_id):
            raise errors.bad_request(
                f"The batch operation {entry.get('operationType')} needs an id."
            )
        if kind in _BATCH_KINDS_WITH_BODY and not isinstance(resource, dict):
            raise errors.bad_request(
                f"The batch operation {entry.get('operationType')} needs a resourceBody object."
            )
        if kind == "patch" and isinstance(resource, dict):
            operations.append(ItemOperation("patch", pk, item_id, patch=_list(resource.get("operations")),
                                            condition=resource.get("condition"), if_match=entry.get("ifMatch"),
                                            if_none_match=entry.get("ifNoneMatch")))  # fmt: skip
            continue
        document = resource if isinstance(resource, dict) else None
        # An operation names its partition by its body, or takes the batch's.
        operation_pk = body_partition_key(container, document) if document is not None else pk
        operations.append(ItemOperation(kind, operation_pk, item_id, document,
                                        entry.get("ifMatch"), entry.get("ifNoneMatch")))  # fmt: skip
    return operations
