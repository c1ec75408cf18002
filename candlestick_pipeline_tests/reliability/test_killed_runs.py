"""SIGKILL in the middle of writing: every partition window holds either its complete old rows or its
complete new rows, never a mix or a part, and a rerun completes the work exactly.

Real processes, killed with SIGKILL (no handler, no cleanup), on both warehouses: first a writer
process in the middle of a 200,000-row replace, then ``dagster asset materialize`` in the middle
of a range run.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import psycopg
import pytest
import sqlalchemy as sa
import yaml

from candlestick_pipeline.defs.candles.partitions import multi_key
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.standin.server import ISSStandIn
from candlestick_pipeline_tests.conftest import ADMIN_DSN, REPO_ROOT
from candlestick_pipeline_tests.e2e.conftest import Project
from candlestick_pipeline_tests.reliability import killable_writer
from candlestick_pipeline_tests.reliability.conftest import (
    MATERIALIZE,
    SBER,
    classify_days,
    days,
    engine_for,
    kill_group,
    preload,
    register_in,
    start,
    wait_for,
)

ROWS = 200_000
WINDOWS = 3
KILLED_WINDOW = 1


def _copy_in_progress(dbname: str) -> bool:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
            "AND query LIKE 'COPY candles%%'",
            (dbname,),
        ).fetchone()
    return bool(row and row[0])


def _signature(frame: pl.DataFrame) -> tuple[object, ...]:
    return frame.select(
        pl.len(),
        pl.col("begin").min().alias("first"),
        pl.col("begin").max().alias("last"),
        pl.col("volume").sum(),
        pl.col("open").sum(),
    ).row(0)


def _window_state(engine: sa.Engine, index: int) -> str:
    """'old' or 'new' when the window holds exactly that frame's rows (compared by SQL aggregates)."""
    start, end = killable_writer.window(index, ROWS)
    c = warehouse.candles.c
    query = sa.select(
        sa.func.count(), sa.func.min(c.begin), sa.func.max(c.begin), sa.func.sum(c.volume)
    ).where(
        c.secid == killable_writer.KEY.secid,
        c.board == killable_writer.KEY.board,
        c.begin >= start,
        c.begin < end,
    )
    query = query.add_columns(sa.func.sum(c.open))
    with engine.connect() as conn:
        row = tuple(conn.execute(query).one())
    for variant in ("old", "new"):
        expected = _signature(killable_writer.frame(index, ROWS, variant))
        if row[:4] == expected[:4] and abs(float(row[4]) - float(expected[4])) < 1e-6 * abs(
            float(expected[4])
        ):  # type: ignore[arg-type]
            return variant
    return f"PARTIAL ({row[0]} rows)"


