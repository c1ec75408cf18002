"""Dagster wiring: published_candles_<tf> partitions, the publication sensor, and what Datasette serves."""

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import polars as pl
import pytest

from candlestick_pipeline.defs.candles.partitions import parse_candle_partition, partitions_for
from candlestick_pipeline.defs.publish import publication_definitions
from candlestick_pipeline.defs.publish.sensor import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    contiguous_ranges,
    publication_sensor,
)
from candlestick_pipeline.defs.warehouse.resource import WarehouseResource
from candlestick_pipeline.lib import publication, warehouse
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import TIMEFRAMES
from candlestick_pipeline_tests.publish.helpers import (
    GAZP,
    SBER,
    minute_day,
    run_datasette,
    security_info,
    warehouse_rows,
)

MINUTES = TIMEFRAMES["1m"]
DAYS = [dt.date(2024, 1, d) for d in (3, 4, 5, 6)]


class Market:
    """What the fake ``candles_1m`` asset "downloads": a frame per (security, date key)."""

    def __init__(self) -> None:
        self.frames: dict[tuple[SecurityKey, str], pl.DataFrame] = {}

    def set(self, key: SecurityKey, day: dt.date, seed: int, count: int = 1020) -> None:
        self.frames[(key, day.isoformat())] = minute_day(day, seed=seed).head(count)


