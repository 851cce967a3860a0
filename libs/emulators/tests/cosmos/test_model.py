"""The service's rules as state transitions (model.py over a real SQLite store), without HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from eventflow_emulators.cosmos.epk import effective_partition_key
from eventflow_emulators.cosmos.errors import CosmosError
from eventflow_emulators.cosmos.model import (
    Account,
    ChangeFeedRequest,
    ItemOperation,
    QueryRequest,
    Scope,
    parse_partition_key_header,
)
from eventflow_emulators.cosmos.resources import Container
from eventflow_emulators.cosmos.store import Store, StoreInUseError


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def account(tmp_path: Path, clock: Clock) -> Account:
    account = Account(Store(tmp_path / "cosmos.sqlite"), ranges_per_container=4, clock=clock)
    account.create_database({"id": "db"})
    return account


def make(account: Account, name: str = "c", **properties: Any) -> Container:
    account.create_container("db", {"id": name, "partitionKey": {"paths": ["/pk"], "kind": "Hash", "version": 2}} | properties)  # fmt: skip
    return account.container("db", name)


def write(
    account: Account, container: Container, kind: str, body: dict[str, Any], **kw: Any
) -> Any:
    operation = ItemOperation(kind, [body.get("pk")], body=body, **kw)
    return account.write_item(container, operation)


def feed(
    account: Account, container: Container, key: str, after: str | None = None, **kw: Any
) -> Any:
    partition = container.range_for(effective_partition_key([key]))
    return account.change_feed(
        container, ChangeFeedRequest(Scope(range_id=partition.id), after, **kw)
    )


def documents(reply: Any) -> list[dict[str, Any]]:
    assert reply.body is not None
    result: list[dict[str, Any]] = orjson.loads(reply.body)["Documents"]
    return result


def test_create_sets_system_properties_and_a_quoted_etag(account: Account) -> None:
    container = make(account)
    reply = write(account, container, "create", {"id": "a", "pk": "p"})
    body = orjson.loads(reply.body)
    assert reply.status == 201
    assert body["_etag"].startswith('"')
    assert body["_etag"].endswith('"')
    assert body["_etag"] == reply.etag
    assert body["_self"] == f"{container.self_link}docs/{body['_rid']}/"
    assert body["_ts"] == int(account.clock())


def test_create_twice_conflicts_and_replace_with_a_stale_etag_fails(account: Account) -> None:
    container = make(account)
    first = write(account, container, "create", {"id": "a", "pk": "p"})
    with pytest.raises(CosmosError) as conflict:
        write(account, container, "create", {"id": "a", "pk": "p"})
    assert conflict.value.status == 409
    account.write_item(
        container, ItemOperation("replace", ["p"], "a", {"id": "a", "pk": "p", "n": 2})
    )
    with pytest.raises(CosmosError) as stale:
        account.write_item(
            container,
            ItemOperation("replace", ["p"], "a", {"id": "a", "pk": "p"}, if_match=first.etag),
        )
    assert stale.value.status == 412


def test_ids_must_be_valid_and_items_small(account: Account) -> None:
    container = make(account)
    for bad in ("", "a/b", "a?b", "x" * 1024):
        with pytest.raises(CosmosError) as caught:
            write(account, container, "create", {"id": bad, "pk": "p"})
        assert caught.value.status == 400
    with pytest.raises(CosmosError) as large:
        write(
            account, container, "create", {"id": "big", "pk": "p", "blob": "x" * (2 * 1024 * 1024)}
        )
    assert large.value.status == 413


def test_partition_key_of_the_body_must_match_the_header(account: Account) -> None:
    container = make(account)
    with pytest.raises(CosmosError) as caught:
        account.write_item(
            container, ItemOperation("create", ["other"], body={"id": "a", "pk": "p"})
        )
    assert (caught.value.status, caught.value.sub_status) == (400, 1001)


def test_failed_batch_leaves_nothing_and_does_not_spend_an_lsn(account: Account) -> None:
    container = make(account)
    write(account, container, "create", {"id": "taken", "pk": "p"})
    partition = container.range_for(effective_partition_key(["p"]))
    lsn = partition.lsn
    reply = account.batch(container, ["p"], [
        ItemOperation("create", ["p"], body={"id": "new", "pk": "p"}),
        ItemOperation("create", ["p"], body={"id": "taken", "pk": "p"}),
        ItemOperation("create", ["p"], body={"id": "z", "pk": "p"}),
    ])  # fmt: skip
    assert reply.status == 207
    assert [r["statusCode"] for r in orjson.loads(reply.body or b"")] == [424, 409, 424]
    assert partition.lsn == lsn
    with pytest.raises(CosmosError):
        account.read_item(container, ["p"], "new", None)


def test_batch_shares_one_lsn_and_change_feed_pages_keep_it_whole(account: Account) -> None:
    container = make(account)
    account.batch(container, ["p"], [
        ItemOperation("create", ["p"], body={"id": f"e{n}", "pk": "p"}) for n in range(3)
    ])  # fmt: skip
    write(account, container, "create", {"id": "single", "pk": "p"})
    page = feed(account, container, "p", max_items=1)
    assert [d["id"] for d in documents(page)] == ["e0", "e1", "e2"]
    assert {d["_lsn"] for d in documents(page)} == {1}
    assert page.etag == '"1"'
    nxt = feed(account, container, "p", page.etag, max_items=1)
    assert [d["id"] for d in documents(nxt)] == ["single"]


def test_change_feed_304_when_nothing_new_and_empty_200_for_changes_elsewhere(
    account: Account,
) -> None:
    container = make(account)
    write(account, container, "create", {"id": "a", "pk": "p"})
    first = feed(account, container, "p")
    assert first.status == 200
    assert feed(account, container, "p", first.etag).status == 304
    partition = container.range_for(effective_partition_key(["p"]))
    neighbour = next(k for k in (f"k{n}" for n in range(500))
                     if k != "p" and container.range_for(effective_partition_key([k])) is partition)  # fmt: skip
    write(account, container, "create", {"id": "b", "pk": neighbour})
    only_p = account.change_feed(
        container, ChangeFeedRequest(Scope(range_id=partition.id, pk=["p"]), first.etag)
    )
    assert only_p.status == 200
    assert documents(only_p) == []
    assert only_p.etag == f'"{partition.lsn}"'


def test_start_now_answers_304_with_the_current_position(account: Account) -> None:
    container = make(account)
    write(account, container, "create", {"id": "a", "pk": "p"})
    reply = feed(account, container, "p", "*")
    assert reply.status == 304
    assert reply.etag == '"1"'
    assert reply.session_token == f"{container.range_for(effective_partition_key(['p'])).id}:-1#1"


def test_point_in_time_keeps_changes_at_or_after_it(account: Account, clock: Clock) -> None:
    container = make(account)
    write(account, container, "create", {"id": "old", "pk": "p"})
    clock.now += 10
    write(account, container, "create", {"id": "new", "pk": "p"})
    reply = feed(account, container, "p", since=int(clock.now))
    assert [d["id"] for d in documents(reply)] == ["new"]


def test_item_ttl_counts_only_with_a_container_default(account: Account, clock: Clock) -> None:
    plain = make(account, "plain")
    ttl = make(account, "ttl", defaultTtl=-1)
    write(account, plain, "create", {"id": "a", "pk": "p", "ttl": 1})
    write(account, ttl, "create", {"id": "a", "pk": "p", "ttl": 1})
    write(account, ttl, "create", {"id": "kept", "pk": "p"})
    clock.now += 2
    assert account.read_item(plain, ["p"], "a", None).status == 200
    with pytest.raises(CosmosError) as caught:
        account.read_item(ttl, ["p"], "a", None)
    assert caught.value.status == 404
    assert [d["id"] for d in documents(feed(account, ttl, "p"))] == ["kept"]
    assert account.purge_expired() == 1


def test_invalid_ttls_are_refused(account: Account) -> None:
    container = make(account, "ttl", defaultTtl=60)
    for bad in (0, -2, "1", 1.5, 2_147_483_648):
        with pytest.raises(CosmosError):
            write(account, container, "create", {"id": "a", "pk": "p", "ttl": bad})
    write(account, container, "create", {"id": "a", "pk": "p", "ttl": 2_147_483_647})
    for bad_default in (0, 2_147_483_648):
        with pytest.raises(CosmosError):
            make(account, "bad", defaultTtl=bad_default)


def test_names_and_partition_key_values_have_azures_limits(account: Account) -> None:
    # "Azure Cosmos DB service quotas": names of 255 characters, key values of 2,048 bytes.
    make(account, "n" * 255)
    with pytest.raises(CosmosError) as caught:
        make(account, "n" * 256)
    assert caught.value.status == 400
    with pytest.raises(CosmosError):
        account.create_database({"id": "d" * 256})
    container = make(account)
    write(account, container, "create", {"id": "a", "pk": "é" * 1024})
    for bad_key in ("é" * 1025, float("inf")):
        with pytest.raises(CosmosError) as caught:
            write(account, container, "create", {"id": "b", "pk": bad_key})
        assert caught.value.status == 400


@pytest.mark.parametrize(
    "header", ["[" + "9" * 400 + "]", "[NaN]", "[Infinity]", '["' + "k" * 2049 + '"]', '[{"a": 1}]']
)
def test_invalid_partition_key_headers_are_refused_with_400(header: str) -> None:
    with pytest.raises(CosmosError) as caught:
        parse_partition_key_header(header)
    assert caught.value.status == 400


def test_split_children_inherit_the_lsn_and_the_parent_is_gone(account: Account) -> None:
    container = make(account)
    for n in range(20):
        write(account, container, "create", {"id": "a", "pk": f"k{n}"})
    parent = container.range_by_id("0")
    assert parent is not None
    children = account.split("db", "c", "0")
    assert [c.parents for c in children] == [["0"], ["0"]]
    assert all(c.lsn == parent.lsn for c in children)
    assert children[0].min == parent.min
    assert children[1].max == parent.max
    with pytest.raises(CosmosError) as caught:
        account.change_feed(container, ChangeFeedRequest(Scope(range_id="0")))
    assert (caught.value.status, caught.value.sub_status) == (410, 1002)
    grandchildren = account.split("db", "c", children[0].id)
    assert grandchildren[0].parents == ["0", children[0].id]


def test_partition_key_ranges_are_an_incremental_feed(account: Account) -> None:
    make(account)
    full = account.partition_key_ranges("db", "c", None)
    assert [r["id"] for r in orjson.loads(full.body or b"")["PartitionKeyRanges"]] == [
        "0",
        "1",
        "2",
        "3",
    ]
    assert account.partition_key_ranges("db", "c", full.etag).status == 304
    account.split("db", "c", "1")
    delta = account.partition_key_ranges("db", "c", full.etag)
    ranges = orjson.loads(delta.body or b"")["PartitionKeyRanges"]
    assert [(r["id"], r["parents"]) for r in ranges] == [("4", ["1"]), ("5", ["1"])]


def test_a_ranges_etag_of_another_container_gets_the_full_list(account: Account) -> None:
    make(account, "old")
    account.split("db", "old", "0")
    stale = account.partition_key_ranges("db", "old", None).etag
    make(account, "new")
    reply = account.partition_key_ranges("db", "new", stale)
    assert reply.status == 200
    assert len(orjson.loads(reply.body or b"")["PartitionKeyRanges"]) == 4


def test_state_survives_reopening_the_store(tmp_path: Path, clock: Clock) -> None:
    first = Account(Store(tmp_path / "c.sqlite"), clock=clock)
    first.create_database({"id": "db"})
    container = make(first)
    write(first, container, "create", {"id": "a", "pk": "p"})
    first.split("db", "c", "0")
    first.store.close()
    again = Account(Store(tmp_path / "c.sqlite"), clock=clock)
    reopened = again.container("db", "c")
    assert len(reopened.live_ranges()) == 5
    assert reopened.range_for(effective_partition_key(["p"])).lsn == 1
    assert again.read_item(reopened, ["p"], "a", None).status == 200


def test_unsupported_query_is_refused_naming_the_part(account: Account) -> None:
    container = make(account)
    with pytest.raises(CosmosError) as caught:
        account.query(
            container,
            QueryRequest("SELECT * FROM c GROUP BY c.kind", [], Scope(cross_partition=True)),
        )
    assert caught.value.status == 400
    assert "GROUP" in caught.value.message


def test_cross_partition_query_needs_the_header(account: Account) -> None:
    container = make(account)
    with pytest.raises(CosmosError) as caught:
        account.query(container, QueryRequest("SELECT * FROM c", [], Scope()))
    assert caught.value.status == 400


def test_query_pages_carry_a_continuation(account: Account) -> None:
    container = make(account)
    for n in range(5):
        write(account, container, "create", {"id": f"i{n}", "pk": "p", "n": n})
    request = QueryRequest("SELECT * FROM c ORDER BY c.n", [], Scope(pk=["p"]), max_items=2)
    seen: list[int] = []
    while True:
        reply = account.query(container, request)
        seen += [d["n"] for d in documents(reply)]
        if reply.continuation is None:
            break
        request.continuation = reply.continuation
    assert seen == [0, 1, 2, 3, 4]


def test_patch_applies_operations_and_checks_its_condition(account: Account) -> None:
    container = make(account)
    write(account, container, "create", {"id": "a", "pk": "p", "n": 1, "tags": ["x"], "old": True})
    reply = account.write_item(container, ItemOperation("patch", ["p"], "a", patch=[
        {"op": "incr", "path": "/n", "value": 2}, {"op": "add", "path": "/tags/-", "value": "y"},
        {"op": "set", "path": "/nested", "value": {"k": 1}}, {"op": "remove", "path": "/old"},
    ], condition="FROM c WHERE c.n = 1"))  # fmt: skip
    body = orjson.loads(reply.body or b"")
    assert (body["n"], body["tags"], body["nested"], "old" in body) == (
        3,
        ["x", "y"],
        {"k": 1},
        False,
    )
    with pytest.raises(CosmosError) as caught:
        account.write_item(container, ItemOperation(
            "patch", ["p"], "a", patch=[{"op": "set", "path": "/n", "value": 0}],
            condition="FROM c WHERE c.n = 1"))  # fmt: skip
    assert caught.value.status == 412


def test_nested_partition_key_paths(account: Account) -> None:
    account.create_container("db", {"id": "nested", "partitionKey": {"paths": ["/a/b"], "kind": "Hash", "version": 2}})  # fmt: skip
    container = account.container("db", "nested")
    account.write_item(container, ItemOperation("create", ["v"], body={"id": "x", "a": {"b": "v"}}))
    assert account.read_item(container, ["v"], "x", None).status == 200


def test_hierarchical_and_v1_partition_keys_are_refused(account: Account) -> None:
    for definition in ({"paths": ["/a", "/b"], "kind": "MultiHash", "version": 2},
                       {"paths": ["/a"], "kind": "Hash", "version": 1}):  # fmt: skip
        with pytest.raises(CosmosError) as caught:
            account.create_container("db", {"id": "x", "partitionKey": definition})
        assert caught.value.status == 400


def test_a_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    first = Store(tmp_path / "c.sqlite")
    with pytest.raises(StoreInUseError):
        Store(tmp_path / "c.sqlite")
    first.close()
    Store(tmp_path / "c.sqlite").close()
