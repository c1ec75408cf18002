"""One budget of ISS requests in flight, shared by the forked worker processes of one command.

``candlestick load K1 K2 ...`` executes its runs in forked worker processes. Dividing
``ISS_MAX_CONCURRENCY`` between them statically leaves a worker's share idle while that worker does
Dagster bookkeeping, and gives the security with the most pages no more than the one with the
fewest. Instead the parent creates one process-shared semaphore of ``ISS_MAX_CONCURRENCY`` slots
before it forks (:func:`share_between_processes`); every client in every worker takes a slot for
each request (:func:`request_slot`), so ISS still never sees more than ``ISS_MAX_CONCURRENCY``
requests at once from the whole command, and whichever worker is fetching gets all the slots.

The workers also start up *in turn* (:func:`start_up_in_turn`): each run's start (its instance,
job, run record, planned events, resources) takes about a second of CPU, so four workers starting
together on two cores all reach ISS after about two seconds. One at a time, the first worker's
streams reach ISS after half a second and fill the budget alone while the next worker starts up.
A worker's turn ends at its first ISS request, or when its run ends without one.

Outside such a command (a run launched by Dagster, a sensor, a test) no budget is shared and
:func:`request_slot` costs nothing; the client's own per-process limit applies alone.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_shared: Any = None  # a multiprocessing BoundedSemaphore (fork context), inherited by forked workers
_turn: Any = None  # a multiprocessing Lock (fork context): held by the worker whose run is starting up
_holding_turn = False  # whether this process holds ``_turn`` now
_turn_guard = threading.Lock()  # the fetch threads of one process race to pass the turn on


def share_between_processes(limit: int) -> None:
    """From now on, requests of this process and of the processes it forks take one of ``limit`` slots."""
    global _shared, _turn
    if limit < 1:
        raise ValueError(f"a shared ISS request budget needs at least 1 slot, got {limit}")
    context = multiprocessing.get_context("fork")
    _shared = context.BoundedSemaphore(limit)
    _turn = context.Lock()


def stop_sharing() -> None:
    """Back to no shared budget (in this process; forked workers keep what they inherited)."""
    global _shared, _turn
    _shared = None
    _turn = None


@contextmanager
def start_up_in_turn() -> Iterator[None]:
    """Wait for this process's turn to start a run, and hold it until the run's first ISS request
    or the end of the block (nothing when no budget is shared)."""
    global _holding_turn
    turn = _turn
    if turn is None:
        yield
        return
    turn.acquire()
    _holding_turn = True
    try:
        yield
    finally:
        _pass_turn()


def _pass_turn() -> None:
    global _holding_turn
    with _turn_guard:
        if _holding_turn:
            _holding_turn = False
            _turn.release()


def shared_limit_active() -> bool:
    """Whether requests of this process take slots of a budget shared between processes."""
    return _shared is not None


@contextmanager
def request_slot() -> Iterator[None]:
    """Hold one slot of the shared budget for the duration of one request (nothing when none is shared)."""
    if _holding_turn:  # this run's first request: the next worker may start up
        _pass_turn()
    shared = _shared
    if shared is None:
        yield
        return
    with shared:
        yield
