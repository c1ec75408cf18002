"""The warehouse failing mid-run: a restart (sessions killed), the database going away for a while,
and a write that breaks half-way (a disk I/O error). Nothing partial is ever left behind.

Each fault is injected at a known point, inside the transaction of the third partition of a
seven-day range run (after its DELETE, during its bulk insert), so the outcome is deterministic.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import dagster as dg
import psycopg
import pytest
import sqlalchemy as sa

from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.warehouse import candle_store
from candlestick_pipeline.standin.server import ISSStandIn
from candlestick_pipeline_tests.conftest import ADMIN_DSN
from candlestick_pipeline_tests.reliability.conftest import (
    ASSETS,
    NOW,
    SBER,
    classify_days,
    days,
    failure_message,
    preload,
    range_tags,
    register,
    resources,
)

WEEK = days(dt.date(2025, 6, 2), 7)
FAILING_WRITE = 2  # the third partition's write breaks


@pytest.fixture(autouse=True)
def _one_partition_per_write(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests break the Nth write; a request stream (and write) per day makes N a day.
    monkeypatch.setenv("CANDLESTICK_FETCH_SPAN_MAX", "1")


def _admin(*statements: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def _terminate(dbname: str) -> str:
    return f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'"


def _break_write_number(
    monkeypatch: pytest.MonkeyPatch, number: int, action: Callable[[], None]
) -> list[int]:
    """Run ``action`` inside the transaction of the ``number``-th partition write, just before its insert."""
    original = candle_store._bulk_insert
    calls: list[int] = []

    def bulk_insert(*args: Any, **kwargs: Any) -> None:
        calls.append(len(calls))
        if len(calls) - 1 == number:
            action()
        original(*args, **kwargs)

    monkeypatch.setattr(candle_store, "_bulk_insert", bulk_insert)
    return calls


def _retried_errors(result: dg.ExecuteInProcessResult) -> list[str]:
    """The error messages of the step attempts that Dagster retried."""
    messages = []
    for event in result.all_events:
        if event.event_type_value == "STEP_UP_FOR_RETRY":
            error = event.event_specific_data.error  # type: ignore[union-attr]
            messages.append(
                error.message if error.cause is None else f"{error.message}\n{error.cause.message}"
            )
    return messages


def _setup(
    instance: dg.DagsterInstance, standin: ISSStandIn, dsn: str
) -> tuple[dict[str, object], dict[str, str]]:
    standin.set_now(NOW)
    key = register(instance, standin, dsn)
    preload(dsn, standin, key, WEEK, revision=0)
    standin.set_revision(1)
    return resources(standin, dsn), range_tags(key, WEEK[0].isoformat(), WEEK[-1].isoformat())


def _states(dsn: str, standin: ISSStandIn) -> list[str]:
    return list(classify_days(dsn, standin, SBER, WEEK, old=0, new=1).values())


def test_a_warehouse_restart_mid_write_is_retried_by_the_step_and_the_run_ends_exact(
    instance: dg.DagsterInstance, standin: ISSStandIn, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL restarts (every session killed) while a partition is being written."""
    res, tags = _setup(instance, standin, pg_dsn)
    dbname = sa.make_url(pg_dsn).database
    _break_write_number(monkeypatch, FAILING_WRITE, lambda: _admin(_terminate(str(dbname))))
    result = dg.materialize([ASSETS["candles_1m"]], instance=instance, resources=res, tags=tags)
    # The first attempt failed at the third write (rolled back); Dagster's step retry redid the range.
    assert result.success
    [retried] = _retried_errors(result)
    assert "failed while replacing SBER.TQBR 1m [2025-06-04 00:00:00, 2025-06-05 00:00:00)" in retried
    assert "OperationalError" in retried  # "the connection is lost"
    assert _states(pg_dsn, standin) == ["new"] * len(WEEK)


