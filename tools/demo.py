"""make demo: against a running `make dev`, create and change a few orders and show each change
arriving in the consumer's projection, with the time it took from the API's answer."""

from __future__ import annotations

import sys
import time
import uuid

import httpx

PRODUCER = "http://127.0.0.1:8000"
CONSUMER = "http://127.0.0.1:5300"


def wait_for(client: httpx.Client, order_id: str, version: int, started: float) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = client.get(f"{CONSUMER}/orders/{order_id}")
        if response.status_code == 200 and response.json()["last_sequence"] >= version:
            summary = response.json()
            sys.stdout.write(f"   consumer has v{version} ({summary['status']}, total {summary['total']}) "
                             f"after {(time.monotonic() - started) * 1000:.0f} ms\n")  # fmt: skip
            return
        time.sleep(0.02)
    sys.stdout.write(f"   consumer did not show v{version} within 30 s\n")


def main() -> None:
    with httpx.Client(timeout=10) as client:
        try:
            client.get(f"{PRODUCER}/healthz")
        except httpx.TransportError:
            sys.exit("no producer on 127.0.0.1:8000: start `make dev` first")
        for n in range(3):
            body = {"customer_id": f"demo-{n}", "currency": "EUR",
                    "lines": [{"sku": f"SKU-{n}", "quantity": n + 1, "unit_price": "4.50"}]}  # fmt: skip
            started = time.monotonic()
            created = client.post(
                f"{PRODUCER}/orders", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
            )
            order = created.json()
            sys.stdout.write(
                f"POST /orders -> {created.status_code} {order['id']} ETag {created.headers['etag']}\n"
            )
            wait_for(client, order["id"], 1, started)
            etag = created.headers["etag"]
            for path, payload in (
                ("items", {"sku": "SKU-X", "quantity": 1, "unit_price": "1.00"}),
                ("submit", None),
            ):
                started = time.monotonic()
                changed = client.post(f"{PRODUCER}/orders/{order['id']}/{path}", json=payload,
                                      headers={"If-Match": etag})  # fmt: skip
                sys.stdout.write(
                    f"POST /orders/{order['id']}/{path} -> {changed.status_code} ETag {changed.headers.get('etag')}\n"
                )
                etag = changed.headers["etag"]
                wait_for(client, order["id"], changed.json()["version"], started)


if __name__ == "__main__":
    main()
