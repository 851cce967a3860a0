"""The one polling helper of the test suites: wait for a condition, never sleep and hope."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    what: str = "the condition",
    *,
    wait: float = 30.0,
    every: float = 0.05,
) -> T:
    """Call `check` (a function or a coroutine function) every `every` seconds until it returns a
    truthy value, and return that value. Raises AssertionError naming `what` once `wait` seconds
    have passed without one (the machine may be busy: give generous waits, the helper returns as
    soon as the condition holds)."""
    deadline = time.monotonic() + wait
    while True:
        result = check()
        value: T = await result if inspect.isawaitable(result) else result
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {wait:g} s: {what}")
        await asyncio.sleep(every)
