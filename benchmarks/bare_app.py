"""The baseline for the producer benchmark: the same request validation as POST /orders, no I/O."""

from __future__ import annotations

from fastapi import FastAPI

from eventflow_producer.api import CreateOrderIn

app = FastAPI()


@app.post("/orders", status_code=201)
async def create_order(body: CreateOrderIn) -> dict[str, object]:
    return {"customer_id": body.customer_id, "lines": len(body.lines)}
