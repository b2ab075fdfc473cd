"""One at a time: the work that holds the interpreter (the GIL) from start to end.

Parsing a request's JSON and decoding its base64 are bytes and str methods that never let the GIL
go of their own accord. Four I/O threads doing so at once took turns at it with the event loop's
thread, which then waited a switch interval (5 ms) behind each of them at every turn: under a
flood of uploads, `/health` p99 was 55-88 ms with four such threads and 31-37 ms with one
(docs/reliability.md). One at a time, the same work takes no longer (the GIL serialised it
anyway) and the loop waits behind one thread at most. Image decoding and PNG encoding let the GIL
go in C, and stay in parallel.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_LANE = threading.Lock()


def one_at_a_time(function: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(function)
    def in_lane(*args: P.args, **kwargs: P.kwargs) -> R:
        with _LANE:
            return function(*args, **kwargs)

    return in_lane
