"""The warehouse as a Dagster resource."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence

import dagster as dg
import polars as pl
import sqlalchemy as sa
from pydantic import Field, PrivateAttr

from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityInfo, SecurityKey
from candlestick_pipeline.lib.timeframes import Timeframe

# Guards the lazy engine creation when several threads of one step use the resource at once.
_ENGINE_LOCK = threading.Lock()


class WarehouseResource(dg.ConfigurableResource):
    """The candle warehouse: a SQLite file (embedded default) or a PostgreSQL database.

    Holds the ``candles`` table (one row per secid, board, timeframe and bar ``begin``, in Moscow
    wall-clock time) and the ``securities`` reference table. Loads replace whole partition windows
    in one transaction, so re-running a partition never duplicates candles.

    The engine is created on first use in each process and disposed when the run or step ends;
    creating it upgrades the schema to the newest migration (a no-op when already there).
    """

    dsn: str = Field(
        description=(
            "SQLAlchemy URL of the warehouse: sqlite:////abs/path/warehouse.db or "
            "postgresql://user:password@host:5432/dbname (postgresql:// uses psycopg 3). "
            "Pass it as an environment variable when it holds a password; it is never logged."
        )
    )

    _engine: sa.Engine | None = PrivateAttr(default=None)

    def get_engine(self) -> sa.Engine:
        """The process's Engine for the warehouse, created, checked and migrated on first call."""
        with _ENGINE_LOCK:
            if self._engine is None:
                engine = warehouse.create_warehouse_engine(self.dsn)
                try:
                    warehouse.migrate(engine)
                except BaseException:
                    engine.dispose()
                    raise
                self._engine = engine
            return self._engine

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        with _ENGINE_LOCK:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def replace_candles(
        self,
        key: SecurityKey,
        timeframe: str,
        window_start: dt.datetime,
        window_end: dt.datetime,
        frame: pl.DataFrame,
    ) -> int:
        """Replace ``[window_start, window_end)`` of one series with ``frame``; see ``lib.warehouse``."""
        return warehouse.replace_candles(self.get_engine(), key, timeframe, window_start, window_end, frame)

    def replace_candles_many(
        self,
        key: SecurityKey,
        timeframe: str,
        windows: Sequence[tuple[dt.datetime, dt.datetime]],
        frame: pl.DataFrame,
    ) -> int:
        """Replace several windows of one series in one transaction; see ``lib.warehouse``."""
        return warehouse.replace_candles_many(self.get_engine(), key, timeframe, windows, frame)

    def read_candles(
        self, key: SecurityKey, timeframe: str, start: dt.datetime, end: dt.datetime
    ) -> pl.DataFrame:
        """Candles of one series with ``begin`` in ``[start, end)``, sorted by ``begin``."""
        return warehouse.read_candles(self.get_engine(), key, timeframe, start, end)

    def summarize_days(
        self, key: SecurityKey, timeframe: Timeframe, start: dt.datetime, end: dt.datetime
    ) -> list[warehouse.DaySummary]:
        """Per day of the series in ``[start, end)``: candles, duplicate begins, OHLC-insane and
        off-grid candles, counted by the database."""
        return warehouse.summarize_days(self.get_engine(), key, timeframe, start, end)

    def count_candles(self, key: SecurityKey | None = None, timeframe: str | None = None) -> int:
        """How many candles are stored, optionally of one security and/or timeframe."""
        return warehouse.count_candles(self.get_engine(), key, timeframe)

    def upsert_security(self, info: SecurityInfo) -> None:
        """Insert or update a security's reference row."""
        warehouse.upsert_security(self.get_engine(), info)

    def list_securities(self) -> list[SecurityInfo]:
        """Every stored security, ordered by secid then board."""
        return warehouse.list_securities(self.get_engine())

    def get_security(self, key: SecurityKey) -> SecurityInfo | None:
        """The stored security ``key``, or ``None``."""
        return warehouse.get_security(self.get_engine(), key)

    def delete_security(self, key: SecurityKey, *, delete_candles: bool = False) -> int:
        """Delete a security (and its candles when asked); returns candle rows deleted."""
        return warehouse.delete_security(self.get_engine(), key, delete_candles=delete_candles)
