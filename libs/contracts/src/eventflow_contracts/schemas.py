"""JSON Schemas of every published event version, and the compatibility rule between versions.

The schema files committed under `libs/contracts/schemas/` are the published record. Writing them
refuses a change that would break readers or writers of an already published version; such a
change needs a new version and an upcaster instead.

    eventflow-schemas check libs/contracts/schemas   # exit 1 when stale or incompatible
    eventflow-schemas write libs/contracts/schemas   # regenerate (refuses breaking changes)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from eventflow_contracts.envelope import dataschema_for
from eventflow_contracts.events import EventData
from eventflow_contracts.registry import PUBLISHED

Schema = Mapping[str, Any]

_CONSTRAINTS = (
    "pattern", "enum", "const", "format", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems",
)  # fmt: skip


def schema_of(model: type[EventData]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one event version's `data`."""
    schema = model.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": dataschema_for(model.event_type()),
        **schema,
        "title": model.event_type(),
    }


def file_name(model: type[EventData]) -> str:
    return f"{model.event_type()}.json"


def render(schema: Schema) -> bytes:
    """Stable bytes for a schema file: sorted keys, indented, trailing newline."""
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _deref(schema: Schema, root: Schema) -> Schema:
    while "$ref" in schema:
        name = str(schema["$ref"]).removeprefix("#/$defs/")
        schema = root["$defs"][name]
    return schema


def _kind(schema: Schema, root: Schema) -> Any:
    schema = _deref(schema, root)
    if "anyOf" in schema:
        return ("anyOf", tuple(sorted(str(_kind(branch, root)) for branch in schema["anyOf"])))
    kind = schema.get("type", "any")
    return tuple(kind) if isinstance(kind, list) else kind


def _compare(old: Schema, new: Schema, path: str, roots: tuple[Schema, Schema]) -> list[str]:
    old, new = _deref(old, roots[0]), _deref(new, roots[1])
    old_kind, new_kind = _kind(old, roots[0]), _kind(new, roots[1])
    if old_kind != new_kind:
        return [f"{path}: type changed from {old_kind} to {new_kind}"]
    problems = [
        f"{path}: {key} changed from {old.get(key)!r} to {new.get(key)!r}"
        for key in _CONSTRAINTS
        if old.get(key) != new.get(key)
    ]
    if "anyOf" in old:
        by_kind = {str(_kind(branch, roots[1])): branch for branch in new["anyOf"]}
        for branch in old["anyOf"]:
            problems += _compare(branch, by_kind[str(_kind(branch, roots[0]))], path, roots)
    if "items" in old and "items" in new:
        problems += _compare(old["items"], new["items"], f"{path}[]", roots)
    old_fields, new_fields = old.get("properties", {}), new.get("properties", {})
    for name, field_schema in old_fields.items():
        if name not in new_fields:
            problems.append(f"{path}.{name}: field removed or renamed")
        else:
            problems += _compare(field_schema, new_fields[name], f"{path}.{name}", roots)
    for name in sorted(set(new.get("required", ())) - set(old.get("required", ()))):
        problems.append(f"{path}.{name}: new required field")
    return problems


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """Why `new` cannot replace the published `old`: an empty list when it can.

    Breaking: a field removed or renamed, a type changed, a new required field, or any changed
    validation constraint (pattern, enum, bounds …), since events written under the old schema
    must stay readable and readers of the old schema must accept what writers now emit.
    Compatible: new optional fields, changed titles and descriptions.
    """
    return _compare(old, new, "$", (old, new))


def generated(models: Sequence[type[EventData]] = PUBLISHED) -> dict[str, bytes]:
    """File name → rendered schema, for every published version."""
    return {file_name(model): render(schema_of(model)) for model in models}


def problems_with(directory: Path, expected: Mapping[str, bytes]) -> tuple[list[str], list[str]]:
    """(breaking changes, stale files) of the committed schemas in `directory`."""
    breaking: list[str] = []
    stale: list[str] = []
    committed = {path.name: path.read_bytes() for path in directory.glob("*.json")}
    for name, old_bytes in sorted(committed.items()):
        if name not in expected:
            breaking.append(f"{name}: published version removed")
            continue
        old, new = orjson.loads(old_bytes), orjson.loads(expected[name])
        breaking += [f"{name}: {problem}" for problem in breaking_changes(old, new)]
        if old_bytes != expected[name]:
            stale.append(f"{name}: differs from the model")
    stale += [f"{name}: not committed yet" for name in sorted(set(expected) - set(committed))]
    return breaking, stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eventflow-schemas", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("check", "write"))
    parser.add_argument("directory", type=Path)
    parser.add_argument(
        "--allow-breaking",
        action="store_true",
        help="write even when a published version changes incompatibly (almost never right)",
    )
    args = parser.parse_args(argv)
    expected = generated()
    breaking, stale = problems_with(args.directory, expected)
    for line in breaking:
        sys.stderr.write(f"breaking: {line}\n")
    if args.command == "check":
        for line in stale:
            sys.stderr.write(f"stale: {line}\n")
        return 1 if breaking or stale else 0
    if breaking and not args.allow_breaking:
        sys.stderr.write("refusing to write: publish a new version with an upcaster instead\n")
        return 1
    args.directory.mkdir(parents=True, exist_ok=True)
    for name, content in expected.items():
        (args.directory / name).write_bytes(content)
    sys.stdout.write(f"wrote {len(expected)} schemas to {args.directory}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
