"""Only authorized callers read orders, through real HTTP (the read API's aiohttp server on
127.0.0.1) with real RS256 tokens from an issuer on 127.0.0.1 that serves an OpenID discovery
document and a key set as Entra ID does. A refused request never reaches the store."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from eventflow_consumer.observability import ConsumerMetrics, http_app
from eventflow_consumer.settings import Settings
from eventflow_contracts.auth import READ_ROLE, WRITE_ROLE, Authenticator
from eventflow_contracts.auth_testing import LocalIssuer, SigningKey, running_issuer


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with running_issuer() as running:
        yield running


class Store:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def read(self, order_id: str) -> dict[str, Any] | None:
        self.asked.append(order_id)
        return {"order_id": order_id, "status": "open"}


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
async def client(issuer: LocalIssuer, store: Store) -> AsyncIterator[TestClient[Any, Any]]:
    settings = Settings(mode="local", **issuer.settings())
    auth = Authenticator(settings.auth_config())
    app = http_app(ConsumerMetrics(), store.read, lambda: True, auth)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as http:
            yield http
    finally:
        issuer.down = False
        await auth.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _refusals(issuer: LocalIssuer) -> dict[str, tuple[dict[str, str], int, str]]:
    now = int(time.time())
    token = issuer.token
    return {
        "no Authorization header": ({}, 401, "token-required"),
        "Bearer with garbage": (_bearer("garbage"), 401, "invalid-token"),
        "signed by another key": (_bearer(token(READ_ROLE, key=SigningKey(issuer.key.kid))), 401, "invalid-token"),
        "alg none": (_bearer(issuer.unsigned_token(READ_ROLE)), 401, "invalid-token"),
        "HS256 with the public key": (_bearer(issuer.hmac_token(READ_ROLE)), 401, "invalid-token"),
        "expired": (_bearer(token(READ_ROLE, exp=now - 300, iat=now - 4000, nbf=now - 4000)), 401, "invalid-token"),
        "not yet valid": (_bearer(token(READ_ROLE, nbf=now + 600, iat=now + 600)), 401, "invalid-token"),
        "wrong audience": (_bearer(token(READ_ROLE, aud=str(uuid.uuid4()))), 401, "invalid-token"),
        "wrong issuer": (_bearer(token(READ_ROLE, iss="https://sts.windows.net/x/")), 401, "invalid-token"),
        "wrong tenant": (_bearer(token(READ_ROLE, tid=str(uuid.uuid4()))), 401, "invalid-token"),
        "a v1 token": (_bearer(token(READ_ROLE, ver="1.0")), 401, "invalid-token"),
        "valid without a role": (_bearer(token()), 403, "forbidden"),
        "another role only": (_bearer(token("Orders.Admin")), 403, "forbidden"),
        "delegated with the scope, no role": (_bearer(token(user=True)), 403, "forbidden"),
    }  # fmt: skip


CASES = [
    "no Authorization header", "Bearer with garbage", "signed by another key", "alg none",
    "HS256 with the public key", "expired", "not yet valid", "wrong audience", "wrong issuer",
    "wrong tenant", "a v1 token", "valid without a role", "another role only",
    "delegated with the scope, no role",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
async def test_a_read_without_the_right_token_is_refused_before_the_store_is_asked(
    client: TestClient[Any, Any], issuer: LocalIssuer, store: Store, case: str
) -> None:
    headers, status, kind = _refusals(issuer)[case]
    response = await client.get("/orders/o-1", headers=headers)
    assert response.status == status
    assert response.content_type == "application/problem+json"
    assert (await response.json())["type"] == f"urn:eventflow:problem:{kind}"
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="eventflow"')
    assert store.asked == []


async def test_readers_writers_and_users_with_the_role_read(
    client: TestClient[Any, Any], issuer: LocalIssuer, store: Store
) -> None:
    for token in (issuer.token(READ_ROLE), issuer.token(WRITE_ROLE),
                  issuer.token(READ_ROLE, user=True)):  # fmt: skip
        response = await client.get("/orders/o-1", headers=_bearer(token))
        assert response.status == 200
    assert store.asked == ["o-1"] * 3


async def test_an_unknown_key_answers_503_while_the_key_set_is_down(
    client: TestClient[Any, Any], issuer: LocalIssuer, store: Store
) -> None:
    known = _bearer(issuer.token(READ_ROLE))
    assert (await client.get("/orders/o-1", headers=known)).status == 200
    issuer.down = True
    stranger = _bearer(issuer.token(READ_ROLE, key=SigningKey()))
    response = await client.get("/orders/o-1", headers=stranger)
    assert response.status == 503
    assert (await response.json())["type"] == "urn:eventflow:problem:key-set-unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert (await client.get("/orders/o-1", headers=known)).status == 200
    issuer.down = False
    assert (await client.get("/orders/o-1", headers=stranger)).status == 401
    assert store.asked == ["o-1", "o-1"]


async def test_a_64_kb_authorization_header_is_refused_by_the_server(
    client: TestClient[Any, Any], store: Store
) -> None:
    # aiohttp's parser refuses a header field over 8190 bytes with 400 before the app sees it.
    response = await client.get("/orders/o-1", headers=_bearer("a" * 64 * 1024))
    assert response.status == 400
    assert store.asked == []


async def test_health_and_metrics_need_no_token(client: TestClient[Any, Any]) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status == 200, path


def test_azure_mode_refuses_to_run_without_entra_id(issuer: LocalIssuer) -> None:
    azure = {"mode": "azure", "servicebus_namespace": "ns.servicebus.windows.net",
             "cosmos_endpoint": "https://account.documents.azure.com:443/"}  # fmt: skip
    with pytest.raises(ValueError, match="needs CONSUMER_AUTH_TENANT_ID"):
        Settings(**azure)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only"):
        Settings(**azure, **issuer.settings())  # type: ignore[arg-type]
    entra = {key: value for key, value in issuer.settings().items() if key != "auth_authority"}
    assert Settings(**azure, **entra).auth_config() is not None  # type: ignore[arg-type]
