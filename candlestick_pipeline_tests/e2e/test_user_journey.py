"""A user's first hour, through real processes: the project CLI and Dagster's CLI.

Runs once on the embedded default (SQLite everywhere) and once in the production shape
(Dagster storage and warehouse in PostgreSQL), against the ISS stand-in over HTTP.
"""

from __future__ import annotations

import datetime as dt

import pytest

from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline_tests.conftest import pg_sessions_opened
from candlestick_pipeline_tests.e2e.conftest import Project

NOW = dt.datetime(2025, 6, 10, 15, 0)
SBER = SecurityKey("SBER", "TQBR")
MATERIALIZE = ("dagster", "asset", "materialize", "-m", "candlestick_pipeline.definitions")

pytestmark = pytest.mark.e2e


def _assert_warehouse_equals_source(
    project: Project, key: SecurityKey, timeframe: str, interval: int, start: dt.datetime, end: dt.datetime
) -> int:
    engine = warehouse.create_warehouse_engine(project.warehouse_dsn)
    try:
        stored = warehouse.read_candles(engine, key, timeframe, start, end)
    finally:
        engine.dispose()
    source = project.standin.market.candles_frame(key.secid, key.board, interval, start, end, NOW)
    assert stored.height == source.height > 0
    assert stored.select(source.columns).equals(source)
    return stored.height


def _requested_dates(project: Project) -> set[str]:
    """Every day that some candle request's ``from``/``till`` (both inclusive) covered."""
    requested: set[str] = set()
    for entry in project.standin.stats.snapshot()["candle_requests_log"]:
        day, till = dt.date.fromisoformat(entry["from"]), dt.date.fromisoformat(entry["till"])
        while day <= till:
            requested.add(day.isoformat())
            day += dt.timedelta(days=1)
    return requested


@pytest.fixture(params=["sqlite_project", "postgres_project"])
def project(request: pytest.FixtureRequest) -> Project:
    """A project on SQLite or on PostgreSQL, its stand-in's clock at NOW."""
    chosen: Project = request.getfixturevalue(request.param)
    chosen.standin.set_now(NOW)
    return chosen


def test_add_securities_backfill_and_reload_only_what_is_missing(project: Project) -> None:

    unknown = project.run("candlestick", "create-security", "NOSUCH", check=False)
    assert unknown.returncode == 2 and "ISS has no security 'NOSUCH'" in unknown.stderr
    wrong_board = project.run("candlestick", "create-security", "SBER", "TQOB", check=False)
    assert wrong_board.returncode == 2 and "TQBR" in wrong_board.stderr
    assert project.run("candlestick", "list-securities").stdout == ""

    project.run("candlestick", "create-security", "SU26238RMFS4", "TQOB")
    project.run("candlestick", "create-security", "SBER")
    listing = project.run("candlestick", "list-securities").stdout
    assert "SBER.TQBR" in listing and "SU26238RMFS4.TQOB" in listing and "NOSUCH" not in listing

    # A month of hourly candles and a week of minute candles, through Dagster's own CLI.
    project.run(*MATERIALIZE, "--select", "candles_1h", "--partition", "2025-05-01|SBER.TQBR")
    week = "2025-06-02|SBER.TQBR...2025-06-08|SBER.TQBR"
    project.run(*MATERIALIZE, "--select", "candles_1m", "--partition-range", week)
    _assert_warehouse_equals_source(project, SBER, "1h", 60, dt.datetime(2025, 5, 1), dt.datetime(2025, 6, 1))
    _assert_warehouse_equals_source(project, SBER, "1m", 1, dt.datetime(2025, 6, 2), dt.datetime(2025, 6, 9))

    # A partly loaded range: only the missing days are fetched.
    project.standin.reset_stats()
    out = project.run(
        "candlestick", "load", "SBER.TQBR", "-t", "1m", "--from", "2025-05-30", "--till", "2025-06-09"
    )
    assert "11 partition(s), 7 already loaded, 4 to load in 2 run(s)" in out.stdout
    # By default the runs print their INFO lines and above, not a DEBUG line for every event.
    assert "loading 3 partition(s) of SBER.TQBR 1m: 2025-05-30 .. 2025-06-01" in out.stderr
    assert " - DEBUG - " not in out.stderr
    assert _requested_dates(project) == {"2025-05-30", "2025-05-31", "2025-06-01", "2025-06-09"}
    _assert_warehouse_equals_source(
        project, SBER, "1m", 1, dt.datetime(2025, 5, 30), dt.datetime(2025, 6, 10)
    )

    # A fully loaded range makes no candle request at all.
    project.standin.reset_stats()
    out = project.run(
        "candlestick", "load", "SBER.TQBR", "-t", "1m", "--from", "2025-05-30", "--till", "2025-06-09"
    )
    assert "0 to load" in out.stdout
    assert project.standin.candle_requests() == 0

    # The seed's bond was added by the seed's command and loads too.
    project.run(*MATERIALIZE, "--select", "candles_1d", "--partition", "2025-01-01|SU26238RMFS4.TQOB")
    bond = SecurityKey("SU26238RMFS4", "TQOB")
    _assert_warehouse_equals_source(project, bond, "1d", 24, dt.datetime(2025, 1, 1), dt.datetime(2026, 1, 1))


