"""Bad input: every case is a clear error (exit code 2 from ``candlestick``, a failed command from
Dagster's CLI) and writes nothing: no warehouse row, no candle, no Dagster partition, no run.

The ``candlestick`` commands run in-process through click's runner (the real command, parsing
included); the Dagster CLI and the unreachable-warehouse cases run as real processes, so that
everything a user would see is checked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import pytest
from click.testing import CliRunner, Result

from candlestick_pipeline.cli import main
from candlestick_pipeline.defs.candles.partitions import SECURITIES_PARTITIONS
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.standin.server import ISSStandIn
from candlestick_pipeline_tests.e2e.conftest import Project
from candlestick_pipeline_tests.reliability.conftest import (
    MATERIALIZE,
    SBER,
    assert_exact,
    day_window,
    days,
    engine_for,
    register_in,
    source,
    stored,
)

BAD_DSN = "postgresql+psycopg://postgres:secret@127.0.0.1:1/x"


@dataclass
class Cli:
    project: Project

    def __call__(self, *args: str) -> Result:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.project.home))

    def nothing_written(self) -> None:
        with engine_for(self.project.warehouse_dsn) as engine:
            assert warehouse.list_securities(engine) == []
            assert warehouse.count_candles(engine) == 0
        with self.instance() as instance:
            assert instance.get_dynamic_partitions(SECURITIES_PARTITIONS) == []
            assert instance.get_runs() == []


@pytest.fixture
def cli(project: Project, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    for name, value in project.env.items():
        if name.startswith(("CANDLESTICK_", "DAGSTER_", "ISS_")):
            monkeypatch.setenv(name, value)
    yield Cli(project)


def _error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.mark.parametrize("warehouse_dsn", ["sqlite"], indirect=True)
def test_create_security_refuses_what_iss_does_not_know_and_keys_that_would_break(
    cli: Cli, standin: ISSStandIn
) -> None:
    assert "ISS has no security 'NOSUCH'" in _error(cli("create-security", "NOSUCH"))
    wrong_board = _error(cli("create-security", "SBER", "TQOB"))
    assert "security 'SBER' does not trade on board 'TQOB'; ISS lists it on: TQBR, SMAL" in wrong_board
    assert "does not trade on board 'SMAL'" not in _error(cli("create-security", "SBER", "XXXX"))
    asked = standin.stats.snapshot()["by_endpoint"]["securities"]
    # Characters that would break a partition key (| , . blanks) never reach ISS.
    for secid in ("SB|R", "SBER,X", "SBER.TQBR", "SB R", "", "ÄBC", "X" * 37):
        assert f"invalid secid {secid!r}" in _error(cli("create-security", secid)), secid
    for board in ("TQ|BR", "TQ.BR", "T"):
        assert f"invalid board {board!r}" in _error(cli("create-security", "SBER", board)), board
    assert standin.stats.snapshot()["by_endpoint"]["securities"] == asked
    cli.nothing_written()

    # Blanks are stripped and a lower-case secid is retried upper-case: " sber " is SBER.TQBR.
    assert "added SBER.TQBR" in cli("create-security", " sber ").output
    assert "added SBER.SMAL" in cli("create-security", "Sber", " smal ").output
    assert "added SiZ5.RFUD" in cli("create-security", "siz5").output  # ISS's spelling is kept
    again = cli("create-security", "SBER").output  # again: no duplicate, the row refreshed
    assert "refreshed (registered already) SBER.TQBR" in again and "no longer traded" not in again
    with engine_for(cli.project.warehouse_dsn) as engine:
        keys = [info.key.partition_key for info in warehouse.list_securities(engine)]
    with cli.instance() as instance:
        partitions = sorted(instance.get_dynamic_partitions(SECURITIES_PARTITIONS))
    assert keys == partitions == ["SBER.SMAL", "SBER.TQBR", "SiZ5.RFUD"]

    # A security that no longer trades is registered (its history loads), with a note saying so.
    standin.set_now(dt.datetime(2026, 1, 12, 12, 0))  # SiZ5 expired on 2025-12-18
    expired = cli("create-security", "SiZ5")
    assert expired.exit_code == 0 and "refreshed (registered already) SiZ5.RFUD" in expired.stdout
    assert "note: ISS lists SiZ5 as no longer traded on RFUD (listed till 2025-12-18)" in expired.stderr


@pytest.mark.parametrize("warehouse_dsn", ["sqlite"], indirect=True)
def test_load_refuses_bad_ranges_keys_and_timeframes_without_writing(cli: Cli, standin: ISSStandIn) -> None:
    register_in(cli.project)
    with engine_for(cli.project.warehouse_dsn) as engine:
        before = warehouse.list_securities(engine)
    load = ("load", "SBER.TQBR", "-t", "1m")
    cases = {
        "from 2025-06-10 is after till 2025-06-01": cli(
            *load, "--from", "2025-06-10", "--till", "2025-06-01"
        ),
        "unknown timeframe '5m'": cli(
            "load", "SBER.TQBR", "-t", "5m", "--from", "2025-06-02", "--till", "2025-06-02"
        ),
        "--from '2025-13-01' is not a YYYY-MM-DD date": cli(
            *load, "--from", "2025-13-01", "--till", "2025-06-02"
        ),
        "--till '02.06.2025' is not a YYYY-MM-DD date": cli(
            *load, "--from", "2025-06-01", "--till", "02.06.2025"
        ),
        "no 1m partitions between 2021-06-01 and 2021-06-05": cli(
            *load, "--from", "2021-06-01", "--till", "2021-06-05"
        ),
        "GAZP.TQBR is not registered": cli(
            "load", "GAZP.TQBR", "-t", "1m", "--from", "2025-06-02", "--till", "2025-06-02"
        ),
        "invalid security partition key 'SBER'": cli(
            "load", "SBER", "-t", "1m", "--from", "2025-06-02", "--till", "2025-06-02"
        ),
        "invalid secid 'SB|R'": cli(
            "load", "SB|R.TQBR", "-t", "1m", "--from", "2025-06-02", "--till", "2025-06-02"
        ),
    }
    for expected, result in cases.items():
        assert expected in _error(result), (expected, result.output)
    assert standin.candle_requests() == 0
    with engine_for(cli.project.warehouse_dsn) as engine:
        assert warehouse.list_securities(engine) == before
        assert warehouse.count_candles(engine) == 0
    with cli.instance() as instance:
        assert instance.get_runs() == []
        assert instance.get_dynamic_partitions(SECURITIES_PARTITIONS) == ["SBER.TQBR"]


@pytest.mark.parametrize("warehouse_dsn", ["sqlite"], indirect=True)
def test_days_before_iss_history_load_as_empty_final_partitions(cli: Cli, standin: ISSStandIn) -> None:
    """Decision: a day before the security's ISS history is a day without candles, not an error.

    ISS answers such a request like a holiday: an empty page. The partition is materialized with
    0 rows and ``final``, so it is never fetched again; the days after the history start load in
    the same run. (Before CANDLESTICK_PARTITIONS_START there are no partitions at all: an error.)
    """
    register_in(cli.project)
    span = days(dt.date(2022, 12, 30), 6)  # SBER's stand-in history starts on Tue 2023-01-03
    out = cli("load", "SBER.TQBR", "-t", "1m", "--from", "2022-12-30", "--till", "2023-01-04").output
    assert "6 partition(s), 0 already loaded, 6 to load in 1 run(s)" in out and "ok, run" in out
    rows = {}
    for day in span:
        rows[day] = assert_exact(
            stored(cli.project.warehouse_dsn, SBER, "1m", *day_window(day)),
            source(standin, SBER, 1, *day_window(day)),
        )
    assert [rows[day] for day in span[:4]] == [0, 0, 0, 0] and rows[span[4]] > 0 and rows[span[5]] > 0
    again = cli("load", "SBER.TQBR", "-t", "1m", "--from", "2022-12-30", "--till", "2023-01-04").output
    assert "6 already loaded, 0 to load" in again
    # Clipped to the first partition (2022-01-01): the days before it are not asked for.
    assert (
        "2 partition(s), 0 already loaded, 2 to load"
        in cli("load", "SBER.TQBR", "-t", "1m", "--from", "2021-12-30", "--till", "2022-01-02").output
    )


@pytest.mark.e2e
@pytest.mark.parametrize("warehouse_dsn", ["sqlite"], indirect=True)
def test_malformed_partition_keys_given_to_the_dagster_cli_write_nothing(
    project: Project, standin: ISSStandIn
) -> None:
    register_in(project)
    for asset, key, expected in (
        ("candles_1m", "2025-06-02|sber.tqbr", "sber.tqbr"),  # keys are exact: SECID as ISS spells it
        ("candles_1h", "2025-06-15|SBER.TQBR", "2025-06-15"),  # not the first day of a month
        ("candles_1m", "2021-12-31|SBER.TQBR", "2021-12-31"),  # before the first partition
    ):
        proc = project.run(*MATERIALIZE, "--select", asset, "--partition", key, check=False)
        assert proc.returncode != 0, key
        assert expected in proc.stderr and "Partition" in proc.stderr, proc.stderr[-2000:]
    assert standin.candle_requests() == 0
    with engine_for(project.warehouse_dsn) as engine:
        assert warehouse.count_candles(engine) == 0


@pytest.mark.e2e
@pytest.mark.parametrize("warehouse_dsn", ["sqlite"], indirect=True)
def test_a_warehouse_that_does_not_connect_is_a_clear_error_without_the_password(
    project: Project, standin: ISSStandIn
) -> None:
    project.warehouse_dsn = BAD_DSN
    created = project.run("candlestick", "create-security", "SBER", check=False)
    assert created.returncode == 2
    redacted = "postgresql+psycopg://postgres:***@127.0.0.1:1/x"
    assert f"cannot connect to the warehouse {redacted}" in created.stderr
    assert "Connection refused" in created.stderr or "connection failed" in created.stderr
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        assert instance.get_dynamic_partitions(SECURITIES_PARTITIONS) == []
        instance.add_dynamic_partitions(SECURITIES_PARTITIONS, ["SBER.TQBR"])
    loaded = project.run(
        "candlestick",
        "load",
        "SBER.TQBR",
        "-t",
        "1m",
        "--from",
        "2025-06-02",
        "--till",
        "2025-06-02",
        check=False,
    )
    assert loaded.returncode == 2 and "1 run(s) failed" in loaded.stderr
    # The run's own log (printed by the command) names the warehouse, password redacted.
    assert f"cannot connect to the warehouse {redacted}" in loaded.stderr
    for proc in (created, loaded):
        assert "secret" not in proc.stdout + proc.stderr
    assert standin.candle_requests() == 0


@pytest.mark.parametrize("warehouse_dsn", ["sqlite"], indirect=True)
def test_update_candles_skips_a_security_it_cannot_plan_and_says_so(cli: Cli, standin: ISSStandIn) -> None:
    sber = register_in(cli.project)
    gazp = register_in(cli.project, "GAZP")
    with engine_for(cli.project.warehouse_dsn) as engine:
        warehouse.delete_security(engine, gazp)  # its Dagster partition stays: a half-registered security
    result = cli("update-candles", "--dry-run", "-t", "1d")
    assert result.exit_code == 2
    assert f"{gazp}: no warehouse row; run `candlestick create-security` again" in result.stderr
    assert f"{sber} 1d: from " in result.stdout and f"{gazp} 1d" not in result.stdout
    assert "1 run(s) or securities failed" in result.stderr
    with cli.instance() as instance:
        assert instance.get_runs() == []  # a dry run executes nothing
