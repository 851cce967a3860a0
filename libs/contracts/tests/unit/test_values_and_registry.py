from decimal import Decimal

import pytest
from pydantic import ValidationError

from eventflow_contracts import (
    CURRENT,
    PUBLISHED,
    OrderCreated,
    OrderCreatedV1,
    OrderCreatedV2,
    OrderLine,
    is_current,
    upcast,
    upcast_order_created_v1_to_v2,
)
from eventflow_contracts.values import format_money, parse_money

LINE = OrderLine(sku="AB", quantity=3, unit_price=Decimal("0.10"))


@pytest.mark.parametrize("text", ["0.00", "12.30", "999999999999999.99"])
def test_money_accepts_two_fraction_digits(text: str) -> None:
    assert format_money(parse_money(text)) == text


@pytest.mark.parametrize(
    "value", ["1", "1.0", "1.000", "-1.00", "01.00", " 1.00", "1e2", 1, 1.0, None]
)
def test_money_refuses_everything_else(value: object) -> None:
    with pytest.raises(ValueError, match="money"):
        parse_money(value)


def test_money_accepts_a_decimal_of_the_right_scale() -> None:
    assert parse_money(Decimal("5.50")) == Decimal("5.50")


def test_line_amount_and_model_serialisation_use_exact_decimals() -> None:
    assert LINE.amount == Decimal("0.30")
    assert LINE.model_dump(mode="json") == {"sku": "AB", "quantity": 3, "unit_price": "0.10"}


def test_v2_total_must_match_its_lines() -> None:
    with pytest.raises(ValidationError, match="total must equal"):
        OrderCreatedV2(
            order_id="o", customer_id="c", lines=(LINE,), currency="EUR", total=Decimal("1.00")
        )


def test_upcaster_keeps_an_explicit_v1_currency() -> None:
    v1 = OrderCreatedV1(order_id="o", customer_id="c", lines=(LINE,), currency="USD")
    v2 = upcast_order_created_v1_to_v2(v1)
    assert (v2.currency, v2.total) == ("USD", Decimal("0.30"))


def test_upcast_is_identity_on_current_versions() -> None:
    v2 = OrderCreatedV2(order_id="o", customer_id="c", currency="EUR", total=Decimal("0.00"))
    assert upcast(v2) is v2


def test_registry_lists_current_versions_and_their_aliases() -> None:
    assert CURRENT["OrderCreated"] is OrderCreated is OrderCreatedV2
    assert is_current(OrderCreatedV2)
    assert not is_current(OrderCreatedV1)
    assert set(CURRENT.values()) <= set(PUBLISHED)
    assert len({model.event_type() for model in PUBLISHED}) == len(PUBLISHED)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(Decimal("0"), "0.00"), (Decimal("5.5"), "5.50"), (Decimal("2.000"), "2.00")],
)
def test_money_normalises_decimals_of_whole_cents(value: Decimal, expected: str) -> None:
    assert format_money(parse_money(value)) == expected


@pytest.mark.parametrize(
    "value", [Decimal("0.001"), Decimal("NaN"), Decimal("Infinity"), Decimal("-1")]
)
def test_money_refuses_decimals_that_are_not_whole_non_negative_cents(value: Decimal) -> None:
    with pytest.raises(ValueError, match="money"):
        parse_money(value)
