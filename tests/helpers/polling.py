"""The one way the tests wait for something a server, a worker or a child process does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str, every: float = 0.5) -> T:
    """The first truthy value `condition()` returns, asked every `every` seconds.

    The condition may raise to end the wait early (a run that ended otherwise, a process that died).

    Raises:
        TimeoutError: after `timeout` seconds, naming `what` was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(every)
