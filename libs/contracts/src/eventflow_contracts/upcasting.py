"""Upcasters: one function per version step, each turning version N of an event into N+1.

Readers accept every version still listed in the registry and always see the current one.
"""

from __future__ import annotations

from eventflow_contracts.events import OrderCreatedV1, OrderCreatedV2, total_of


def upcast_order_created_v1_to_v2(event: OrderCreatedV1) -> OrderCreatedV2:
    """v1 allowed the currency to be absent (meaning the v1 default) and stated no total."""
    return OrderCreatedV2(
        order_id=event.order_id,
        customer_id=event.customer_id,
        lines=event.lines,
        currency=event.currency or OrderCreatedV1.DEFAULT_CURRENCY_V1,
        total=total_of(event.lines),
    )
