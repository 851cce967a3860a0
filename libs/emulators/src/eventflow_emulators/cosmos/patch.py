"""Partial document update (patch): add, set, replace, remove, incr and move, with an optional
`FROM c WHERE ...` condition (learn.microsoft.com/azure/cosmos-db/partial-document-update).

Paths are JSON-pointer-like (`/a/b/0`); `-` appends to an array with `add`.
"""

from __future__ import annotations

import copy
from typing import Any

from eventflow_emulators.cosmos import errors
from eventflow_emulators.cosmos.query import QueryNotSupportedError, parse_query

MAX_OPERATIONS = 10
"""A patch request carries at most 10 operations (same page)."""


def apply_patch(
    document: dict[str, Any], operations: list[dict[str, Any]], condition: str | None
) -> dict[str, Any]:
    """The document after `operations`, or 412 if `condition` does not hold, 400 if an operation
    cannot apply."""
    if not operations or len(operations) > MAX_OPERATIONS:
        raise errors.bad_request(f"A patch request must have 1 to {MAX_OPERATIONS} operations.")
    if condition is not None and not _holds(document, condition):
        raise errors.precondition_failed()
    patched = copy.deepcopy(document)
    for operation in operations:
        _apply_one(patched, operation)
    return patched


def _holds(document: dict[str, Any], condition: str) -> bool:
    try:
        return bool(parse_query(f"SELECT * {condition}").run([document]))
    except QueryNotSupportedError as error:
        raise errors.bad_request(
            f"The emulator does not support this patch condition: {error}."
        ) from None


def _split(path: Any) -> list[str]:
    if not isinstance(path, str) or not path.startswith("/") or path == "/":
        raise errors.bad_request(f"Invalid patch path {path!r}.")
    parts = [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]
    if parts[0] in ("id", "_rid", "_etag", "_ts", "_self"):
        raise errors.bad_request(f"The patch path {path!r} cannot be changed.")
    return parts


def _parent(document: Any, parts: list[str]) -> Any:
    node = document
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise errors.bad_request(f"The patch path /{'/'.join(parts)} does not exist.")
    return node


def _get(parent: Any, key: str) -> Any:
    if isinstance(parent, dict) and key in parent:
        return parent[key]
    if isinstance(parent, list) and key.isdigit() and int(key) < len(parent):
        return parent[int(key)]
    raise errors.bad_request(f"The patch target {key!r} does not exist.")


def _apply_one(document: dict[str, Any], operation: dict[str, Any]) -> None:
    kind = operation.get("op")
    parts = _split(operation.get("path"))
    parent, key = _parent(document, parts), parts[-1]
    value = operation.get("value")
    if kind == "move":
        source = _split(operation.get("from"))
        source_parent = _parent(document, source)
        value = _get(source_parent, source[-1])
        _remove(source_parent, source[-1])
        kind = "set"
    apply = _OPERATIONS.get(str(kind))
    if apply is None:
        raise errors.bad_request(f"Unknown patch operation {kind!r}.")
    apply(parent, key, value, kind == "add")


def _put(parent: Any, key: str, value: Any, insert: bool) -> None:
    if isinstance(parent, dict):
        parent[key] = value
    elif not isinstance(parent, list):
        raise errors.bad_request("The patch target's parent is not an object or array.")
    elif key == "-":
        parent.append(value)
    elif key.isdigit() and int(key) <= len(parent):
        if insert:
            parent.insert(int(key), value)
        else:
            parent[int(key)] = value
    else:
        raise errors.bad_request(f"Invalid array index {key!r}.")


def _replace(parent: Any, key: str, value: Any, _insert: bool) -> None:
    _get(parent, key)
    parent[int(key) if isinstance(parent, list) else key] = value


def _remove_op(parent: Any, key: str, _value: Any, _insert: bool) -> None:
    _remove(parent, key)


def _increment(parent: Any, key: str, value: Any, _insert: bool) -> None:
    current = parent.get(key, 0) if isinstance(parent, dict) else _get(parent, key)
    if not (_is_number(current) and _is_number(value)):
        raise errors.bad_request("incr needs a number at the path and a number value.")
    parent[int(key) if isinstance(parent, list) else key] = current + value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_OPERATIONS = {
    "add": _put,
    "set": _put,
    "replace": _replace,
    "remove": _remove_op,
    "incr": _increment,
}


def _remove(parent: Any, key: str) -> None:
    _get(parent, key)
    if isinstance(parent, list):
        del parent[int(key)]
    else:
        del parent[key]
