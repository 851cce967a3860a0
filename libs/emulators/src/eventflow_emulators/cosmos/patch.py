"""Partial document update (patch): add, set, replace, remove, incr and move, with an optional
`FROM c WHERE ...` condition (learn.microsoft.com/azure/cosmos-db/partial-document-update).

Paths are JSON-pointer-like (`/a/b/0`); `-`, or an index equal to the array's length, appends.
Every malformed or impossible operation is a 400 (`errors.bad_request`), never a partial update.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

from eventflow_emulators.cosmos import errors
from eventflow_emulators.cosmos.query import QueryNotSupportedError, parse_query

MAX_OPERATIONS = 10
"""A patch request carries at most 10 operations (same page)."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""incr works on 64-bit integers: a result outside this range is refused with 400 (not documented;
assumed, as the service keeps integers in 64 bits)."""
_DIGITS = re.compile(r"[0-9]+")


def apply_patch(document: dict[str, Any], operations: Any, condition: Any) -> dict[str, Any]:
    """The document after `operations`, or 412 if `condition` does not hold, 400 if the patch is
    malformed (not a list of 1 to 10 operation objects, a condition that is not a string) or an
    operation cannot apply. The input document is never changed."""
    if not isinstance(operations, list) or not operations or len(operations) > MAX_OPERATIONS:
        raise errors.bad_request(f"A patch request must have 1 to {MAX_OPERATIONS} operations.")
    if condition is not None and not isinstance(condition, str):
        raise errors.bad_request("The patch condition must be a string (FROM c WHERE ...).")
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


def _index(key: str) -> int | None:
    """An array index (ASCII digits only), or None."""
    return int(key) if _DIGITS.fullmatch(key) else None


def _parent(document: Any, parts: list[str]) -> Any:
    node = document
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and (index := _index(part)) is not None and index < len(node):
            node = node[index]
        else:
            raise errors.bad_request(f"The patch path /{'/'.join(parts)} does not exist.")
    return node


def _get(parent: Any, key: str) -> Any:
    if isinstance(parent, dict) and key in parent:
        return parent[key]
    if isinstance(parent, list) and (index := _index(key)) is not None and index < len(parent):
        return parent[index]
    raise errors.bad_request(f"The patch target {key!r} does not exist.")


def _apply_one(document: dict[str, Any], operation: Any) -> None:
    if not isinstance(operation, dict):
        raise errors.bad_request(
            f"Each patch operation must be a JSON object with op and path, not {operation!r}."
        )
    kind = operation.get("op")
    if not isinstance(kind, str) or (kind != "move" and kind not in _OPERATIONS):
        raise errors.bad_request(f"Unknown patch operation {kind!r}.")
    parts = _split(operation.get("path"))
    value = operation.get("value")
    if kind == "move":
        value = _take(document, parts, operation.get("from"))
        kind = "set"
    _OPERATIONS[kind](_parent(document, parts), parts[-1], value, kind == "add")


def _take(document: dict[str, Any], target: list[str], source_path: Any) -> Any:
    """Remove and return the value a move takes from `source_path`. The target is resolved after
    the removal (RFC 6902 4.4: a remove, then an add) and must not lie inside the source ("Path
    attribute cannot be a JSON child of the from JSON location", "Partial document update")."""
    source = _split(source_path)
    if len(target) > len(source) and target[: len(source)] == source:
        raise errors.bad_request(
            f"A move's path /{'/'.join(target)} cannot be a child of its from {source_path}."
        )
    source_parent = _parent(document, source)
    value = _get(source_parent, source[-1])
    _remove(source_parent, source[-1])
    return value


def _put(parent: Any, key: str, value: Any, insert: bool) -> None:
    """add (insert) or set (update in place); an index equal to the array's length appends."""
    if isinstance(parent, dict):
        parent[key] = value
        return
    if not isinstance(parent, list):
        raise errors.bad_request("The patch target's parent is not an object or array.")
    index = len(parent) if key == "-" else _index(key)
    if index is None or index > len(parent):
        raise errors.bad_request(
            f"Invalid array index {key!r} for an array of {len(parent)} elements."
        )
    if insert or index == len(parent):
        parent.insert(index, value)
    else:
        parent[index] = value


def _replace(parent: Any, key: str, value: Any, _insert: bool) -> None:
    _get(parent, key)
    parent[int(key) if isinstance(parent, list) else key] = value


def _remove_op(parent: Any, key: str, _value: Any, _insert: bool) -> None:
    _remove(parent, key)


def _increment(parent: Any, key: str, value: Any, _insert: bool) -> None:
    current = parent.get(key, 0) if isinstance(parent, dict) else _get(parent, key)
    if not (_is_number(current) and _is_number(value)):
        raise errors.bad_request("incr needs a number at the path and a number value.")
    result = current + value
    if isinstance(result, int) and not INT64_MIN <= result <= INT64_MAX:
        raise errors.bad_request(f"incr of {current} by {value} leaves the 64-bit integer range.")
    if isinstance(result, float) and not math.isfinite(result):
        raise errors.bad_request(f"incr of {current} by {value} is not a finite number.")
    parent[int(key) if isinstance(parent, list) else key] = result


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return INT64_MIN <= value <= INT64_MAX if isinstance(value, int) else math.isfinite(value)


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