def fake_candles_asset(market: Market) -> dg.AssetsDefinition:
    """Stands in for the real ``candles_1m`` (same key, partitions and policy), without ISS."""

    @dg.asset(
        name=MINUTES.asset_name,
        partitions_def=partitions_for(MINUTES),
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def candles_1m(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        for key in context.partition_keys:
            part = parse_candle_partition(MINUTES, key)
            frame = market.frames[(part.security, part.date_key)]
            warehouse.replace_candles(part.security, MINUTES.name, part.start_naive, part.end_naive, frame)
        return dg.MaterializeResult()

    return candles_1m


class Pipeline:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance) -> None:
        self.dsn = f"sqlite:///{tmp_path / 'warehouse.db'}"
        self.engine = warehouse.create_warehouse_engine(self.dsn)
        warehouse.migrate(self.engine)
        for key, name in ((SBER, "Сбербанк"), (GAZP, "ГАЗПРОМ ао")):
            warehouse.upsert_security(self.engine, security_info(key, name))
        self.path = tmp_path / "publication.db"
        publication.ensure_schema(self.path)
        monkeypatch.setenv("CANDLESTICK_PUBLICATION_PATH", str(self.path))
        self.market = Market()
        self.candles = fake_candles_asset(self.market)
        self.warehouse = WarehouseResource(dsn=self.dsn)
        self.defs = dg.Definitions.merge(
            dg.Definitions(assets=[self.candles], resources={"warehouse": self.warehouse}),
            publication_definitions(),
        )
        self.instance = instance
        self.cursor: str | None = None
        instance.add_dynamic_partitions("securities", [SBER.partition_key, GAZP.partition_key])

    def load(self, key: SecurityKey, first: dt.date, last: dt.date | None = None) -> None:
        """Materialize candles_1m for first..last (one run, like a single-run backfill)."""
        start = str(dg.MultiPartitionKey({"security": key.partition_key, "date": first.isoformat()}))
        end = str(dg.MultiPartitionKey({"security": key.partition_key, "date": (last or first).isoformat()}))
        result = dg.materialize(
            [self.candles],
            instance=self.instance,
            resources={"warehouse": self.warehouse},
            tags={RANGE_START_TAG: start, RANGE_END_TAG: end},
        )
        assert result.success

    def tick(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs)
        result = publication_sensor(context)
        assert isinstance(result, dg.SensorResult)
        self.cursor = result.cursor
        return list(result.run_requests or [])

    def run(self, request: dg.RunRequest) -> None:
        """Execute a run request in process: the sensor's job, its partition or range tags."""
        assert request.job_name is not None
        job = self.defs.resolve_job_def(request.job_name)
        result = job.execute_in_process(
            instance=self.instance, partition_key=request.partition_key, tags=request.tags
        )
        assert result.success


def _request_shape(request: dg.RunRequest) -> tuple[str | None, str | None, str | None]:
    if request.partition_key:
        return request.job_name, request.partition_key, request.partition_key
    return request.job_name, request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    with dg.instance_for_test() as instance:
        state = Pipeline(tmp_path, monkeypatch, instance)
        yield state
        state.engine.dispose()


def _served(client: httpx.Client, key: SecurityKey, day: dt.date) -> list[dict]:
    response = client.get(
        "/publication/candle_series.json",
        params={
            "secid": key.secid,
            "board": key.board,
            "timeframe": "1m",
            "from": day.isoformat(),
            "till": day.isoformat(),
            "_shape": "array",
        },
    )
    assert response.status_code == 200, response.text
    rows = response.json()
    if len(rows) == 1000:
        response = client.get(
            "/publication/candle_series.json",
            params={
                "secid": key.secid,
                "board": key.board,
                "timeframe": "1m",
                "from": day.isoformat(),
                "till": day.isoformat(),
                "after": rows[-1]["begin"],
                "_shape": "array",
            },
        )
        rows += response.json()
    return rows


def _expected(pipeline: Pipeline, key: SecurityKey, day: dt.date) -> list[dict]:
    start = dt.datetime(day.year, day.month, day.day)
    return warehouse_rows(pipeline.engine, key, "1m", start, start + dt.timedelta(days=1))


def test_a_rematerialized_partition_reaches_datasette_through_the_sensor(pipeline: Pipeline) -> None:
    jan3, jan4, jan5, jan6 = DAYS
    for seed, day in enumerate((jan3, jan4, jan5)):
        pipeline.market.set(SBER, day, seed=seed)
    pipeline.market.set(GAZP, jan3, seed=10, count=500)
    pipeline.load(SBER, jan3, jan5)
    pipeline.load(GAZP, jan3)

    first = pipeline.tick()
    assert sorted(_request_shape(r) for r in first) == [
        ("publish_candles_1m", "2024-01-03|GAZP.TQBR", "2024-01-03|GAZP.TQBR"),
        ("publish_candles_1m", "2024-01-03|SBER.TQBR", "2024-01-05|SBER.TQBR"),  # one run for the range
    ]
    for request in first:
        pipeline.run(request)
    assert pipeline.tick() == []  # nothing new

    with run_datasette(pipeline.path) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        for key, day in ((SBER, jan3), (SBER, jan4), (SBER, jan5), (GAZP, jan3)):
            assert _served(client, key, day) == _expected(pipeline, key, day)
        old_jan3, old_jan4 = _served(client, SBER, jan3), _served(client, SBER, jan4)

        # ISS corrects 4 January (fewer candles, other prices) and a new day arrives.
        pipeline.market.set(SBER, jan4, seed=42, count=800)
        pipeline.market.set(SBER, jan6, seed=43)
        pipeline.load(SBER, jan4)
        pipeline.load(SBER, jan6)
        second = pipeline.tick()
        assert sorted(_request_shape(r) for r in second) == [
            ("publish_candles_1m", "2024-01-04|SBER.TQBR", "2024-01-04|SBER.TQBR"),
            ("publish_candles_1m", "2024-01-06|SBER.TQBR", "2024-01-06|SBER.TQBR"),
        ]
        assert _served(client, SBER, jan4) == old_jan4  # not yet published
        for request in second:
            pipeline.run(request)

        new_jan4 = _served(client, SBER, jan4)
        assert new_jan4 != old_jan4 and len(new_jan4) == 800
        assert new_jan4 == _expected(pipeline, SBER, jan4)
        assert _served(client, SBER, jan6) == _expected(pipeline, SBER, jan6)
        assert _served(client, SBER, jan3) == old_jan3  # neighbours untouched
        iss = client.get(
            "/iss/engines/stock/markets/shares/boards/TQBR/securities/SBER/candles.json",
            params={"interval": 1, "from": "2024-01-04", "till": "2024-01-04", "start": 500},
        ).json()
        assert len(iss["candles"]["data"]) == 300

    # Published by hand after the candle load: the sensor does not publish it again.
    pipeline.market.set(SBER, jan5, seed=77)
    pipeline.load(SBER, jan5)
    manual = dg.RunRequest(job_name="publish_candles_1m", partition_key="2024-01-05|SBER.TQBR")
    pipeline.run(manual)
    assert pipeline.tick() == []

    # The per-partition metadata says how many rows each partition published.
    event = pipeline.instance.get_latest_materialization_event(dg.AssetKey("published_candles_1m"))
    assert event is not None and event.asset_materialization is not None
    assert event.asset_materialization.metadata["rows"].value == 1020


def test_securities_materializations_republish_the_securities_table(pipeline: Pipeline) -> None:
    pipeline.instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="securities"))
    requests = pipeline.tick()
    assert [r.job_name for r in requests] == ["publish_securities"]
    pipeline.run(requests[0])
    with run_datasette(pipeline.path) as server:
        rows = httpx.get(f"{server.base_url}/publication/security_list.json?_shape=array", timeout=10).json()
    assert [(r["secid"], r["board"]) for r in rows] == [("GAZP", "TQBR"), ("SBER", "TQBR")]
    assert pipeline.tick() == []


