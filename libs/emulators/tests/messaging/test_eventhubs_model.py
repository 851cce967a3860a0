"""Event Hubs rules without the wire: positions, offsets, owner levels."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventflow_emulators.messaging.config import HubConfig
from eventflow_emulators.messaging.eventhubs.links import parse_selector
from eventflow_emulators.messaging.eventhubs.model import (
    EventHubsModel,
    Position,
    ReaderRefused,
)
from eventflow_emulators.messaging.store import Store


class Reader:
    def __init__(self, owner_level: int | None) -> None:
        self.owner_level = owner_level
        self.displaced: list[str] = []

    def displace(self, condition: str, description: str) -> None:
        self.displaced.append(condition)

    def wake(self) -> None:
        pass


@pytest.fixture
def model(tmp_path: Path) -> Iterator[EventHubsModel]:
    store = Store(tmp_path)
    yield EventHubsModel([HubConfig("hub", 2, ("$default",))], store, lambda: 1000)
    store.close()


def body(data: bytes) -> Callable[[int, int, int], bytes]:
    """An event body builder that ignores its sequence number, offset and time."""
    return lambda *_: data


def test_offsets_are_byte_positions_and_sequence_numbers_count(model: EventHubsModel) -> None:
    part = model.partition("hub", "0")
    rows = model.append(part, [body(b"x" * 10), body(b"y" * 5)])
    assert [(r.seq, r.offset) for r in rows] == [(0, 0), (1, 10)]
    assert model.properties(part)["last_enqueued_offset"] == "10"


@pytest.mark.parametrize(
    ("selector", "position"),
    [
        ("amqp.annotation.x-opt-offset > '-1'", Position("start")),
        ("amqp.annotation.x-opt-offset > '@latest'", Position("end")),
        ("amqp.annotation.x-opt-offset >= '10'", Position("offset", 10, True)),
        ("amqp.annotation.x-opt-sequence-number > '3'", Position("sequence", 3, False)),
        ("amqp.annotation.x-opt-enqueued-time > '1700000000000'", Position("time", 1700000000000)),
    ],
)
def test_the_sdks_selectors_parse(selector: str, position: Position) -> None:
    assert parse_selector(selector) == position


def test_positions_resolve_to_sequence_numbers(model: EventHubsModel) -> None:
    part = model.partition("hub", "0")
    model.append(part, [body(b"x" * 10)] * 3)
    assert model.start_sequence(part, Position("sequence", 1, False)) == 2
    assert model.start_sequence(part, Position("offset", 10, True)) == 1
    assert model.start_sequence(part, Position("offset", 10, False)) == 2
    assert model.start_sequence(part, Position("end")) == 3


def test_a_higher_owner_level_displaces_and_a_lower_is_refused(model: EventHubsModel) -> None:
    part = model.partition("hub", "1")
    plain, low, high = Reader(None), Reader(1), Reader(2)
    model.open_reader(part, "$default", plain)
    model.open_reader(part, "$default", low)
    assert plain.displaced == ["amqp:link:stolen"]
    model.open_reader(part, "$default", high)
    assert low.displaced == ["amqp:link:stolen"]
    with pytest.raises(ReaderRefused):
        model.open_reader(part, "$default", Reader(1))
    with pytest.raises(ReaderRefused):
        model.open_reader(part, "$default", Reader(None))
