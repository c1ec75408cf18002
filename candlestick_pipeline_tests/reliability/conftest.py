"""Helpers of the reliability tests (GitHub issue 6): faults, kills, concurrency, bad input.

Every test compares the warehouse with the stand-in's source truth
(``standin.market.candles_frame``), so "nothing lost, nothing duplicated" is checked row by row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from candlestick_pipeline.defs.candles.assets import candle_assets
from candlestick_pipeline.defs.candles.partitions import multi_key, security_partition
from candlestick_pipeline.defs.iss.client import ISSClient
from candlestick_pipeline.defs.iss.resource import ISSResource
from candlestick_pipeline.defs.warehouse.resource import WarehouseResource
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.standin.server import ISSStandIn
from candlestick_pipeline_tests.conftest import REPO_ROOT
from candlestick_pipeline_tests.e2e.conftest import BIN, Project

NOW = dt.datetime(2025, 6, 10, 15, 0)
"""The stand-in's frozen clock (naive Moscow time): every day loaded below has closed."""
SBER = SecurityKey("SBER", "TQBR")
ASSETS = {a.key.to_user_string(): a for a in candle_assets}
MATERIALIZE = ("dagster", "asset", "materialize", "-m", "candlestick_pipeline.definitions")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A persistent (temporary-folder) Dagster instance, like the one a user has."""
    with dg.instance_for_test() as inst:
        yield inst


def iss_resource(standin: ISSStandIn, **overrides: object) -> ISSResource:
    """The ISS resource against the stand-in, with short backoffs so retries do not slow tests."""
    config: dict[str, object] = {
        "base_url": standin.base_url,
        "max_concurrency": 4,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.2,
    }
    config.update(overrides)
    return ISSResource(**config)  # type: ignore[arg-type]


def resources(standin: ISSStandIn, dsn: str, **iss: object) -> dict[str, object]:
    return {"iss": iss_resource(standin, **iss), "warehouse": WarehouseResource(dsn=dsn)}


def register(
    instance: dg.DagsterInstance, standin: ISSStandIn, dsn: str, secid: str = "SBER", board: str | None = None
) -> SecurityKey:
    """What ``candlestick create-security`` does: resolve at ISS, store the row, add the partition."""
    with ISSClient(standin.base_url) as client:
        info = client.get_security(secid, board)
    with engine_for(dsn) as engine:
        warehouse.upsert_security(engine, info)
    instance.add_dynamic_partitions(security_partition.name, [info.key.partition_key])
    return info.key


@contextlib.contextmanager
def engine_for(dsn: str) -> Iterator[warehouse.sa.Engine]:
    """A migrated warehouse engine, disposed on exit."""
    engine = warehouse.create_warehouse_engine(dsn)
    try:
        warehouse.migrate(engine)
        yield engine
    finally:
        engine.dispose()


def stored(dsn: str, key: SecurityKey, timeframe: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
    with engine_for(dsn) as engine:
        return warehouse.read_candles(engine, key, timeframe, start, end)


def source(
    standin: ISSStandIn,
    key: SecurityKey,
    interval: int,
    start: dt.datetime,
    end: dt.datetime,
    revision: int | None = None,
) -> pl.DataFrame:
    """The source truth at :data:`NOW` (``revision``: as ISS serves it after that correction)."""
    return standin.market.candles_frame(key.secid, key.board, interval, start, end, NOW, revision=revision)


def days(first: dt.date, count: int) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range(count)]


def day_window(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time())
    return start, start + dt.timedelta(days=1)


def month_window(first_day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(first_day, dt.time())
    following = (first_day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return start, dt.datetime.combine(following, dt.time())


def range_tags(key: SecurityKey, first: str, last: str) -> dict[str, str]:
    """Tags of ONE run over a partition range (what a single-run backfill or --partition-range makes)."""
    return {
        "dagster/asset_partition_range_start": str(multi_key(key, first)),
        "dagster/asset_partition_range_end": str(multi_key(key, last)),
    }


def assert_exact(stored_frame: pl.DataFrame, source_frame: pl.DataFrame) -> int:
    """The warehouse holds exactly the source rows (no row lost, none duplicated, none changed)."""
    assert stored_frame.height == source_frame.height
    assert stored_frame.select(source_frame.columns).equals(source_frame)
    return stored_frame.height


def preload(dsn: str, standin: ISSStandIn, key: SecurityKey, day_list: list[dt.date], revision: int) -> None:
    """Write the source rows of ``revision`` for each day straight into the warehouse (old data)."""
    with engine_for(dsn) as engine:
        for day in day_list:
            window = day_window(day)
            frame = source(standin, key, 1, *window, revision=revision)
            warehouse.replace_candles(engine, key, "1m", *window, frame)


def classify_days(
    dsn: str, standin: ISSStandIn, key: SecurityKey, day_list: list[dt.date], old: int, new: int
) -> dict[dt.date, str]:
    """Per day: 'old' or 'new' when the warehouse holds exactly that revision's rows, else 'MIXED'."""
    expected = {
        day: (source(standin, key, 1, *day_window(day), old), source(standin, key, 1, *day_window(day), new))
        for day in day_list
    }
    start, end = day_window(day_list[0])[0], day_window(day_list[-1])[1]
    frame = stored(dsn, key, "1m", start, end)
    result: dict[dt.date, str] = {}
    for day in day_list:
        lo, hi = day_window(day)
        rows = frame.filter((pl.col("begin") >= lo) & (pl.col("begin") < hi))
        old_frame, new_frame = expected[day]
        if rows.equals(old_frame):
            result[day] = "old"
        elif rows.equals(new_frame):
            result[day] = "new"
        else:
            result[day] = "MIXED"
    return result


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The error message of the run's first failed step (with its causes)."""
    events = result.get_step_failure_events()
    assert events, "the run was expected to fail"
    error = events[0].step_failure_data.error
    assert error is not None
    parts = [error.message]
    cause = error.cause
    while cause is not None:
        parts.append(cause.message)
        cause = cause.cause
    return "\n".join(parts)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# Real processes


