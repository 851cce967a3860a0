"""Partial document update (patch.py), without the wire
(learn.microsoft.com/azure/cosmos-db/partial-document-update)."""

from __future__ import annotations

from typing import Any

import pytest

from eventflow_emulators.cosmos.errors import CosmosError
from eventflow_emulators.cosmos.patch import apply_patch


def document() -> dict[str, Any]:
    return {"id": "a", "n": 1, "tags": ["x", "z"], "inner": {"k": "v"}, "price": 2.5}


@pytest.mark.parametrize(
    ("operation", "check"),
    [
        ({"op": "add", "path": "/tags/1", "value": "y"}, lambda d: d["tags"] == ["x", "y", "z"]),
        ({"op": "set", "path": "/tags/0", "value": "w"}, lambda d: d["tags"] == ["w", "z"]),
        ({"op": "add", "path": "/tags/-", "value": "end"}, lambda d: d["tags"][-1] == "end"),
        ({"op": "replace", "path": "/inner/k", "value": 7}, lambda d: d["inner"] == {"k": 7}),
        ({"op": "replace", "path": "/tags/1", "value": "q"}, lambda d: d["tags"] == ["x", "q"]),
        ({"op": "remove", "path": "/tags/0"}, lambda d: d["tags"] == ["z"]),
        ({"op": "incr", "path": "/price", "value": 0.5}, lambda d: d["price"] == 3.0),
        ({"op": "incr", "path": "/new", "value": 4}, lambda d: d["new"] == 4),
        (
            {"op": "move", "from": "/inner/k", "path": "/moved"},
            lambda d: d["moved"] == "v" and d["inner"] == {},
        ),
        ({"op": "set", "path": "/a~1b", "value": 1}, lambda d: d["a/b"] == 1),
        (
            {"op": "set", "path": "/tags/2", "value": "end"},
            lambda d: d["tags"] == ["x", "z", "end"],
        ),
        (
            {"op": "add", "path": "/tags/2", "value": "end"},
            lambda d: d["tags"] == ["x", "z", "end"],
        ),
        (
            {"op": "move", "from": "/tags/0", "path": "/tags/1"},
            lambda d: d["tags"] == ["z", "x"],
        ),
        ({"op": "move", "from": "/n", "path": "/n"}, lambda d: d["n"] == 1),
        ({"op": "incr", "path": "/n", "value": 2**63 - 2}, lambda d: d["n"] == 2**63 - 1),
    ],
)
def test_operations(operation: dict[str, Any], check: Any) -> None:
    original = document()
    patched = apply_patch(original, [operation], None)
    assert check(patched)
    assert original == document()


@pytest.mark.parametrize(
    "operations",
    [
        [],
        [{"op": "set", "path": f"/f{n}", "value": n} for n in range(11)],
        [{"op": "replace", "path": "/missing", "value": 1}],
        [{"op": "remove", "path": "/missing"}],
        [{"op": "incr", "path": "/tags", "value": 1}],
        [{"op": "incr", "path": "/n", "value": True}],
        [{"op": "set", "path": "/id", "value": "b"}],
        [{"op": "set", "path": "no-slash", "value": 1}],
        [{"op": "set", "path": "/tags/9", "value": 1}],
        [{"op": "set", "path": "/nope/deeper", "value": 1}],
        [{"op": "set", "path": "/n/deeper", "value": 1}],
        [{"op": "copy", "path": "/n", "value": 1}],
        [{"op": "move", "from": "/inner", "path": "/inner/k2"}],
        [{"op": "move", "from": "/missing", "path": "/n"}],
        [{"op": "remove", "path": "/tags/2"}],
        [{"op": "set", "path": "/tags/\u00b2", "value": 1}],
        [{"op": "incr", "path": "/n", "value": 2**63 - 1}],
        [{"op": "incr", "path": "/n", "value": -(2**63) - 1}],
        [
            {"op": "incr", "path": "/price", "value": 1.7e308},
            {"op": "incr", "path": "/price", "value": 1.7e308},
        ],
        ["set /n 1"],
        [{"op": ["set"], "path": "/n", "value": 1}],
        [None],
    ],
)
def test_invalid_patches_are_refused_with_400(operations: list[Any]) -> None:
    with pytest.raises(CosmosError) as caught:
        apply_patch(document(), operations, None)
    assert caught.value.status == 400


def test_a_false_condition_fails_the_precondition() -> None:
    with pytest.raises(CosmosError) as caught:
        apply_patch(document(), [{"op": "set", "path": "/n", "value": 2}], "FROM c WHERE c.n = 5")
    assert caught.value.status == 412
    assert (
        apply_patch(document(), [{"op": "set", "path": "/n", "value": 2}], "FROM c WHERE c.n = 1")[
            "n"
        ]
        == 2
    )


def test_a_patch_that_is_not_a_list_or_has_a_condition_of_another_type_is_refused() -> None:
    for operations, condition in (
        ({"op": "set"}, None),
        ([], None),
        ([{"op": "remove", "path": "/n"}], 5),
    ):
        with pytest.raises(CosmosError) as caught:
            apply_patch(document(), operations, condition)
        assert caught.value.status == 400


def test_an_unsupported_condition_is_refused_with_400() -> None:
    with pytest.raises(CosmosError) as caught:
        apply_patch(
            document(), [{"op": "set", "path": "/n", "value": 2}], "FROM c WHERE c.n IN (1, 2)"
        )
    assert caught.value.status == 400
