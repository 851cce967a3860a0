from datetime import UTC, datetime
from decimal import Decimal

import pytest

from eventflow_contracts import OrderLine, OrderSubmitted
from eventflow_producer.domain import OrderStatus, RuleBroken, add_item, cancel, open_order, submit

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LINE = OrderLine(sku="SKU-1", quantity=2, unit_price=Decimal("1.50"))


def test_an_order_opens_at_version_one_with_its_total() -> None:
    order, event = open_order("o1", "c1", "EUR", (LINE,), NOW)
    assert (order.version, order.status, order.total) == (1, OrderStatus.OPEN, Decimal("3.00"))
    assert (event.total, event.currency, event.lines) == (Decimal("3.00"), "EUR", (LINE,))


def test_each_change_raises_the_version_by_one() -> None:
    order, _ = open_order("o1", "c1", "EUR", (), NOW)
    order, added = add_item(order, LINE, NOW)
    order, submitted = submit(order, NOW)
    order, cancelled = cancel(order, "changed my mind", NOW)
    assert order.version == 4
    assert added.line == LINE
    assert submitted == OrderSubmitted(
        order_id="o1", currency="EUR", total=Decimal("3.00"), line_count=1
    )
    assert (order.status, order.cancel_reason, cancelled.reason) == (
        OrderStatus.CANCELLED,
        "changed my mind",
        "changed my mind",
    )


def test_no_items_after_submit() -> None:
    order, _ = open_order("o1", "c1", "EUR", (LINE,), NOW)
    order, _ = submit(order, NOW)
    with pytest.raises(RuleBroken) as broken:
        add_item(order, LINE, NOW)
    assert broken.value.code == "order-not-open"


def test_an_empty_order_cannot_be_submitted() -> None:
    order, _ = open_order("o1", "c1", "EUR", (), NOW)
    with pytest.raises(RuleBroken) as broken:
        submit(order, NOW)
    assert broken.value.code == "order-empty"


def test_submit_twice_is_refused() -> None:
    order, _ = open_order("o1", "c1", "EUR", (LINE,), NOW)
    order, _ = submit(order, NOW)
    with pytest.raises(RuleBroken, match="submitted"):
        submit(order, NOW)


def test_cancel_twice_is_refused() -> None:
    order, _ = open_order("o1", "c1", "EUR", (LINE,), NOW)
    order, _ = cancel(order, "r", NOW)
    with pytest.raises(RuleBroken) as broken:
        cancel(order, "r", NOW)
    assert broken.value.code == "order-already-cancelled"


def test_an_order_holds_at_most_100_lines() -> None:
    order, _ = open_order("o1", "c1", "EUR", (LINE,) * 100, NOW)
    with pytest.raises(RuleBroken) as broken:
        add_item(order, LINE, NOW)
    assert broken.value.code == "too-many-lines"
    with pytest.raises(RuleBroken):
        open_order("o2", "c1", "EUR", (LINE,) * 101, NOW)
