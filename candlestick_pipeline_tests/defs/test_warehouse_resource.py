"""WarehouseResource inside Dagster: config, lazy engine with migrations, teardown."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import polars as pl
from polars.testing import assert_frame_equal

from candlestick_pipeline.defs.warehouse import WarehouseResource
from candlestick_pipeline.lib.frames import CANDLE_SCHEMA
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.warehouse import current_revision, head_revision
from candlestick_pipeline_tests.factories import security_info

SBER = SecurityKey("SBER", "TQBR")
START = dt.datetime(2025, 3, 3)
END = START + dt.timedelta(days=1)
FRAME = pl.DataFrame(
    {
        "begin": [START + dt.timedelta(hours=10, minutes=i) for i in range(3)],
        "end": [START + dt.timedelta(hours=10, minutes=i, seconds=59) for i in range(3)],
        "open": [1.0, 2.0, 3.0],
        "high": [1.5, 2.5, 3.5],
        "low": [0.5, 1.5, 2.5],
        "close": [1.2, 2.2, 3.2],
        "value": [10.0, 20.0, 30.0],
        "volume": [1, 2, 3],
    },
    schema=CANDLE_SCHEMA,
)
INFO = security_info(
    SecurityKey("SBER", "TQBR"),
    "Сбербанк",
    currency="SUR",
    name=None,
    listed_from=None,
    history_from=None,
    security_type=None,
    security_group=None,
)


@dg.asset
def loaded_candles(warehouse: WarehouseResource) -> dg.MaterializeResult:
    warehouse.upsert_security(INFO)
    written = warehouse.replace_candles(SBER, "1m", START, END, FRAME)
    return dg.MaterializeResult(metadata={"rows": written})


@dg.asset(deps=[loaded_candles])
def checked_candles(warehouse: WarehouseResource) -> dg.MaterializeResult:
    frame = warehouse.read_candles(SBER, "1m", START, END)
    assert_frame_equal(frame, FRAME)
    assert warehouse.get_security(SBER) == INFO
    assert warehouse.list_securities() == [INFO]
    assert warehouse.count_candles(SBER, "1m") == 3
    return dg.MaterializeResult(metadata={"rows": frame.height})


def test_the_resource_inside_materialize(warehouse_dsn: str) -> None:
    result = dg.materialize(
        [loaded_candles, checked_candles], resources={"warehouse": WarehouseResource(dsn=warehouse_dsn)}
    )
    assert result.success
    materializations = result.asset_materializations_for_node("checked_candles")
    assert materializations[0].metadata["rows"] == dg.IntMetadataValue(3)


def test_the_engine_is_lazy_migrated_and_disposed(warehouse_dsn: str) -> None:
    resource = WarehouseResource(dsn=warehouse_dsn)
    with dg.build_resources({"warehouse": resource}) as resources:
        warehouse: WarehouseResource = resources.warehouse
        assert warehouse._engine is None  # nothing connects before first use
        engine = warehouse.get_engine()
        assert warehouse.get_engine() is engine
        assert current_revision(engine) == head_revision()
        assert warehouse.delete_security(SBER, delete_candles=True) == 0
    assert warehouse._engine is None


def test_the_resource_documents_itself() -> None:
    schema_field = WarehouseResource.model_fields["dsn"]
    assert schema_field.description and "SQLAlchemy URL" in schema_field.description
    assert WarehouseResource.__doc__ and "warehouse" in WarehouseResource.__doc__
