"""The query subset (query.py), without the wire: the cases the local stand-in's parser had, plus
the clauses the emulator refuses by name."""

from __future__ import annotations

from typing import Any

import pytest

from eventflow_emulators.cosmos.query import QueryNotSupportedError, parse_query

ITEMS: list[dict[str, Any]] = [
    {"id": "a1", "n": 3, "s": "x", "tags": [1, 2], "nested": {"k": "v"}, "flag": True},
    {"id": "b2", "n": 1, "s": "y", "flag": False},
    {"id": "a3", "n": 2, "nested": {"k": "w"}, "nothing": None},
    {"id": "c4", "n": "3"},
]


def run(query: str, **parameters: Any) -> list[Any]:
    bound = [{"name": f"@{name}", "value": value} for name, value in parameters.items()]
    return parse_query(query, bound).run(ITEMS)


def ids(results: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in results]


@pytest.mark.parametrize(
    ("query", "parameters", "expected"),
    [
        ("SELECT * FROM c", {}, ["a1", "b2", "a3", "c4"]),
        ("SELECT * FROM c WHERE c.n = 3", {}, ["a1"]),
        ("SELECT * FROM c WHERE c.n = @n", {"n": 3}, ["a1"]),
        ("SELECT * FROM c WHERE c.n = '3'", {}, ["c4"]),
        ("SELECT * FROM c WHERE c.n != 3", {}, ["b2", "a3"]),
        ("SELECT * FROM c WHERE c.n <> 3", {}, ["b2", "a3"]),
        ("SELECT * FROM c WHERE c.n > 1 AND c.n < 3", {}, ["a3"]),
        ("SELECT * FROM c WHERE c.n >= 2", {}, ["a1", "a3"]),
        ("SELECT * FROM c WHERE c.n <= 2", {}, ["b2", "a3"]),
        ("SELECT * FROM c WHERE c.s = 'x' OR c.s = \"y\"", {}, ["a1", "b2"]),
        ("SELECT * FROM c WHERE NOT (c.s = 'x')", {}, ["b2", "a3", "c4"]),
        ("SELECT * FROM c WHERE c.nested.k = 'w'", {}, ["a3"]),
        ("SELECT * FROM c WHERE c['nested']['k'] = 'v'", {}, ["a1"]),
        ("SELECT * FROM c WHERE IS_DEFINED(c.nested)", {}, ["a1", "a3"]),
        ("SELECT * FROM c WHERE NOT IS_DEFINED(c.nested)", {}, ["b2", "c4"]),
        ("SELECT * FROM c WHERE c.nothing = null", {}, ["a3"]),
        ("SELECT * FROM c WHERE c.flag = true", {}, ["a1"]),
        ("SELECT * FROM c WHERE c.flag = false", {}, ["b2"]),
        ("SELECT * FROM c WHERE STARTSWITH(c.id, @p)", {"p": "a"}, ["a1", "a3"]),
        ("SELECT * FROM c WHERE STARTSWITH(c.n, 'a')", {}, []),
        ("SELECT * FROM c WHERE ARRAY_CONTAINS(c.tags, 2)", {}, ["a1"]),
        ("SELECT * FROM c WHERE c.n > 2.5", {}, ["a1"]),
        ("SELECT * FROM c WHERE c.nested = @obj", {"obj": {"k": "v"}}, ["a1"]),
        ("select * from c where c.n = 1", {}, ["b2"]),
    ],
)
def test_filters(query: str, parameters: dict[str, Any], expected: list[str]) -> None:
    assert ids(run(query, **parameters)) == expected


def test_order_by_keeps_items_without_the_field_first_and_sorts_types_apart() -> None:
    # Undefined sorts lowest: first ascending, last descending (learn.microsoft.com "ORDER BY").
    assert ids(run("SELECT * FROM c ORDER BY c.n")) == ["b2", "a3", "a1", "c4"]
    assert ids(run("SELECT * FROM c ORDER BY c.n DESC")) == ["c4", "a1", "a3", "b2"]
    assert ids(run("SELECT * FROM c ORDER BY c.s ASC")) == ["a3", "c4", "a1", "b2"]
    assert ids(run("SELECT * FROM c ORDER BY c.s DESC")) == ["b2", "a1", "a3", "c4"]
    assert ids(run("SELECT * FROM c ORDER BY c.flag, c.id DESC")) == ["c4", "a3", "b2", "a1"]
    assert ids(run("SELECT * FROM c ORDER BY c.nothing, c.id")) == ["a1", "b2", "c4", "a3"]


def test_order_by_objects_keeps_their_order() -> None:
    assert ids(run("SELECT * FROM c WHERE IS_DEFINED(c.nested) ORDER BY c.nested")) == ["a1", "a3"]
    assert ids(run("SELECT * FROM c ORDER BY c.tags DESC")) == ["a1", "b2", "a3", "c4"]


def test_projections_top_and_values() -> None:
    assert run("SELECT c.id, c.s FROM c WHERE c.n = 2") == [{"id": "a3"}]
    assert run("SELECT TOP 2 VALUE c.id FROM c ORDER BY c.id") == ["a1", "a3"]
    assert run("SELECT VALUE c.s FROM c") == ["x", "y"]
    assert run("SELECT VALUE COUNT(1) FROM c WHERE c.n >= 2") == [2]
    assert run("SELECT VALUE COUNT(1) FROM root r WHERE r.n = 1") == [1]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT DISTINCT c.id FROM c",
        "SELECT * FROM c GROUP BY c.id",
        "SELECT * FROM c OFFSET 1 LIMIT 2",
        "SELECT * FROM c WHERE d.x = 1",
        "SELECT * FROM c WHERE c.x = @missing",
        "SELECT * FROM c JOIN t IN c.tags",
        "SELECT * FROM c WHERE CONTAINS(c.id, 'a')",
        "SELECT * FROM c WHERE c.n = 1 +",
        "SELECT * FROM c WHERE",
        "SELECT d.id FROM c",
        "SELECT * FROM c WHERE c.id = ~",
        "DELETE FROM c",
        "SELECT TOP x * FROM c",
        "SELECT VALUE 1 FROM c",
    ],
)
def test_anything_outside_the_subset_is_refused(query: str) -> None:
    with pytest.raises(QueryNotSupportedError):
        parse_query(query)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("SELECT DISTINCT c.s FROM c", "DISTINCT"),
        ("SELECT * FROM c GROUP BY c.s", "GROUP"),
        ("SELECT * FROM c OFFSET 1 LIMIT 2", "OFFSET"),
        ("SELECT * FROM c JOIN t IN c.tags", "JOIN"),
    ],
)
def test_unsupported_clauses_are_named(query: str, named: str) -> None:
    with pytest.raises(QueryNotSupportedError, match=named):
        parse_query(query)


def test_malformed_parameters_are_refused() -> None:
    with pytest.raises(QueryNotSupportedError):
        parse_query("SELECT * FROM c WHERE c.n = @n", [{"value": 1}])
