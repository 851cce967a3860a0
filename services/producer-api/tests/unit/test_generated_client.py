"""A client generated from the served OpenAPI document (openapi-python-client, as a user of the API
would generate one) round-trips one request of each operation, problem responses included."""

from __future__ import annotations

import contextlib
import importlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest

from eventflow_contracts.auth import WRITE_ROLE
from eventflow_contracts.auth_testing import LocalIssuer, running_issuer
from eventflow_producer.api import WriteStrategy, create_app
from eventflow_producer.bootstrap import write_strategy
from eventflow_producer.ports import OrderStore
from eventflow_producer.settings import Settings

from ..conftest import FakeOrderStore  # type: ignore[import-not-found]

PACKAGE = "eventflow_orders_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    folder = tmp_path_factory.mktemp("generated-client")
    document = create_app(Settings(mode="local"), write_strategy(Settings(mode="local"))).openapi()
    (folder / "openapi.json").write_text(json.dumps(document))
    (folder / "config.yaml").write_text(f"package_name_override: {PACKAGE}\npost_hooks: []\n")
    done = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", "openapi.json",
         "--config", "config.yaml", "--output-path", PACKAGE, "--meta", "none"],
        cwd=folder, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, (
        "every part of the document generates: " + done.stdout + done.stderr
    )
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def operation(name: str) -> Any:
    group = "health" if name in {"healthz", "readyz"} else "orders"
    return importlib.import_module(f"{PACKAGE}.api.{group}.{name}")


def model(name: str) -> Any:
    return getattr(importlib.import_module(f"{PACKAGE}.models"), name)


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with running_issuer() as running:
        yield running


@pytest.fixture
async def transport(
    fake_store: FakeOrderStore, issuer: LocalIssuer
) -> AsyncIterator[httpx.ASGITransport]:
    """The app with authentication on (the issuer's tokens), behind an in-process transport."""

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[OrderStore]:
        yield fake_store

    app = create_app(Settings(**issuer.settings()), WriteStrategy(open_store))
    async with app.router.lifespan_context(app):
        yield httpx.ASGITransport(app=app, raise_app_exceptions=False)


async def test_a_generated_client_sends_its_token_and_round_trips_every_operation(
    generated: ModuleType, transport: httpx.ASGITransport, issuer: LocalIssuer
) -> None:
    api = generated.AuthenticatedClient(
        base_url="http://producer", token=issuer.token(WRITE_ROLE), raise_on_unexpected_status=True,
        httpx_args={"transport": transport},
    )  # fmt: skip
    line, order_out, problem = model("LineIn"), model("OrderOut"), model("Problem")
    anonymous = generated.Client(base_url="http://producer", httpx_args={"transport": transport})
    refused = await operation("read_order").asyncio_detailed("o-1", client=anonymous)
    assert refused.status_code == 401
    assert isinstance(refused.parsed, problem)
    assert refused.parsed.type_.endswith("token-required")

    created = await operation("create_order").asyncio_detailed(
        client=api, idempotency_key="round-trip-1",
        body=model("CreateOrderIn")(customer_id="c-1", currency="EUR",
                                    lines=[line(sku="SKU-1", quantity=2, unit_price="9.99")]),
    )  # fmt: skip
    assert created.status_code == 201
    assert isinstance(created.parsed, order_out)
    order_id, etag = created.parsed.id, created.headers["etag"]
    assert created.parsed.total == "19.98"

    read = await operation("read_order").asyncio_detailed(order_id, client=api)
    assert read.status_code == 200
    assert read.parsed.version == created.parsed.version

    added = await operation("add_order_item").asyncio_detailed(
        order_id, client=api, if_match=etag, body=line(sku="SKU-2", quantity=1, unit_price="1.00")
    )
    assert added.status_code == 200
    assert [item.sku for item in added.parsed.lines] == ["SKU-1", "SKU-2"]

    stale = await operation("submit_order").asyncio_detailed(order_id, client=api, if_match=etag)
    assert stale.status_code == 412
    assert isinstance(stale.parsed, problem)
    assert stale.parsed.status == 412

    submitted = await operation("submit_order").asyncio_detailed(
        order_id, client=api, if_match=added.headers["etag"]
    )
    assert submitted.status_code == 200
    assert submitted.parsed.status == "submitted"

    cancelled = await operation("cancel_order").asyncio_detailed(
        order_id, client=api, if_match=submitted.headers["etag"],
        body=model("CancelIn")(reason="changed my mind"),
    )  # fmt: skip
    assert cancelled.status_code == 200
    assert cancelled.parsed.cancel_reason == "changed my mind"

    events = await operation("list_order_events").asyncio_detailed(order_id, client=api)
    assert events.status_code == 200
    assert [int(e.additional_properties["sequence"]) for e in events.parsed] == [1, 2, 3, 4]

    missing = await operation("read_order").asyncio_detailed("no-such-order", client=api)
    assert missing.status_code == 404
    assert isinstance(missing.parsed, problem)
    assert missing.parsed.type_.endswith("order-not-found")

    invalid = await operation("create_order").asyncio_detailed(
        client=api, body=model("CreateOrderIn")(customer_id="", currency="EURO")
    )
    assert invalid.status_code == 422
    assert isinstance(invalid.parsed, problem)
    assert {tuple(error.location) for error in invalid.parsed.errors} >= {
        ("body", "customer_id"), ("body", "currency"),
    }  # fmt: skip

    assert (await operation("healthz").asyncio_detailed(client=api)).status_code == 200
    assert (await operation("readyz").asyncio_detailed(client=api)).status_code == 200


def test_the_document_names_each_operation_by_its_route() -> None:
    document = create_app(Settings(mode="local"), write_strategy(Settings(mode="local"))).openapi()
    ids = sorted(op["operationId"] for path in document["paths"].values() for op in path.values())
    assert ids == sorted([
        "create_order", "read_order", "add_order_item", "submit_order", "cancel_order",
        "list_order_events", "healthz", "readyz",
    ])  # fmt: skip
