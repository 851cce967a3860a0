"""The polling helper: waits for a function's or a coroutine's truthy value, and fails naming what
it waited for."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from eventflow_testing import eventually


async def test_the_first_truthy_value_is_returned_of_a_function_or_a_coroutine() -> None:
    calls = itertools.count(1)
    assert await eventually(lambda: next(calls) >= 3 and "third", every=0.001) == "third"

    async def later() -> list[int]:
        await asyncio.sleep(0)
        return [1] if next(calls) >= 6 else []

    assert await eventually(later, every=0.001) == [1]


async def test_a_condition_that_never_holds_fails_naming_it_after_the_wait() -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(AssertionError, match=r"not within 0\.2 s: the impossible"):
        await eventually(lambda: False, "the impossible", wait=0.2, every=0.01)
    assert loop.time() - began >= 0.2
