"""The API's behaviour against the fake store: status codes, headers, problems, idempotency."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from eventflow_contracts import decode_event

from ..conftest import FakeOrderStore  # type: ignore[import-not-found]

PROBLEM = "application/problem+json"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ORDER = {
    "customer_id": "c-1",
    "currency": "EUR",
    "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price": "9.99"}],
}


async def create(
    client: httpx.AsyncClient, body: dict[str, Any] | None = None, **headers: str
) -> httpx.Response:
    response = await client.post("/orders", json=body or ORDER, headers=headers)
    assert response.status_code == 201, response.text
    return response


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:eventflow:problem:{code}"
    assert body["status"] == status
    return body


async def test_create_answers_201_with_location_and_etag(client: httpx.AsyncClient) -> None:
    response = await create(client)
    order = response.json()
    assert response.headers["location"] == f"/orders/{order['id']}"
    assert response.headers["etag"] == '"1"'
    assert (order["status"], order["version"], order["total"]) == ("open", 1, "19.98")
    assert order["lines"] == ORDER["lines"]


async def test_create_writes_the_order_and_its_created_event(
    client: httpx.AsyncClient, fake_store: FakeOrderStore
) -> None:
    order = (await create(client, traceparent=TRACEPARENT)).json()
    (event,) = fake_store.outbox[order["id"]]
    assert event["type"] == "eventflow.orders.OrderCreated.v2"
    assert event["sequence"] == "00000000000000000001"
    assert event["data"]["total"] == "19.98"
    trace_id = TRACEPARENT.split("-")[1]
    assert event["traceparent"].split("-")[1] == trace_id
    assert event["traceparent"] != TRACEPARENT  # a span of its own within the caller's trace


async def test_without_a_traceparent_the_event_starts_a_trace(
    client: httpx.AsyncClient, fake_store: FakeOrderStore
) -> None:
    order = (await create(client, traceparent="garbage")).json()
    (event,) = fake_store.outbox[order["id"]]
    assert event["traceparent"].startswith("00-")
    assert len(event["traceparent"]) == 55


async def test_read_returns_the_order_with_its_etag(client: httpx.AsyncClient) -> None:
    created = (await create(client)).json()
    response = await client.get(f"/orders/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["etag"] == '"1"'


async def test_read_of_an_unknown_order_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/orders/nope"), 404, "order-not-found")


async def test_commands_change_the_order_and_append_events_in_sequence(
    client: httpx.AsyncClient, fake_store: FakeOrderStore
) -> None:
    order_id = (await create(client)).json()["id"]
    added = await client.post(
        f"/orders/{order_id}/items",
        json={"sku": "SKU-2", "quantity": 1, "unit_price": "0.02"},
        headers={"If-Match": '"1"'},
    )
    assert (added.status_code, added.headers["etag"], added.json()["total"]) == (
        200,
        '"2"',
        "20.00",
    )
    submitted = await client.post(f"/orders/{order_id}/submit", headers={"If-Match": '"2"'})
    assert submitted.json()["status"] == "submitted"
    cancelled = await client.post(
        f"/orders/{order_id}/cancel", json={"reason": "late"}, headers={"If-Match": '"3"'}
    )
    assert (cancelled.json()["status"], cancelled.json()["cancel_reason"]) == ("cancelled", "late")
    events = (await client.get(f"/orders/{order_id}/events")).json()
    assert [e["type"].split(".")[2] for e in events] == [
        "OrderCreated",
        "OrderItemAdded",
        "OrderSubmitted",
        "OrderCancelled",
    ]
    assert [int(e["sequence"]) for e in events] == [1, 2, 3, 4]
    for raw in events:
        decode_event(httpx.Response(200, json=raw).content)


async def test_a_change_without_if_match_is_428(client: httpx.AsyncClient) -> None:
    order_id = (await create(client)).json()["id"]
    assert_problem(await client.post(f"/orders/{order_id}/submit"), 428, "if-match-required")


@pytest.mark.parametrize("if_match", ['"2"', "1", 'W/"1"', '"0", "3"'])
async def test_a_change_with_a_stale_or_weak_if_match_is_412(
    client: httpx.AsyncClient, if_match: str
) -> None:
    order_id = (await create(client)).json()["id"]
    assert_problem(
        await client.post(f"/orders/{order_id}/submit", headers={"If-Match": if_match}),
        412,
        "stale-etag",
    )


@pytest.mark.parametrize("if_match", ["*", '"9", "1"'])
async def test_if_match_star_or_a_list_naming_the_current_etag_is_accepted(
    client: httpx.AsyncClient, if_match: str
) -> None:
    order_id = (await create(client)).json()["id"]
    response = await client.post(f"/orders/{order_id}/submit", headers={"If-Match": if_match})
    assert response.status_code == 200


async def test_a_change_to_an_unknown_order_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(
        await client.post("/orders/nope/submit", headers={"If-Match": '"1"'}),
        404,
        "order-not-found",
    )


async def test_broken_rules_are_409_with_their_code(client: httpx.AsyncClient) -> None:
    empty = (await create(client, {"customer_id": "c", "currency": "EUR"})).json()["id"]
    assert_problem(
        await client.post(f"/orders/{empty}/submit", headers={"If-Match": '"1"'}),
        409,
        "order-empty",
    )
    order_id = (await create(client)).json()["id"]
    await client.post(f"/orders/{order_id}/submit", headers={"If-Match": '"1"'})
    line = {"sku": "SKU-3", "quantity": 1, "unit_price": "1.00"}
    after = await client.post(f"/orders/{order_id}/items", json=line, headers={"If-Match": '"2"'})
    assert_problem(after, 409, "order-not-open")
    await client.post(
        f"/orders/{order_id}/cancel", json={"reason": "r"}, headers={"If-Match": '"2"'}
    )
    twice = await client.post(
        f"/orders/{order_id}/cancel", json={"reason": "r"}, headers={"If-Match": '"3"'}
    )
    assert_problem(twice, 409, "order-already-cancelled")


async def test_the_same_idempotency_key_and_body_replays_the_first_answer(
    client: httpx.AsyncClient, fake_store: FakeOrderStore
) -> None:
    first = await create(client, **{"Idempotency-Key": "key-1"})
    writes = fake_store.writes
    again = await create(client, **{"Idempotency-Key": "key-1"})
    assert again.json() == first.json()
    assert (again.headers["location"], again.headers["etag"]) == (
        first.headers["location"],
        first.headers["etag"],
    )
    assert again.headers["idempotent-replayed"] == "true"
    assert fake_store.writes == writes


async def test_the_replay_is_the_first_answer_even_after_later_changes(
    client: httpx.AsyncClient,
) -> None:
    first = await create(client, **{"Idempotency-Key": "key-2"})
    await client.post(f"{first.headers['location']}/submit", headers={"If-Match": '"1"'})
    again = await create(client, **{"Idempotency-Key": "key-2"})
    assert again.json() == first.json()


async def test_the_same_idempotency_key_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    await create(client, **{"Idempotency-Key": "key-3"})
    other = await client.post(
        "/orders", json=ORDER | {"currency": "USD"}, headers={"Idempotency-Key": "key-3"}
    )
    assert_problem(other, 422, "idempotency-key-reused")


@pytest.mark.parametrize(
    "body",
    [
        {"customer_id": "c", "currency": "EUR", "unknown": 1},
        {"customer_id": "c", "currency": "eur"},
        {"currency": "EUR"},
        {
            "customer_id": "c",
            "currency": "EUR",
            "lines": [{"sku": "bad sku", "quantity": 1, "unit_price": "1.00"}],
        },
        {
            "customer_id": "c",
            "currency": "EUR",
            "lines": [{"sku": "A1", "quantity": 0, "unit_price": "1.00"}],
        },
        {
            "customer_id": "c",
            "currency": "EUR",
            "lines": [{"sku": "A1", "quantity": 1001, "unit_price": "1.00"}],
        },
        {
            "customer_id": "c",
            "currency": "EUR",
            "lines": [{"sku": "A1", "quantity": 1, "unit_price": 1.0}],
        },
        {
            "customer_id": "c",
            "currency": "EUR",
            "lines": [{"sku": "A1", "quantity": 1, "unit_price": "1.5"}],
        },
        {
            "customer_id": "c",
            "currency": "EUR",
            "lines": [{"sku": "A1", "quantity": 1, "unit_price": "1000000.01"}],
        },
        {
            "customer_id": "c",
            "currency": "EUR",
            "lines": [{"sku": "A1", "quantity": 1, "unit_price": "1.00"}] * 101,
        },
    ],
)
async def test_invalid_bodies_are_422_problems_that_name_the_field(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    problem = assert_problem(await client.post("/orders", json=body), 422, "validation-error")
    assert problem["errors"]
    assert all("input" not in error for error in problem["errors"])


async def test_malformed_json_is_a_422_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/orders", content=b'{"customer_id": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "validation-error")


async def test_a_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    huge = ORDER | {"customer_id": "c" * 10000}
    assert_problem(await client.post("/orders", json=huge), 413, "body-too-large")


async def test_a_streamed_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 1000

    response = await client.post(
        "/orders", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(response, 413, "body-too-large")


async def test_a_body_that_is_not_json_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/orders", content=b"customer=c", headers={"content-type": "text/plain"}
    )
    assert_problem(response, 415, "unsupported-media-type")


async def test_an_unavailable_store_is_503_with_retry_after(
    client: httpx.AsyncClient, fake_store: FakeOrderStore
) -> None:
    fake_store.unavailable = True
    response = await client.post("/orders", json=ORDER)
    assert_problem(response, 503, "store-unavailable")
    assert response.headers["retry-after"] == "3"
    assert_problem(await client.get("/readyz"), 503, "store-unavailable")


async def test_health_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_unknown_routes_and_methods_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nowhere"), 404, "not-found")
    assert_problem(await client.delete("/orders"), 405, "method-not-allowed")


async def test_an_unexpected_error_is_a_500_problem_without_internals(
    client: httpx.AsyncClient, fake_store: FakeOrderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(fake_store, "load", broken)
    response = await client.get("/orders/any")
    assert_problem(response, 500, "internal-error")
    assert "secret" not in response.text
