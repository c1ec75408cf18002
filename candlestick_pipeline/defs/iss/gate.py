"""One budget of ISS requests in flight, shared by the forked worker processes of one command.

``candlestick load K1 K2 ...`` executes its runs in forked worker processes. Dividing
``ISS_MAX_CONCURRENCY`` between them statically leaves a worker's share idle while that worker does
Dagster bookkeeping, and gives the security with the most pages no more than the one with the
fewest. Instead the parent creates one process-shared semaphore of ``ISS_MAX_CONCURRENCY`` slots
before it forks (:func:`share_between_processes`); every client in every worker takes a slot for
each request (:func:`request_slot`), so ISS still never sees more than ``ISS_MAX_CONCURRENCY``
requests at once from the whole command, and whichever worker is fetching gets all the slots.

Outside such a command (a run launched by Dagster, a sensor, a test) no budget is shared and
:func:`request_slot` costs nothing; the client's own per-process limit applies alone.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_shared: Any = None  # a multiprocessing BoundedSemaphore (fork context), inherited by forked workers


def share_between_processes(limit: int) -> None:
    """From now on, requests of this process and of the processes it forks take one of ``limit`` slots."""
    global _shared
    if limit < 1:
        raise ValueError(f"a shared ISS request budget needs at least 1 slot, got {limit}")
    _shared = multiprocessing.get_context("fork").BoundedSemaphore(limit)


def stop_sharing() -> None:
    """Back to no shared budget (in this process; forked workers keep what they inherited)."""
    global _shared
    _shared = None


def shared_limit_active() -> bool:
    """Whether requests of this process take slots of a budget shared between processes."""
    return _shared is not None


@contextmanager
def request_slot() -> Iterator[None]:
    """Hold one slot of the shared budget for the duration of one request (nothing when none is shared)."""
    shared = _shared
    if shared is None:
        yield
        return
    with shared:
        yield