def test_contiguous_ranges_split_by_security_and_gap() -> None:
    keys = [
        "2024-01-03|SBER.TQBR",
        "2024-01-04|SBER.TQBR",
        "2024-01-06|SBER.TQBR",
        "2024-01-03|GAZP.TQBR",
        "2024-01-05|SBER.TQBR",
        "2024-01-09|SBER.TQBR",
    ]
    ranges = contiguous_ranges(MINUTES, keys)
    assert [(r.security.partition_key, r.first, r.last, r.count) for r in ranges] == [
        ("GAZP.TQBR", "2024-01-03", "2024-01-03", 1),
        ("SBER.TQBR", "2024-01-03", "2024-01-06", 4),
        ("SBER.TQBR", "2024-01-09", "2024-01-09", 1),
    ]
    monthly = contiguous_ranges(TIMEFRAMES["10m"], ["2024-01-01|SBER.TQBR", "2024-02-01|SBER.TQBR"])
    assert [(r.first, r.last) for r in monthly] == [("2024-01-01", "2024-02-01")]


def test_published_assets_mirror_the_candle_assets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CANDLESTICK_PUBLICATION_PATH", str(tmp_path / "publication.db"))
    defs = dg.Definitions.merge(
        dg.Definitions(resources={"warehouse": WarehouseResource(dsn=f"sqlite:///{tmp_path / 'w.db'}")}),
        publication_definitions(),
    )
    dg.Definitions.validate_loadable(defs)
    graph = defs.get_repository_def().asset_graph
    for tf in TIMEFRAMES.values():
        node = graph.get(dg.AssetKey(f"published_{tf.asset_name}"))
        assert node.partitions_def == partitions_for(tf)
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
        assert node.parent_keys == {dg.AssetKey(tf.asset_name)}
        mapping = node.assets_def.get_partition_mapping(dg.AssetKey(tf.asset_name))
        assert isinstance(mapping, dg.IdentityPartitionMapping)
    sensor = defs.get_repository_def().get_sensor_def("publication_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30


def test_merges_into_the_main_definitions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """definitions.py merges the publication domain into the code location."""
    monkeypatch.setenv("CANDLESTICK_PUBLICATION_PATH", str(tmp_path / "publication.db"))
    from candlestick_pipeline.definitions import defs as merged

    dg.Definitions.validate_loadable(merged)
    keys = {key.to_user_string() for key in merged.get_repository_def().asset_graph.get_all_asset_keys()}
    assert {f"published_{tf.asset_name}" for tf in TIMEFRAMES.values()} | {"published_securities"} <= keys