def test_sessions_killed_between_writes_are_replaced_without_the_run_noticing(
    instance: dg.DagsterInstance, standin: ISSStandIn, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every warehouse session is killed while no write is open: the pool reconnects (pre-ping)."""
    res, tags = _setup(instance, standin, pg_dsn)
    dbname = str(sa.make_url(pg_dsn).database)
    original = warehouse.replace_candles_many
    calls: list[int] = []

    def kill_sessions_then_replace(*args: Any, **kwargs: Any) -> int:
        calls.append(len(calls))
        if len(calls) == FAILING_WRITE + 1:
            _admin(_terminate(dbname))
        return original(*args, **kwargs)

    monkeypatch.setattr(warehouse, "replace_candles_many", kill_sessions_then_replace)
    result = dg.materialize([ASSETS["candles_1m"]], instance=instance, resources=res, tags=tags)
    assert result.success and _retried_errors(result) == []
    assert len(calls) == len(WEEK)  # one write a day, the sessions killed before the third
    assert _states(pg_dsn, standin) == ["new"] * len(WEEK)


def test_the_warehouse_going_away_mid_write_fails_clearly_leaves_no_part_and_a_rerun_is_exact(
    instance: dg.DagsterInstance, standin: ISSStandIn, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL stops accepting connections to the database and drops its sessions mid-write."""
    res, tags = _setup(instance, standin, pg_dsn)
    dbname = str(sa.make_url(pg_dsn).database)
    _break_write_number(
        monkeypatch,
        FAILING_WRITE,
        lambda: _admin(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false', _terminate(dbname)),
    )
    try:
        result = dg.materialize(
            [ASSETS["candles_1m"]], instance=instance, resources=res, tags=tags, raise_on_error=False
        )
    finally:
        _admin(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
    assert not result.success
    # The attempt that was writing names the write and says nothing of it was kept ...
    first = _retried_errors(result)[0]
    assert f"the warehouse postgresql+psycopg://postgres@127.0.0.1:5432/{dbname} failed" in first
    assert "while replacing SBER.TQBR 1m [2025-06-04 00:00:00, 2025-06-05 00:00:00)" in first
    assert "rolled back: the window keeps its previous rows" in first
    # ... and the step's retries could not even connect: the run fails saying so, naming the database.
    message = failure_message(result)
    assert f"cannot connect to the warehouse postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}" in message
    assert f'database "{dbname}" is not currently accepting connections' in message
    assert result.asset_materializations_for_node("candles_1m") == []
    # Written before the outage: whole and new. Being written: rolled back, whole and old. After: old.
    assert _states(pg_dsn, standin) == ["new", "new"] + ["old"] * (len(WEEK) - 2)

    monkeypatch.undo()
    assert dg.materialize([ASSETS["candles_1m"]], instance=instance, resources=res, tags=tags).success
    assert _states(pg_dsn, standin) == ["new"] * len(WEEK)


def test_a_write_that_breaks_half_way_is_rolled_back_whole(
    instance: dg.DagsterInstance, standin: ISSStandIn, warehouse_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails half-way through a partition's insert (a disk I/O error), every time."""
    res, tags = _setup(instance, standin, warehouse_dsn)
    written = {"rows": 0}

    def broken_rows(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        for row in rows:
            if written["rows"] == 100:
                raise sqlite3.OperationalError("disk I/O error")
            written["rows"] += 1
            yield row

    original_sqlite = candle_store._insert_rows_sqlite
    original_chunks = candle_store.binary_copy_chunks

    def sqlite_insert(conn: Any, rows: Iterable[tuple[Any, ...]]) -> None:
        original_sqlite(conn, broken_rows(rows))

    def pg_chunks(frame: Any, texts: Any) -> Iterator[bytes]:
        for number, chunk in enumerate(original_chunks(frame, texts, rows_per_chunk=100)):
            if number == 2:
                raise psycopg.OperationalError("could not write to file: No space left on device")
            yield chunk

    def break_from_now_on() -> None:
        monkeypatch.setattr(candle_store, "_insert_rows_sqlite", sqlite_insert)
        monkeypatch.setattr(candle_store, "binary_copy_chunks", pg_chunks)

    _break_write_number(monkeypatch, FAILING_WRITE, break_from_now_on)
    result = dg.materialize(
        [ASSETS["candles_1m"]], instance=instance, resources=res, tags=tags, raise_on_error=False
    )
    assert not result.success
    message = failure_message(result)
    # The first attempt broke on the third day. The step's retries broke on their first write; on
    # PostgreSQL that is again the third day: the first two already hold exactly the new candles,
    # and a replace that changes nothing writes nothing.
    first = _retried_errors(result)[0]
    assert "failed while replacing SBER.TQBR 1m [2025-06-04 00:00:00, 2025-06-05 00:00:00)" in first
    retried = "2025-06-04" if warehouse_dsn.startswith("postgresql") else "2025-06-02"
    day_after = (dt.date.fromisoformat(retried) + dt.timedelta(days=1)).isoformat()
    assert f"failed while replacing SBER.TQBR 1m [{retried} 00:00:00, {day_after} 00:00:00)" in message
    assert "disk I/O error" in message or "No space left on device" in message
    assert result.asset_materializations_for_node("candles_1m") == []
    assert _states(warehouse_dsn, standin) == ["new", "new"] + ["old"] * (len(WEEK) - 2)

    monkeypatch.undo()
    assert dg.materialize([ASSETS["candles_1m"]], instance=instance, resources=res, tags=tags).success
    assert _states(warehouse_dsn, standin) == ["new"] * len(WEEK)
