"""make demo: against a running `make dev`, create and change a few orders and show each change
arriving in the consumer's projection, with the time it took from the API's answer, and the trace
id of each change (each request starts its own trace: `make trace ORDER=<id>` draws it)."""

from __future__ import annotations

import secrets
import sys
import time
import uuid

import httpx

PRODUCER = "http://127.0.0.1:8000"
CONSUMER = "http://127.0.0.1:5300"


def new_trace() -> tuple[str, dict[str, str]]:
    """A trace id, and the W3C header that makes the producer's server span start that trace."""
    trace_id = secrets.token_hex(16)
    return trace_id, {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}


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
            trace_id, traceparent = new_trace()
            created = client.post(f"{PRODUCER}/orders", json=body,
                                  headers={"Idempotency-Key": uuid.uuid4().hex, **traceparent})  # fmt: skip
            order = created.json()
            sys.stdout.write(f"POST /orders -> {created.status_code} {order['id']} "
                             f"ETag {created.headers['etag']}  trace {trace_id}\n")  # fmt: skip
            wait_for(client, order["id"], 1, started)
            etag = created.headers["etag"]
            for path, payload in (
                ("items", {"sku": "SKU-X", "quantity": 1, "unit_price": "1.00"}),
                ("submit", None),
            ):
                started = time.monotonic()
                trace_id, traceparent = new_trace()
                changed = client.post(f"{PRODUCER}/orders/{order['id']}/{path}", json=payload,
                                      headers={"If-Match": etag, **traceparent})  # fmt: skip
                sys.stdout.write(f"POST /orders/{order['id']}/{path} -> {changed.status_code} "
                                 f"ETag {changed.headers.get('etag')}  trace {trace_id}\n")  # fmt: skip
                etag = changed.headers["etag"]
                wait_for(client, order["id"], changed.json()["version"], started)
        sys.stdout.write(f"\nsee one as a waterfall: make trace ORDER={order['id']}\n")


if __name__ == "__main__":
    main()
