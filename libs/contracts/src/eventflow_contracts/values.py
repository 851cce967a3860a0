"""Value types shared by the event data models: identifiers, SKUs, quantities, money.

Money travels as a decimal string with exactly two fraction digits ("12.30"), never as a JSON
number, so no reader ever sees a binary float. In Python it is a `Decimal`.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, StringConstraints, WithJsonSchema

MONEY_PATTERN = r"^(0|[1-9][0-9]{0,14})\.[0-9]{2}$"
_MONEY_RE = re.compile(MONEY_PATTERN)
MONEY_SCALE = Decimal("0.01")


def parse_money(value: Any) -> Decimal:
    """Accept a decimal string with exactly two fraction digits, or a Decimal of whole cents.

    Floats and integers are refused: money must never pass through a binary float.
    The result always has two fraction digits.
    """
    if isinstance(value, Decimal):
        if not value.is_finite() or value != value.quantize(MONEY_SCALE):
            raise ValueError("money must be a whole number of cents")
        text = format(value.quantize(MONEY_SCALE), "f")
    elif isinstance(value, str):
        text = value
    else:
        raise ValueError("money must be a decimal string such as '12.30'")
    if not _MONEY_RE.fullmatch(text):
        raise ValueError("money must be a non-negative decimal string with two fraction digits")
    return Decimal(text)


def format_money(value: Decimal) -> str:
    """The wire form of an amount: always two fraction digits."""
    return format(value.quantize(MONEY_SCALE), "f")


Money = Annotated[
    Decimal,
    BeforeValidator(parse_money),
    PlainSerializer(format_money, return_type=str),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN}),
]

MAX_UNIT_PRICE = Decimal("1000000.00")
UNIT_PRICE_PATTERN = r"^((0|[1-9][0-9]{0,5})\.[0-9]{2}|1000000\.00)$"
UnitPrice = Annotated[
    Decimal,
    BeforeValidator(parse_money),
    Field(le=MAX_UNIT_PRICE),
    PlainSerializer(format_money, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": UNIT_PRICE_PATTERN, "description": "At most 1000000.00."}
    ),
]
"""A price per unit: money of at most 1,000,000.00, so that any order total fits `Money`."""

OrderId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", min_length=1, max_length=64)
]
"""Order ids double as Cosmos partition keys, Event Hubs partition keys and Service Bus session
ids, so they are kept to characters every one of those accepts, and at most 64 long."""

CustomerId = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$", max_length=128)
]
Sku = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9-]{1,31}$")]


def json_integer(value: Any) -> int:
    """JSON Schema's integer: a number without a fraction (2 or 2.0); never a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


Quantity = Annotated[int, Field(ge=1, le=1000), BeforeValidator(json_integer)]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=500)]

MAX_LINES_PER_ORDER = 100
