"""Candle assets in-process (``dg.materialize``) against the ISS stand-in, on both warehouses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import dagster as dg
import polars as pl
import pytest

from candlestick_pipeline.defs.candles.assets import candle_assets
from candlestick_pipeline.defs.candles.checks import candle_checks
from candlestick_pipeline.defs.candles.partitions import multi_key, security_partition
from candlestick_pipeline.defs.candles.status import LoadState, partition_states
from candlestick_pipeline.defs.iss.client import ISSClient
from candlestick_pipeline.defs.iss.resource import ISSResource
from candlestick_pipeline.defs.warehouse.resource import WarehouseResource
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import TIMEFRAMES
from candlestick_pipeline.standin.server import ISSStandIn

SBER = SecurityKey("SBER", "TQBR")
NOW = dt.datetime(2025, 6, 10, 15, 0)
ASSETS = {a.key.to_user_string(): a for a in candle_assets}
CHECKS = {next(iter(c.check_keys)).asset_key.to_user_string(): c for c in candle_checks}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def resources(standin: ISSStandIn, warehouse_dsn: str) -> dict[str, object]:
    standin.set_now(NOW)
    return {
        "iss": ISSResource(base_url=standin.base_url, max_concurrency=4, backoff_base_seconds=0.01),
        "warehouse": WarehouseResource(dsn=warehouse_dsn),
    }


def _register(
    instance: dg.DagsterInstance, standin: ISSStandIn, dsn: str, secid: str, board: str | None
) -> SecurityKey:
    with ISSClient(standin.base_url) as client:
        info = client.get_security(secid, board)
    engine = warehouse.create_warehouse_engine(dsn)
    warehouse.migrate(engine)
    warehouse.upsert_security(engine, info)
    engine.dispose()
    instance.add_dynamic_partitions(security_partition.name, [info.key.partition_key])
    return info.key


def _stored(dsn: str, key: SecurityKey, tf: str, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
    engine = warehouse.create_warehouse_engine(dsn)
    try:
        return warehouse.read_candles(engine, key, tf, start, end)
    finally:
        engine.dispose()


def _source(
    standin: ISSStandIn, key: SecurityKey, interval: int, start: dt.datetime, end: dt.datetime
) -> pl.DataFrame:
    return standin.market.candles_frame(key.secid, key.board, interval, start, end, NOW)


def _range_tags(key: SecurityKey, first: str, last: str) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": str(multi_key(key, first)),
        "dagster/asset_partition_range_end": str(multi_key(key, last)),
    }


def _assert_same(stored: pl.DataFrame, source: pl.DataFrame) -> None:
    assert stored.height == source.height > 0
    assert stored.select(source.columns).equals(source)


def test_one_day_of_minutes_equals_the_source(
    instance: dg.DagsterInstance, standin: ISSStandIn, warehouse_dsn: str, resources: dict[str, object]
) -> None:
    key = _register(instance, standin, warehouse_dsn, "SBER", None)
    result = dg.materialize(
        [ASSETS["candles_1m"], CHECKS["candles_1m"]],
        instance=instance,
        resources=resources,
        partition_key=str(multi_key(key, "2025-06-02")),
    )
    assert result.success
    day = (dt.datetime(2025, 6, 2), dt.datetime(2025, 6, 3))
    _assert_same(_stored(warehouse_dsn, key, "1m", *day), _source(standin, key, 1, *day))
    [mat] = result.asset_materializations_for_node("candles_1m")
    assert mat.partition == "2025-06-02|SBER.TQBR"
    meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    assert meta["rows"] == _source(standin, key, 1, *day).height
    assert meta["first_begin"].startswith("2025-06-02 ")
    assert meta["iss_pages"] >= 2 and meta["final"] is True
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_a_range_is_one_run_and_today_is_not_final(
    instance: dg.DagsterInstance, standin: ISSStandIn, warehouse_dsn: str, resources: dict[str, object]
) -> None:
    key = _register(instance, standin, warehouse_dsn, "SBER", None)
    result = dg.materialize(
        [ASSETS["candles_1h"]],
        instance=instance,
        resources=resources,
        tags=_range_tags(key, "2025-01-01", "2025-06-01"),
    )
    assert result.success
    mats = result.asset_materializations_for_node("candles_1h")
    assert sorted(m.partition for m in mats) == [str(multi_key(key, f"2025-{m:02d}-01")) for m in range(1, 7)]
    finals = {m.partition: m.metadata["final"].value for m in mats}  # type: ignore[union-attr]
    assert finals[str(multi_key(key, "2025-06-01"))] is False  # June was still open at the stand-in's 15:00
    assert finals[str(multi_key(key, "2025-05-01"))] is True
    window = (dt.datetime(2025, 1, 1), dt.datetime(2025, 7, 1))
    _assert_same(_stored(warehouse_dsn, key, "1h", *window), _source(standin, key, 60, *window))
    states = {
        s.date_key: s.state
        for s in partition_states(instance, TIMEFRAMES["1h"], key, ["2025-05-01", "2025-06-01", "2025-07-01"])
    }
    assert states == {
        "2025-05-01": LoadState.FINAL,
        "2025-06-01": LoadState.STALE,
        "2025-07-01": LoadState.MISSING,
    }


def test_rerun_and_correction_replace_without_duplicates(
    instance: dg.DagsterInstance, standin: ISSStandIn, warehouse_dsn: str, resources: dict[str, object]
) -> None:
    key = _register(instance, standin, warehouse_dsn, "SU26238RMFS4", "TQOB")
    pk = str(multi_key(key, "2025-06-03"))
    day = (dt.datetime(2025, 6, 3), dt.datetime(2025, 6, 4))
    for _ in range(2):
        assert dg.materialize(
            [ASSETS["candles_1m"]], instance=instance, resources=resources, partition_key=pk
        ).success
    _assert_same(_stored(warehouse_dsn, key, "1m", *day), _source(standin, key, 1, *day))
    standin.set_revision(1)
    assert dg.materialize(
        [ASSETS["candles_1m"]], instance=instance, resources=resources, partition_key=pk
    ).success
    _assert_same(_stored(warehouse_dsn, key, "1m", *day), _source(standin, key, 1, *day))


def test_unregistered_security_and_cross_security_range_fail_clearly(
    instance: dg.DagsterInstance, standin: ISSStandIn, warehouse_dsn: str, resources: dict[str, object]
) -> None:
    instance.add_dynamic_partitions(security_partition.name, ["GAZP.TQBR"])
    result = dg.materialize(
        [ASSETS["candles_1d"]],
        instance=instance,
        resources=resources,
        partition_key="2025-01-01|GAZP.TQBR",
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and "GAZP.TQBR is not registered" in failure.message
    assert standin.candle_requests() == 0


def test_broken_source_candle_fails_its_check(
    instance: dg.DagsterInstance, standin: ISSStandIn, warehouse_dsn: str, resources: dict[str, object]
) -> None:
    key = _register(instance, standin, warehouse_dsn, "GAZP", "TQBR")
    standin.break_candle("GAZP", "TQBR", dt.datetime(2025, 6, 4, 11, 0))
    result = dg.materialize(
        [ASSETS["candles_1m"], CHECKS["candles_1m"]],
        instance=instance,
        resources=resources,
        partition_key=str(multi_key(key, "2025-06-04")),
    )
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["ohlc_sanity"].passed
    assert "2025-06-04 11:00:00" in str(evaluations["ohlc_sanity"].metadata["examples"].value)
    assert evaluations["unique_begin"].passed and evaluations["inside_partition"].passed


def test_partition_metadata_fast_path(
    instance: dg.DagsterInstance,
    standin: ISSStandIn,
    warehouse_dsn: str,
    resources: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per-partition metadata bypasses Dagster's O(range) ``add_asset_metadata`` and still arrives."""

    def _slow_path(*args: object, **kwargs: object) -> None:
        raise AssertionError("add_asset_metadata was called: the fast path no longer works")

    monkeypatch.setattr(dg.AssetExecutionContext, "add_asset_metadata", _slow_path)
    key = _register(instance, standin, warehouse_dsn, "SBER", None)
    result = dg.materialize(
        [ASSETS["candles_1d"]],
        instance=instance,
        resources=resources,
        tags=_range_tags(key, "2024-01-01", "2025-01-01"),
    )
    assert result.success
    mats = {m.partition: m.metadata for m in result.asset_materializations_for_node("candles_1d")}
    assert set(mats) == {str(multi_key(key, "2024-01-01")), str(multi_key(key, "2025-01-01"))}
    assert mats[str(multi_key(key, "2024-01-01"))]["final"].value is True  # type: ignore[attr-defined]
    assert mats[str(multi_key(key, "2025-01-01"))]["final"].value is False  # type: ignore[attr-defined]
    assert mats[str(multi_key(key, "2024-01-01"))]["first_begin"].value.startswith("2024-01-")  # type: ignore[attr-defined]
