"""Only authorized callers, through real HTTP (uvicorn on 127.0.0.1) on the real store (the SDK
against the Cosmos DB emulator), with real RS256 tokens from an issuer on 127.0.0.1 that serves
an OpenID discovery document and a key set as Entra ID does. Every refused request answers its
status as problem+json and writes nothing."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from azure.cosmos.aio import CosmosClient
from pydantic import SecretStr
from structlog.testing import capture_logs

from eventflow_contracts.auth import READ_ROLE, WRITE_ROLE
from eventflow_contracts.auth_testing import LocalIssuer, SigningKey, running_issuer
from eventflow_emulators.cosmos.testing import RunningCosmosEmulator
from eventflow_producer.api import create_app
from eventflow_producer.bootstrap import write_strategy
from eventflow_producer.settings import Settings
from eventflow_testing import eventually

ORDER = {
    "customer_id": "c-1",
    "currency": "EUR",
    "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": "5.00"}],
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with running_issuer() as running:
        yield running


class Producer:
    def __init__(self, url: str, database: str, cosmos: RunningCosmosEmulator) -> None:
        self.url, self.database, self.cosmos = url, database, cosmos

    async def documents(self) -> int:
        """How many documents the orders container holds (orders, events, idempotency records)."""
        async with CosmosClient(self.cosmos.endpoint, credential=self.cosmos.key) as client:
            container = client.get_database_client(self.database).get_container_client("orders")
            counts: list[Any] = [
                n async for n in container.query_items("SELECT VALUE COUNT(1) FROM c")
            ]
        return int(counts[0])


@pytest.fixture
async def producer(
    cosmos_emulator_server: RunningCosmosEmulator, issuer: LocalIssuer
) -> AsyncIterator[Producer]:
    database = f"auth-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        mode="emulator", cosmos_endpoint=cosmos_emulator_server.endpoint,
        cosmos_key=SecretStr(cosmos_emulator_server.key), database=database, **issuer.settings(),
    )  # fmt: skip
    port = _free_port()
    config = uvicorn.Config(create_app(settings, write_strategy(settings)), host="127.0.0.1", port=port,
                            log_config=None, access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or serving.done(), "the server started", wait=60)
    assert not serving.done(), "the server stopped"
    try:
        yield Producer(f"http://127.0.0.1:{port}", database, cosmos_emulator_server)
    finally:
        issuer.down = False
        server.should_exit = True
        await serving


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _refusals(issuer: LocalIssuer) -> dict[str, tuple[dict[str, str], int, str]]:
    """Each bad request: its headers, the status it gets, its problem type."""
    now = int(time.time())
    token = issuer.token
    return {
        "no Authorization header": ({}, 401, "token-required"),
        "Bearer with garbage": (_bearer("garbage.garbage.garbage"), 401, "invalid-token"),
        "signed by another key": (_bearer(token(WRITE_ROLE, key=SigningKey(issuer.key.kid))), 401, "invalid-token"),
        "alg none": (_bearer(issuer.unsigned_token(WRITE_ROLE)), 401, "invalid-token"),
        "HS256 with the public key": (_bearer(issuer.hmac_token(WRITE_ROLE)), 401, "invalid-token"),
        "expired": (_bearer(token(WRITE_ROLE, exp=now - 300, iat=now - 4000, nbf=now - 4000)), 401, "invalid-token"),
        "not yet valid": (_bearer(token(WRITE_ROLE, nbf=now + 600, iat=now + 600)), 401, "invalid-token"),
        "wrong audience": (_bearer(token(WRITE_ROLE, aud=str(uuid.uuid4()))), 401, "invalid-token"),
        "wrong issuer": (_bearer(token(WRITE_ROLE, iss=f"https://sts.windows.net/{issuer.tenant_id}/")), 401, "invalid-token"),
        "wrong tenant": (_bearer(token(WRITE_ROLE, tid=str(uuid.uuid4()))), 401, "invalid-token"),
        "a v1 token": (_bearer(token(WRITE_ROLE, ver="1.0")), 401, "invalid-token"),
        "valid without a role": (_bearer(token()), 403, "forbidden"),
        "read-only on a command": (_bearer(token(READ_ROLE)), 403, "forbidden"),
        "delegated with the scope, no role": (_bearer(token(user=True)), 403, "forbidden"),
        "delegated with the role, another scope": (_bearer(token(WRITE_ROLE, scp="Other.Read")), 403, "forbidden"),
    }  # fmt: skip


CASES = [
    "no Authorization header", "Bearer with garbage", "signed by another key", "alg none",
    "HS256 with the public key", "expired", "not yet valid", "wrong audience", "wrong issuer",
    "wrong tenant", "a v1 token", "valid without a role", "read-only on a command",
    "delegated with the scope, no role", "delegated with the role, another scope",
]  # fmt: skip


def _is_problem(answer: httpx.Response, status: int, kind: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == f"urn:eventflow:problem:{kind}"
    assert answer.json()["status"] == status


@pytest.mark.parametrize("case", CASES)
async def test_a_command_without_the_right_token_is_refused_and_writes_nothing(
    producer: Producer, issuer: LocalIssuer, case: str
) -> None:
    headers, status, kind = _refusals(issuer)[case]
    async with httpx.AsyncClient(base_url=producer.url) as http:
        order = await http.post("/orders", json=ORDER, headers=_bearer(issuer.token(WRITE_ROLE)))
        assert order.status_code == 201, order.text
        etag, order_url = order.headers["etag"], order.headers["location"]
        before = await producer.documents()
        with capture_logs() as logs:
            answers = [
                await http.post("/orders", json=ORDER, headers={**headers, "Idempotency-Key": "k-1"}),
                await http.post(f"{order_url}/submit", headers={**headers, "If-Match": etag}),
            ]  # fmt: skip
        for answer in answers:
            _is_problem(answer, status, kind)
            if status == 401:
                assert answer.headers["www-authenticate"].startswith('Bearer realm="eventflow"')
        assert await producer.documents() == before
        assert (await http.get(order_url, headers=_bearer(issuer.token(READ_ROLE)))).json()[
            "status"
        ] == "open"
    secret = headers.get("Authorization", "").removeprefix("Bearer ")
    assert not secret or all(secret not in str(line) for line in logs), "a token was logged"


async def test_reads_need_a_reader_or_a_writer(producer: Producer, issuer: LocalIssuer) -> None:
    async with httpx.AsyncClient(base_url=producer.url) as http:
        created = await http.post("/orders", json=ORDER, headers=_bearer(issuer.token(WRITE_ROLE)))
        order_url = created.headers["location"]
        for token in (issuer.token(READ_ROLE), issuer.token(WRITE_ROLE),
                      issuer.token(READ_ROLE, user=True)):  # fmt: skip
            assert (await http.get(order_url, headers=_bearer(token))).status_code == 200
            assert (
                await http.get(f"{order_url}/events", headers=_bearer(token))
            ).status_code == 200
        _is_problem(await http.get(order_url), 401, "token-required")
        _is_problem(
            await http.get(order_url, headers=_bearer(issuer.token(user=True))), 403, "forbidden"
        )
        _is_problem(
            await http.get(f"{order_url}/events", headers=_bearer(issuer.token("Other.Role"))), 403, "forbidden"
        )  # fmt: skip


async def test_a_user_with_the_scope_and_the_role_may_change_orders(
    producer: Producer, issuer: LocalIssuer
) -> None:
    user = _bearer(issuer.token(WRITE_ROLE, user=True))
    async with httpx.AsyncClient(base_url=producer.url) as http:
        created = await http.post("/orders", json=ORDER, headers=user)
        assert created.status_code == 201, created.text
        submitted = await http.post(f"{created.headers['location']}/submit",
                                    headers={**user, "If-Match": created.headers["etag"]})  # fmt: skip
        assert submitted.json()["status"] == "submitted"


async def test_another_callers_idempotency_key_opens_the_callers_own_order(
    producer: Producer, issuer: LocalIssuer
) -> None:
    alice = _bearer(issuer.token(WRITE_ROLE, oid=str(uuid.uuid4())))
    bob = _bearer(issuer.token(WRITE_ROLE, oid=str(uuid.uuid4())))
    key = {"Idempotency-Key": "shared-key-1"}
    async with httpx.AsyncClient(base_url=producer.url) as http:
        first = await http.post("/orders", json=ORDER, headers={**alice, **key})
        again = await http.post("/orders", json=ORDER, headers={**alice, **key})
        other = await http.post(
            "/orders", json={**ORDER, "customer_id": "c-bob"}, headers={**bob, **key}
        )
    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 201)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert other.json()["id"] != first.json()["id"]
    assert other.json()["customer_id"] == "c-bob"
    assert "idempotent-replayed" not in other.headers


async def test_an_unknown_key_answers_503_while_the_key_set_is_down_and_401_once_it_is_back(
    producer: Producer, issuer: LocalIssuer
) -> None:
    async with httpx.AsyncClient(base_url=producer.url) as http:
        known = _bearer(issuer.token(WRITE_ROLE))
        assert (await http.post("/orders", json=ORDER, headers=known)).status_code == 201
        before = await producer.documents()
        issuer.down = True
        stranger = _bearer(issuer.token(WRITE_ROLE, key=SigningKey()))
        answer = await http.post("/orders", json=ORDER, headers=stranger)
        _is_problem(answer, 503, "key-set-unavailable")
        assert int(answer.headers["retry-after"]) > 0
        assert await producer.documents() == before
        # Keys already cached keep validating through the outage.
        assert (await http.post("/orders", json=ORDER, headers=known)).status_code == 201
        issuer.down = False
        _is_problem(await http.post("/orders", json=ORDER, headers=stranger), 401, "invalid-token")
        assert await producer.documents() == before + 2  # the one order and its event


async def test_a_64_kb_authorization_header_is_refused_by_the_server(
    producer: Producer, issuer: LocalIssuer
) -> None:
    async with httpx.AsyncClient(base_url=producer.url) as http:
        before = await producer.documents()
        answer = await http.post("/orders", json=ORDER, headers=_bearer("a" * 64 * 1024))
        assert answer.status_code == 401, answer.text
        assert answer.json()["detail"] == "the token is too long"
        assert await producer.documents() == before


async def test_health_metrics_and_the_api_document_need_no_token(producer: Producer) -> None:
    async with httpx.AsyncClient(base_url=producer.url) as http:
        for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
            assert (await http.get(path)).status_code == 200, path
        document: dict[str, Any] = (await http.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["EntraID"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": document["components"]["securitySchemes"]["EntraID"]["description"],
    }  # fmt: skip
    for path, operations in document["paths"].items():
        for operation in operations.values():
            expected: list[dict[str, list[str]]] = (
                [] if path in ("/healthz", "/readyz") else [{"EntraID": []}]
            )
            assert operation.get("security", []) == expected, path
