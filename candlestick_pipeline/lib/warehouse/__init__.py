"""The warehouse: candles and security reference data in SQLite (embedded) or PostgreSQL.

Plain functions over a SQLAlchemy Engine; the Dagster resource in ``defs/warehouse`` wraps them.
The schema is created and upgraded only by the Alembic migrations (:func:`migrate`).
"""

# Re-exported for callers that annotate with ``warehouse.sa.Engine`` (as a single module had it).
import sqlalchemy as sa

from candlestick_pipeline.lib.warehouse.candle_store import (
    DaySummary,
    RowReader,
    candle_row_reader,
    count_candles,
    read_candles,
    replace_candles,
    replace_candles_many,
    summarize_days,
    validate_candles,
)
from candlestick_pipeline.lib.warehouse.engine import (
    create_warehouse_engine,
    current_revision,
    head_revision,
    migrate,
    redact_dsn,
)
from candlestick_pipeline.lib.warehouse.errors import WarehouseConnectionError, WarehouseError
from candlestick_pipeline.lib.warehouse.schema import candles, metadata, securities
from candlestick_pipeline.lib.warehouse.security_store import (
    delete_security,
    get_security,
    list_securities,
    upsert_security,
)

__all__ = [
    "DaySummary",
    "RowReader",
    "WarehouseConnectionError",
    "WarehouseError",
    "candle_row_reader",
    "candles",
    "count_candles",
    "create_warehouse_engine",
    "current_revision",
    "delete_security",
    "get_security",
    "head_revision",
    "list_securities",
    "metadata",
    "migrate",
    "read_candles",
    "redact_dsn",
    "replace_candles",
    "replace_candles_many",
    "sa",
    "securities",
    "summarize_days",
    "upsert_security",
    "validate_candles",
]
