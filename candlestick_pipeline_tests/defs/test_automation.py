"""Automation against the stand-in: sensors and schedules evaluated, their runs executed in-process."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import dagster as dg
import pytest

from candlestick_pipeline.defs.automation.jobs import candle_jobs
from candlestick_pipeline.defs.automation.planning import MAX_PARTITIONS_PER_RUN, plan_update
from candlestick_pipeline.defs.automation.schedules import build_closed_periods_schedule
from candlestick_pipeline.defs.automation.sensors import freshness_sensor, new_securities_sensor
from candlestick_pipeline.defs.candles.assets import candle_assets
from candlestick_pipeline.defs.candles.checks import candle_checks
from candlestick_pipeline.defs.candles.partitions import SECURITIES_PARTITIONS, multi_key
from candlestick_pipeline.defs.candles.status import LoadState, partition_states
from candlestick_pipeline.defs.iss.client import ISSClient
from candlestick_pipeline.defs.iss.resource import ISSResource
from candlestick_pipeline.defs.securities.assets import securities
from candlestick_pipeline.defs.warehouse.resource import WarehouseResource
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import MOSCOW, TIMEFRAMES
from candlestick_pipeline.standin.server import ISSStandIn

SBER = SecurityKey("SBER", "TQBR")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def resources(standin: ISSStandIn, sqlite_dsn: str) -> dict[str, dg.ConfigurableResource]:
    return {
        "iss": ISSResource(base_url=standin.base_url, backoff_base_seconds=0.01),
        "warehouse": WarehouseResource(dsn=sqlite_dsn),
    }


@pytest.fixture
def defs(resources: dict[str, dg.ConfigurableResource]) -> dg.Definitions:
    return dg.Definitions(
        assets=[securities, *candle_assets], asset_checks=candle_checks, jobs=candle_jobs, resources=resources
    )


def _register(instance: dg.DagsterInstance, standin: ISSStandIn, dsn: str, secid: str) -> SecurityKey:
    with ISSClient(standin.base_url) as client:
        info = client.get_security(secid)
    engine = warehouse.create_warehouse_engine(dsn)
    warehouse.migrate(engine)
    warehouse.upsert_security(engine, info)
    engine.dispose()
    instance.add_dynamic_partitions(SECURITIES_PARTITIONS, [info.key.partition_key])
    return info.key


def _execute(defs: dg.Definitions, instance: dg.DagsterInstance, requests: list[dg.RunRequest]) -> None:
    for request in requests:
        assert request.job_name is not None
        result = defs.resolve_job_def(request.job_name).execute_in_process(
            instance=instance, tags=request.tags
        )
        assert result.success


def _ranges(requests: list[dg.RunRequest]) -> list[tuple[str | None, str, str]]:
    return [
        (
            r.job_name,
            r.tags["dagster/asset_partition_range_start"].split("|")[0],
            r.tags["dagster/asset_partition_range_end"].split("|")[0],
        )
        for r in requests
    ]


def _sensor(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, resources: dict, cursor: str | None = None
):  # type: ignore[no-untyped-def, type-arg]
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return sensor(context)


def test_a_new_security_fills_its_history_in(
    instance: dg.DagsterInstance,
    standin: ISSStandIn,
    sqlite_dsn: str,
    resources: dict[str, dg.ConfigurableResource],
    defs: dg.Definitions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CANDLESTICK_TIMEFRAMES", "1h,1d")
    monkeypatch.setenv("CANDLESTICK_EARLIEST_DATE", "2025-01-01")
    standin.set_now(dt.datetime(2025, 3, 20, 12, 0))
    _register(instance, standin, sqlite_dsn, "GAZP")

    result = _sensor(new_securities_sensor, instance, resources)
    assert isinstance(result, dg.SensorResult)
    assert _ranges(result.run_requests or []) == [
        ("candles_1h_job", "2025-01-01", "2025-03-01"),
        ("candles_1d_job", "2025-01-01", "2025-01-01"),
    ]
    _execute(defs, instance, result.run_requests or [])
    gazp = SecurityKey("GAZP", "TQBR")
    states = partition_states(instance, TIMEFRAMES["1h"], gazp, ["2025-01-01", "2025-02-01", "2025-03-01"])
    assert [s.state for s in states] == [LoadState.FINAL, LoadState.FINAL, LoadState.STALE]

    again = _sensor(new_securities_sensor, instance, resources, cursor=result.cursor)
    assert isinstance(again, dg.SkipReason)


def test_history_is_split_into_a_few_runs_and_skips_what_is_loaded(
    instance: dg.DagsterInstance,
    standin: ISSStandIn,
    sqlite_dsn: str,
    defs: dg.Definitions,
    resources: dict[str, dg.ConfigurableResource],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CANDLESTICK_TIMEFRAMES", "1m")
    monkeypatch.setenv("CANDLESTICK_EARLIEST_DATE", "2024-01-01")
    standin.set_now(dt.datetime(2025, 6, 10, 15, 0))
    key = _register(instance, standin, sqlite_dsn, "SBER")
    # One day already loaded by hand: the history leaves it out.
    pk = str(multi_key(key, "2024-03-01"))
    assert dg.materialize(candle_assets[:1], instance=instance, resources=resources, partition_key=pk).success
    result = _sensor(new_securities_sensor, instance, resources)
    ranges = _ranges(result.run_requests or [])
    assert ranges[0] == ("candles_1m_job", "2024-01-01", "2024-02-29")
    assert ranges[1][1] == "2024-03-02"
    assert ranges[-1][2] == "2025-06-10"
    days = (dt.date(2025, 6, 10) - dt.date(2024, 1, 1)).days  # 2024-03-01 excluded, today included
    assert len(ranges) <= days // MAX_PARTITIONS_PER_RUN[TIMEFRAMES["1m"].grain] + 2


def test_an_update_plans_each_security_from_its_own_start_and_skips_what_is_final(
    instance: dg.DagsterInstance,
    standin: ISSStandIn,
    sqlite_dsn: str,
    resources: dict[str, dg.ConfigurableResource],
) -> None:
    standin.set_now(dt.datetime(2025, 6, 10, 15, 0))
    sber = _register(instance, standin, sqlite_dsn, "SBER")
    gazp = _register(instance, standin, sqlite_dsn, "GAZP")
    one_day = TIMEFRAMES["1d"]
    pk = str(multi_key(sber, "2024-01-01"))  # 2024 is closed: final once loaded
    assert dg.materialize(
        candle_assets[3:4], instance=instance, resources=resources, partition_key=pk
    ).success
    now = dt.datetime(2025, 6, 10, 15, 0, tzinfo=MOSCOW)
    starts = {
        sber: dt.date(2022, 5, 1),
        gazp: dt.date(2024, 7, 1),
        SecurityKey("X", "TQBR"): dt.date(2026, 1, 1),
    }
    plans = plan_update(instance, one_day, starts, now)
    assert [(plan.security, plan.date_keys, plan.reason) for plan in plans] == [
        (sber, ("2022-01-01", "2023-01-01"), "update"),
        (sber, ("2025-01-01",), "update"),  # 2025 is open: loaded every time
        (gazp, ("2024-01-01", "2025-01-01"), "update"),  # from its own start, not SBER's
    ]
    assert plan_update(instance, one_day, {}, now) == []


def test_today_is_fresh_and_becomes_final_after_the_close(
    instance: dg.DagsterInstance,
    standin: ISSStandIn,
    sqlite_dsn: str,
    defs: dg.Definitions,
    resources: dict[str, dg.ConfigurableResource],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CANDLESTICK_TIMEFRAMES", "1m")
    standin.set_now(dt.datetime(2025, 6, 10, 15, 0))
    key = _register(instance, standin, sqlite_dsn, "SBER")

    first = _sensor(freshness_sensor, instance, resources)
    assert _ranges(first.run_requests or []) == [
        ("candles_1m_job", "2025-06-03", "2025-06-09"),
        ("candles_1m_job", "2025-06-10", "2025-06-10"),
    ]
    _execute(defs, instance, first.run_requests or [])
    today = partition_states(
        instance, TIMEFRAMES["1m"], key, ["2025-06-10"], now=dt.datetime(2025, 6, 10, 15, 5, tzinfo=MOSCOW)
    )
    assert today[0].state is LoadState.OPEN
    engine = warehouse.create_warehouse_engine(sqlite_dsn)
    day = (dt.datetime(2025, 6, 10), dt.datetime(2025, 6, 11))
    partial = warehouse.read_candles(engine, key, "1m", *day)
    assert partial.get_column("begin").max() == dt.datetime(2025, 6, 10, 15, 0)

    # The stand-in's day moves on past the close: the partial day is loaded again, in full, and is final.
    after_close = dt.datetime(2025, 6, 11, 1, 0)
    standin.set_now(after_close)
    second = _sensor(freshness_sensor, instance, resources)
    assert _ranges(second.run_requests or []) == [("candles_1m_job", "2025-06-10", "2025-06-10")]
    _execute(defs, instance, second.run_requests or [])
    full = warehouse.read_candles(engine, key, "1m", *day)
    engine.dispose()
    source = standin.market.candles_frame("SBER", "TQBR", 1, *day, after_close)
    assert full.select(source.columns).equals(source) and full.height > partial.height
    states = partition_states(instance, TIMEFRAMES["1m"], key, ["2025-06-10"])
    assert states[0].state is LoadState.FINAL

    # Nothing left to do at night: no run at all.
    assert isinstance(_sensor(freshness_sensor, instance, resources), dg.SkipReason)


def test_nightly_schedule_loads_exactly_the_new_periods(
    instance: dg.DagsterInstance,
    standin: ISSStandIn,
    sqlite_dsn: str,
    defs: dg.Definitions,
    resources: dict[str, dg.ConfigurableResource],
) -> None:
    key = _register(instance, standin, sqlite_dsn, "SBER")
    schedule = build_closed_periods_schedule(TIMEFRAMES["1m"])
    standin.set_now(dt.datetime(2025, 6, 10, 0, 30))
    tick = dt.datetime(2026, 11, 24, 0, 30, tzinfo=MOSCOW)
    with dg.build_schedule_context(
        instance=instance, resources=resources, scheduled_execution_time=tick
    ) as context:
        first = schedule.evaluate_tick(context).run_requests or []
    assert _ranges(first) == [("candles_1m_job", "2025-06-03", "2025-06-09")]
    _execute(defs, instance, first)

    standin.set_now(dt.datetime(2025, 6, 12, 0, 30))  # two days later
    tick += dt.timedelta(days=2)
    with dg.build_schedule_context(
        instance=instance, resources=resources, scheduled_execution_time=tick
    ) as context:
        second = schedule.evaluate_tick(context).run_requests or []
    assert _ranges(second) == [("candles_1m_job", "2025-06-10", "2025-06-11")]
    assert str(multi_key(key, "2025-06-10")) == second[0].tags["dagster/asset_partition_range_start"]


def test_a_killed_run_blocks_nothing_but_a_queued_one_is_not_doubled(
    instance: dg.DagsterInstance,
    standin: ISSStandIn,
    sqlite_dsn: str,
    resources: dict[str, dg.ConfigurableResource],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dagster._core.storage.dagster_run import DagsterRun

    monkeypatch.setenv("CANDLESTICK_TIMEFRAMES", "1m")
    standin.set_now(dt.datetime(2025, 6, 10, 1, 0))  # night: closed periods only
    _register(instance, standin, sqlite_dsn, "SBER")
    tags = {"candlestick/security": "SBER.TQBR"}
    # A run whose worker was SIGKILLed stays STARTED: it must not hold the partitions back.
    instance.add_run(DagsterRun(job_name="candles_1m_job", status=dg.DagsterRunStatus.STARTED, tags=tags))
    assert _ranges(_sensor(freshness_sensor, instance, resources).run_requests or []) == [
        ("candles_1m_job", "2025-06-03", "2025-06-09")
    ]
    instance.add_run(DagsterRun(job_name="candles_1m_job", status=dg.DagsterRunStatus.NOT_STARTED, tags=tags))
    assert isinstance(_sensor(freshness_sensor, instance, resources), dg.SkipReason)
