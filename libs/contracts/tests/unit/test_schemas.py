import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventflow_contracts import PUBLISHED, OrderCreatedV1
from eventflow_contracts.schemas import breaking_changes, generated, main, problems_with, schema_of

COMMITTED = Path(__file__).parents[2] / "schemas"


def test_committed_schemas_are_compatible_with_the_models() -> None:
    breaking, _ = problems_with(COMMITTED, generated())
    assert breaking == [], "a published version changed incompatibly; add a version + upcaster"


def test_committed_schemas_are_up_to_date() -> None:
    _, stale = problems_with(COMMITTED, generated())
    assert stale == [], "run `make schemas` and commit libs/contracts/schemas/"


def test_every_published_version_has_a_committed_schema() -> None:
    names = {path.name for path in COMMITTED.glob("*.json")}
    assert names == {f"{model.event_type()}.json" for model in PUBLISHED}


@pytest.fixture
def v1() -> dict[str, Any]:
    return schema_of(OrderCreatedV1)


def changed(schema: dict[str, Any], edit: Any) -> dict[str, Any]:
    new = copy.deepcopy(schema)
    edit(new)
    return new


def test_identical_schemas_have_no_breaking_changes(v1: dict[str, Any]) -> None:
    assert breaking_changes(v1, copy.deepcopy(v1)) == []


def test_a_new_optional_field_and_new_descriptions_are_compatible(v1: dict[str, Any]) -> None:
    def edit(schema: dict[str, Any]) -> None:
        schema["properties"]["note"] = {"type": "string"}
        schema["properties"]["customer_id"]["description"] = "who ordered"
        schema["description"] = "reworded"

    assert breaking_changes(v1, changed(v1, edit)) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s["properties"].pop("customer_id"), "$.customer_id: field removed or renamed"),
        (
            lambda s: s["properties"].update(customer=s["properties"].pop("customer_id")),
            "$.customer_id: field removed or renamed",
        ),
        (
            lambda s: s["properties"]["customer_id"].update(type="integer"),
            "$.customer_id: type changed from string to integer",
        ),
        (lambda s: s["required"].append("currency"), "$.currency: new required field"),
        (
            lambda s: s["properties"]["customer_id"].update(pattern="^[a-z]+$"),
            "$.customer_id: pattern changed",
        ),
        (
            lambda s: s["$defs"]["OrderLine"]["properties"]["quantity"].update(type="string"),
            "$.lines[].quantity: type changed from integer to string",
        ),
        (
            lambda s: s["$defs"]["OrderLine"]["properties"].pop("unit_price"),
            "$.lines[].unit_price: field removed or renamed",
        ),
        (
            lambda s: s["properties"]["currency"]["anyOf"][0].update(pattern="^[A-Z]{4}$"),
            "$.currency: pattern changed",
        ),
        (
            lambda s: s["properties"]["currency"].update(anyOf=[{"type": "string"}]),
            "$.currency: type changed",
        ),
    ],
)
def test_breaking_changes_are_detected(v1: dict[str, Any], edit: Any, expected: str) -> None:
    problems = breaking_changes(v1, changed(v1, edit))
    assert any(problem.startswith(expected) for problem in problems), problems


def test_cli_check_passes_on_the_committed_schemas() -> None:
    assert main(["check", str(COMMITTED)]) == 0


def test_cli_writes_fresh_schemas_then_checks_them(tmp_path: Path) -> None:
    assert main(["check", str(tmp_path)]) == 1
    assert main(["write", str(tmp_path)]) == 0
    assert main(["check", str(tmp_path)]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(generated())


def test_cli_refuses_to_overwrite_a_published_schema_incompatibly(tmp_path: Path) -> None:
    main(["write", str(tmp_path)])
    target = tmp_path / "eventflow.orders.OrderCreated.v1.json"
    schema = orjson.loads(target.read_bytes())
    schema["properties"]["legacy_flag"] = {"type": "boolean"}
    target.write_bytes(orjson.dumps(schema))
    assert main(["check", str(tmp_path)]) == 1
    assert main(["write", str(tmp_path)]) == 1
    assert b"legacy_flag" in target.read_bytes()
    assert main(["write", str(tmp_path), "--allow-breaking"]) == 0
    assert b"legacy_flag" not in target.read_bytes()


def test_a_removed_published_version_is_breaking(tmp_path: Path) -> None:
    main(["write", str(tmp_path)])
    (tmp_path / "eventflow.orders.OrderShipped.v1.json").write_bytes(b"{}")
    breaking, _ = problems_with(tmp_path, generated())
    assert breaking == ["eventflow.orders.OrderShipped.v1.json: published version removed"]
