"""Concurrent runs: the same partitions loaded twice at once, two date gaps of one security loaded at
once (what lost the old service's data), and writers racing on one window while readers watch.
"""

from __future__ import annotations

import datetime as dt
import threading

import dagster as dg
import pytest

from candlestick_pipeline.defs.candles.status import LoadState, partition_states
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.timeframes import TIMEFRAMES
from candlestick_pipeline.standin.server import ISSStandIn
from candlestick_pipeline_tests.e2e.conftest import Project
from candlestick_pipeline_tests.reliability.conftest import (
    ASSETS,
    NOW,
    SBER,
    ISSGate,
    assert_exact,
    day_window,
    days,
    engine_for,
    finish,
    range_tags,
    register_in,
    resources,
    source,
    start,
    stored,
    wait_for,
)


def _overlap(instance: dg.DagsterInstance) -> float:
    """Seconds during which all the instance's runs were running at the same time."""
    records = instance.get_run_records()
    starts = [r.start_time for r in records if r.start_time]
    ends = [r.end_time for r in records if r.end_time]
    assert len(starts) == len(ends) == len(records)
    return min(ends) - max(starts)  # type: ignore[type-var, operator]


@pytest.mark.e2e
def test_the_same_partitions_materialized_by_two_processes_at_once_equal_one_load(
    project: Project, standin: ISSStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_in(project)
    week = days(dt.date(2025, 6, 2), 7)
    first, last = week[0].isoformat(), week[-1].isoformat()
    gate = ISSGate(standin, monkeypatch)
    standin.set_faults(latency_ms=10)
    # Two processes, each one run over the same seven partitions.
    procs = [
        start(project, "candlestick", "load", "SBER.TQBR", "-t", "1m", "--from", first, "--till", last)
        for _ in range(2)
    ]
    try:
        # Each process has at most 4 requests in flight: 8 held means both are fetching.
        wait_for(lambda: standin.candle_requests() >= 8, 90, "both runs fetching")
    finally:
        gate.release()
    results = [finish(proc) for proc in procs]
    assert [code for code, _, _ in results] == [0, 0], results

    for day in week:
        assert_exact(
            stored(project.warehouse_dsn, SBER, "1m", *day_window(day)),
            source(standin, SBER, 1, *day_window(day)),
        )
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        assert _overlap(instance) > 0
        assert len(instance.get_runs()) == 2
        mats = instance.fetch_materializations(dg.AssetKey("candles_1m"), limit=100).records
        assert len(mats) == 2 * len(week)  # both runs loaded every partition; the warehouse has one copy


@pytest.mark.e2e
def test_two_date_gaps_of_one_security_loaded_at_once_both_complete(
    project: Project, standin: ISSStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old service lost data for good when two gaps of one security were loaded at once."""
    register_in(project)
    span = days(dt.date(2025, 5, 26), 14)  # 26 May .. 8 June
    gaps = (span[:4], span[9:])  # 26-29 May and 4-8 June; 30 May - 3 June is loaded already
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        assert dg.materialize(
            [ASSETS["candles_1m"]],
            instance=instance,
            resources=resources(standin, project.warehouse_dsn),
            tags=range_tags(SBER, span[4].isoformat(), span[8].isoformat()),
        ).success
    standin.reset_stats()
    gate = ISSGate(standin, monkeypatch)
    load = ("candlestick", "load", "SBER.TQBR", "-t", "1m")
    procs = [
        start(project, *load, "--from", gap[0].isoformat(), "--till", gap[-1].isoformat()) for gap in gaps
    ]
    try:
        wait_for(lambda: standin.candle_requests() >= 8, 90, "both gap loads fetching")
    finally:
        gate.release()
    results = [finish(proc) for proc in procs]
    assert [code for code, _, _ in results] == [0, 0], results
    assert "4 to load in 1 run(s)" in results[0][1] and "5 to load in 1 run(s)" in results[1][1]

    # Only the gaps were fetched, both completely; the whole span equals the source.
    fetched = {
        day
        for entry in standin.stats.snapshot()["candle_requests_log"]
        for day in days_between(entry["from"], entry["till"])
    }
    assert fetched == {day for gap in gaps for day in gap}
    for day in span:
        assert_exact(
            stored(project.warehouse_dsn, SBER, "1m", *day_window(day)),
            source(standin, SBER, 1, *day_window(day)),
        )
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        states = partition_states(instance, TIMEFRAMES["1m"], SBER, [d.isoformat() for d in span], now=NOW)
        assert {state.state for state in states} == {LoadState.FINAL}
        gap_runs = [
            r
            for r in instance.get_run_records()
            if r.dagster_run.tags.get("dagster/asset_partition_range_start", "").startswith(
                ("2025-05-26", "2025-06-04")
            )
        ]
        assert len(gap_runs) == 2
        assert min(r.end_time for r in gap_runs) > max(r.start_time for r in gap_runs)  # type: ignore[operator, type-var]


def test_writers_racing_on_one_window_leave_one_complete_load_and_readers_never_see_a_part(
    warehouse_dsn: str, standin: ISSStandIn
) -> None:
    window = day_window(dt.date(2025, 6, 2))
    frames = [source(standin, SBER, 1, *window, revision=rev) for rev in (0, 1)]
    with engine_for(warehouse_dsn) as engine:
        warehouse.replace_candles(engine, SBER, "1m", *window, frames[0])
        errors: list[BaseException] = []
        seen: list[int] = []
        done = threading.Event()

        def writer(which: int) -> None:
            try:
                for i in range(8):
                    warehouse.replace_candles(engine, SBER, "1m", *window, frames[(which + i) % 2])
            except BaseException as exc:
                errors.append(exc)

        def reader() -> None:
            try:
                while not done.is_set():
                    got = warehouse.read_candles(engine, SBER, "1m", *window)
                    matches = [i for i, frame in enumerate(frames) if got.equals(frame)]
                    assert matches, f"a reader saw {got.height} rows matching neither load"
                    seen.append(matches[0])
            except BaseException as exc:
                errors.append(exc)

        writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        readers = [threading.Thread(target=reader) for _ in range(2)]
        for thread in writers + readers:
            thread.start()
        for thread in writers:
            thread.join(120)
        done.set()
        for thread in readers:
            thread.join(60)
        assert errors == []
        assert len(seen) > 0
        final = warehouse.read_candles(engine, SBER, "1m", *window)
        assert any(final.equals(frame) for frame in frames)
        assert warehouse.count_candles(engine, SBER, "1m") == frames[0].height


def days_between(first: str, last: str) -> list[dt.date]:
    """The days of an ISS ``from``/``till`` pair (both inclusive)."""
    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return days(start, (end - start).days + 1)