@pytest.mark.e2e
def test_sigkill_in_the_middle_of_a_partition_write_leaves_the_old_rows_whole(
    warehouse_dsn: str, tmp_path: Path
) -> None:
    with engine_for(warehouse_dsn) as engine:
        for index in range(WINDOWS):
            frame = killable_writer.frame(index, ROWS, "old")
            warehouse.replace_candles(
                engine, killable_writer.KEY, "1m", *killable_writer.window(index, ROWS), frame
            )
    module = "candlestick_pipeline_tests.reliability.killable_writer"
    writer = subprocess.Popen(
        [sys.executable, "-m", module, warehouse_dsn, str(tmp_path), str(WINDOWS), str(ROWS)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The window's DELETE has run in the open transaction and its bulk insert is starting ...
        wait_for(lambda: (tmp_path / f"writing-{KILLED_WINDOW}").exists(), 60, "the second window's write")
        if warehouse_dsn.startswith("postgresql"):
            # ... and PostgreSQL is receiving the COPY stream.
            dbname = sa.make_url(warehouse_dsn).database
            assert dbname is not None
            wait_for(lambda: _copy_in_progress(dbname), 10, "COPY candles in pg_stat_activity")
        else:
            time.sleep(0.05)
    finally:
        writer.send_signal(signal.SIGKILL)
        out, err = writer.communicate(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    # Killed after window 0 committed and before window 1 did.
    assert out.split() == ["committed", "0"], (out, err)

    with engine_for(warehouse_dsn) as engine:
        states = [_window_state(engine, index) for index in range(WINDOWS)]
        assert states == ["new", "old", "old"]
        # The window being written when the process died: its old rows, exactly, row by row.
        killed = warehouse.read_candles(
            engine, killable_writer.KEY, "1m", *killable_writer.window(KILLED_WINDOW, ROWS)
        )
        assert killed.equals(killable_writer.frame(KILLED_WINDOW, ROWS, "old"))
        # Nothing is left locked: the rerun replaces the rest at once and exactly.
        for index in range(KILLED_WINDOW, WINDOWS):
            frame = killable_writer.frame(index, ROWS, "new")
            warehouse.replace_candles(
                engine, killable_writer.KEY, "1m", *killable_writer.window(index, ROWS), frame
            )
        assert [_window_state(engine, index) for index in range(WINDOWS)] == ["new"] * WINDOWS
        assert warehouse.count_candles(engine, killable_writer.KEY) == WINDOWS * ROWS


@pytest.mark.e2e
def test_sigkill_of_dagster_asset_materialize_mid_range_then_a_rerun_completes_it(
    project: Project, standin: ISSStandIn
) -> None:
    register_in(project)
    span = days(dt.date(2025, 5, 12), 21)
    preload(project.warehouse_dsn, standin, SBER, span, revision=0)
    standin.set_revision(1)  # ISS corrected every price: a complete reload changes every row
    standin.set_faults(latency_ms=100)  # slow enough that the run is still writing when it is killed
    # A request stream per day, so that days are written one after another (one stream would write
    # the range in one transaction, leaving nothing to kill in between).
    project.extra_env["CANDLESTICK_FETCH_SPAN_MAX"] = "1"
    selection = ("--select", "candles_1m", "--partition-range")
    span_keys = f"{multi_key(SBER, span[0].isoformat())}...{multi_key(SBER, span[-1].isoformat())}"

    proc = start(project, *MATERIALIZE, *selection, span_keys)
    try:
        # Kill once a few days hold the new rows, i.e. the step process is busy writing partitions.
        wait_for(
            lambda: (
                list(classify_days(project.warehouse_dsn, standin, SBER, span, 0, 1).values()).count("new")
                >= 3
            ),
            90,
            "three partitions written by the run",
            interval=0.05,
        )
    finally:
        kill_group(proc)  # SIGKILL to the CLI and its step process
    assert proc.returncode == -signal.SIGKILL
    state = classify_days(project.warehouse_dsn, standin, SBER, span, 0, 1)
    assert "MIXED" not in state.values(), state
    assert "old" in state.values(), "the run finished before it was killed: make it slower"
    counts = {name: list(state.values()).count(name) for name in ("new", "old")}
    print(f"\nSIGKILL-RUN {project.warehouse_dsn.split(':', 1)[0]} partitions whole-new/whole-old: {counts}")

    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        # Nothing of the killed run is marked loaded, though some days were written (and are whole).
        assert instance.get_materialized_partitions(dg.AssetKey("candles_1m")) == set()
        [run] = instance.get_runs()
        # The dead process could not record its end: the run stays STARTED and keeps its slot of the
        # "iss" pool (4 slots) until the slot is freed explicitly (see docs/reliability.md, section 3).
        assert run.status == dg.DagsterRunStatus.STARTED
        claims = instance.event_log_storage.get_concurrency_info("iss").claimed_slots
        assert [(c.run_id, c.step_key) for c in claims] == [(run.run_id, "candles_1m")]
        # Recovery: mark it canceled (the UI's forced termination; run monitoring does the same
        # after max_runtime_seconds) - that alone keeps the slot - then free its slots.
        instance.report_run_canceled(run, message="its process was killed with SIGKILL")
        assert instance.event_log_storage.get_concurrency_info("iss").claimed_slots != []
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        assert instance.event_log_storage.get_concurrency_info("iss").claimed_slots == []

    # The rerun: the missing days only (here: all of them, since none is marked loaded).
    dates = ("--from", span[0].isoformat(), "--till", span[-1].isoformat())
    out = project.run("candlestick", "load", "SBER.TQBR", "-t", "1m", *dates).stdout
    assert f"{len(span)} partition(s), 0 already loaded, {len(span)} to load in 1 run(s)" in out
    assert set(classify_days(project.warehouse_dsn, standin, SBER, span, 0, 1).values()) == {"new"}
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        assert len(instance.get_materialized_partitions(dg.AssetKey("candles_1m"))) == len(span)


@dg.asset(pool="iss")
def _probe() -> None:
    """A trivial asset in the "iss" pool, to own a run whose slot claim is left behind."""


def test_the_daemon_frees_the_pool_slot_of_a_dead_run_with_this_projects_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dagster._daemon.monitoring import concurrency as slots_daemon

    settings = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    overrides = {name: settings[name] for name in ("concurrency", "run_monitoring") if name in settings}
    with dg.instance_for_test(overrides=overrides) as instance:
        run = dg.materialize([_probe], instance=instance)
        # What a SIGKILLed step leaves behind: its claim on a slot of the pool.
        instance.event_log_storage.initialize_concurrency_limit_to_default("iss")
        instance.event_log_storage.claim_concurrency_slot("iss", run.run_id, "_probe")
        assert instance.event_log_storage.get_concurrency_info("iss").claimed_slots
        # Run monitoring has marked the run finished (it is, here); a day later the daemon ticks.
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        monkeypatch.setattr(slots_daemon, "get_current_datetime", lambda: later)
        context = type("Context", (), {"instance": instance})()
        list(slots_daemon.execute_concurrency_slots_iteration(context, logging.getLogger(__name__)))  # type: ignore[arg-type]
        assert instance.event_log_storage.get_concurrency_info("iss").claimed_slots == []