def test_bad_partition_keys_on_the_dagster_cli_write_nothing(sqlite_project: Project) -> None:
    project = sqlite_project
    project.standin.set_now(NOW)
    project.run("candlestick", "create-security", "SBER")
    for args in (
        ("--partition", "SBER.TQBR|2025-06-02"),
        ("--partition", "2025-06-02|NOPE.TQBR"),
        ("--partition-range", "2025-06-02|SBER.TQBR...2025-06-03|GAZP.TQBR"),
    ):
        proc = project.run(*MATERIALIZE, "--select", "candles_1m", *args, check=False)
        assert proc.returncode != 0, args
        assert "Partition" in proc.stderr or "partition" in proc.stderr
    assert project.standin.candle_requests() == 0
    engine = warehouse.create_warehouse_engine(project.warehouse_dsn)
    try:
        assert warehouse.count_candles(engine) == 0
    finally:
        engine.dispose()


def test_several_securities_load_in_parallel_runs_that_share_the_iss_concurrency(project: Project) -> None:
    keys = ("SBER.TQBR", "GAZP.TQBR", "SBER.SMAL")
    for key in keys:
        project.run("candlestick", "create-security", *key.split("."))
    project.extra_env["ISS_MAX_CONCURRENCY"] = "3"
    project.standin.set_faults(latency_ms=50)  # so that the requests of the runs overlap in time
    project.standin.reset_stats()
    dates = ("--from", "2025-05-19", "--till", "2025-06-08")
    dagster_db = project.extra_env.get("DAGSTER_PG_URL", "").rpartition("/")[2]
    sessions_before = pg_sessions_opened(dagster_db) if dagster_db else 0
    out = project.run("candlestick", "load", *keys, "-t", "1m", *dates, "--log-level", "debug")
    if dagster_db:
        # Each process holds its connections to Dagster's storage for all its runs: 769 sessions for
        # these 3 runs of 21 partitions when Dagster opened one per storage call, 37 now.
        assert pg_sessions_opened(dagster_db) - sessions_before < 100
    # One run per security, in three worker processes sharing ISS_MAX_CONCURRENCY slots: they ran at
    # the same time, and ISS never saw more than ISS_MAX_CONCURRENCY requests at once.
    assert out.stdout.count(": ok, run ") == 3
    assert out.stderr.count("ASSET_MATERIALIZATION - Materialized value candles_1m.") == 3 * 21
    assert 2 <= project.standin.stats.snapshot()["max_in_flight"] <= 3
    for key in keys:
        security = SecurityKey.parse(key)
        _assert_warehouse_equals_source(
            project, security, "1m", 1, dt.datetime(2025, 5, 19), dt.datetime(2025, 6, 9)
        )
    # Each run fetched its 21 days in one stream (ISS concurrency 1 each): 2 pages a day or less.
    assert project.standin.candle_requests() <= 3 * (21 * 2 + 1)

    # Asked for the same again with --parallel 1: nothing is left to load, nothing is fetched.
    project.standin.reset_stats()
    again = project.run("candlestick", "load", *keys, "-t", "1m", *dates, "-j", "1")
    assert again.stdout.count("21 already loaded, 0 to load") == 3
    assert project.standin.candle_requests() == 0


def test_update_candles_brings_every_security_up_to_date_and_then_only_the_open_periods(
    project: Project,
) -> None:
    """The old service's ``update-candles``: every registered security, every enabled timeframe,
    from where its history starts to today; run again, only the periods still open are fetched."""
    project.extra_env.update(CANDLESTICK_TIMEFRAMES="1d,1h", CANDLESTICK_EARLIEST_DATE="2025-04-01")
    project.run("candlestick", "create-security", "SBER")
    project.run("candlestick", "create-security", "SU26238RMFS4", "TQOB")
    bond = SecurityKey("SU26238RMFS4", "TQOB")

    project.standin.reset_stats()
    planned = project.run("candlestick", "update-candles", "--dry-run").stdout
    assert "SBER.TQBR 1h: from 2025-04-01, 3 partition(s) to load in 1 run(s)" in planned
    assert "SU26238RMFS4.TQOB 1d: from 2025-04-01, 1 partition(s) to load in 1 run(s)" in planned
    assert project.standin.candle_requests() == 0

    out = project.run("candlestick", "update-candles").stdout
    assert out.count(": ok, run ") == 4  # 2 securities x 2 timeframes, one run each
    june = dt.datetime(2025, 6, 11)
    _assert_warehouse_equals_source(project, SBER, "1h", 60, dt.datetime(2025, 4, 1), june)
    _assert_warehouse_equals_source(project, bond, "1h", 60, dt.datetime(2025, 4, 1), june)
    _assert_warehouse_equals_source(project, bond, "1d", 24, dt.datetime(2025, 1, 1), june)

    # Again: what is final is not fetched; June (1h) and 2025 (1d) are still open, so they are.
    again = project.run("candlestick", "update-candles", "SBER.TQBR", "-t", "1h").stdout
    assert "SBER.TQBR 1h: from 2025-04-01, 1 partition(s) to load in 1 run(s)" in again
    assert "SBER.TQBR 2025-06-01 .. 2025-06-01 (1 partition(s)): ok" in again
    assert "SU26238RMFS4" not in again and "1h: 0 of 1 securities up to date" in again

    unknown = project.run("candlestick", "update-candles", "GAZP.TQBR", check=False)
    assert unknown.returncode == 2 and "not registered: GAZP.TQBR" in unknown.stderr