@pytest.fixture
def project(
    tmp_path: Path, standin: ISSStandIn, warehouse_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> Project:
    """A DAGSTER_HOME with the repo's dagster.yaml (SQLite storage) and the parametrized warehouse.

    ``$DAGSTER_HOME`` is set to it in this process too: the dagster.yaml's storage names its folder so.
    """
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    standin.set_now(NOW)
    return Project(home, warehouse_dsn, standin)


def register_in(project: Project, secid: str = "SBER", board: str | None = None) -> SecurityKey:
    """``candlestick create-security`` without paying for a process start."""
    with dg.DagsterInstance.from_config(str(project.home)) as inst:
        return register(inst, project.standin, project.warehouse_dsn, secid, board)


def start(project: Project, *args: str) -> subprocess.Popen[str]:
    """Start a console script in its own process group (so a kill reaches Dagster's step processes)."""
    return subprocess.Popen(
        [str(BIN / args[0]), *args[1:]],
        cwd=REPO_ROOT,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process and every process it started (its own process group), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise
    return proc.returncode, out, err


class ISSGate:
    """Holds every candle request at the stand-in until :meth:`release`, to line concurrent runs up.

    Lets a test start two processes, wait until both have requests in flight, then let them go at
    the same moment, so that their fetches and writes of the same partitions really overlap.
    """

    def __init__(self, standin: ISSStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
        self._open = threading.Event()
        original = standin._sleep_latency

        def gated(route: Any, path: str) -> None:
            if route.endpoint == "candles":
                self._open.wait(120)
            original(route, path)

        monkeypatch.setattr(standin, "_sleep_latency", gated)

    def release(self) -> None:
        self._open.set()
