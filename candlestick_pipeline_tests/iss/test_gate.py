"""The ISS request budget shared by forked worker processes (``candlestick load``'s workers)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from candlestick_pipeline.defs.iss import gate
from candlestick_pipeline.standin.server import ISSStandIn

NOW = dt.datetime(2025, 6, 10, 12, 0)


def _workers(standin: ISSStandIn, workers: int, *args: int | str) -> Any:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "candlestick_pipeline_tests.iss.gate_workers",
            standin.base_url,
            str(workers),
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def _fetch_in_workers(standin: ISSStandIn, workers: int, *budget: int) -> list[int]:
    rows: list[int] = _workers(standin, workers, *budget)
    return rows


@pytest.fixture
def slow_standin(standin: ISSStandIn) -> ISSStandIn:
    standin.set_now(NOW)
    standin.set_faults(latency_ms=40)  # so that requests of different workers overlap in time
    return standin


def test_forked_workers_never_exceed_the_shared_budget(slow_standin: ISSStandIn) -> None:
    rows = _fetch_in_workers(slow_standin, 3, 2)

    # Three workers whose clients allow 4 requests each: 12 could be in flight, the budget allows 2.
    assert slow_standin.stats.snapshot()["max_in_flight"] == 2
    assert len(set(rows)) == 1 and rows[0] > 2500


def test_without_a_shared_budget_each_worker_has_its_own_limit(slow_standin: ISSStandIn) -> None:
    _fetch_in_workers(slow_standin, 3)

    assert slow_standin.stats.snapshot()["max_in_flight"] > 2


def test_workers_start_up_one_at_a_time_until_their_first_request(slow_standin: ISSStandIn) -> None:
    starts = sorted(_workers(slow_standin, 3, 2, "turns"))

    # Each worker took its turn only after the one before sent its first request or failed, and
    # not later than that: a worker that fetched passed the turn on while still fetching. The
    # failing worker (its run broke before any request) passed the turn on all the same.
    assert [failed for *_, failed in starts].count(True) == 1
    for (earlier, first_request, done, failed), (later, *_) in itertools.pairwise(starts):
        assert later >= earlier + 0.2  # each start-up takes 0.2 s
        if not failed:
            assert first_request is not None and first_request <= later < done
    assert slow_standin.stats.snapshot()["max_in_flight"] == 2


@pytest.fixture
def no_shared_budget() -> Iterator[None]:
    gate.stop_sharing()
    yield
    gate.stop_sharing()


def test_a_budget_needs_a_slot(no_shared_budget: None) -> None:
    with pytest.raises(ValueError, match="at least 1 slot"):
        gate.share_between_processes(0)
    assert not gate.shared_limit_active()
    with gate.request_slot():  # no budget: nothing to take
        pass
    with gate.start_up_in_turn(), gate.start_up_in_turn():  # no budget: no turns to wait for
        pass
