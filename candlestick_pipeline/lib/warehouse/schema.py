"""The warehouse tables as SQLAlchemy Core metadata.

The database itself is created and upgraded only by the versioned Alembic migrations in
``candlestick_pipeline/lib/migrations``; this module describes the same tables for queries and is
checked against the migrated database by the tests (no autogenerate differences).

Timestamps on SQLite are TEXT ``YYYY-MM-DD HH:MM:SS``: that is how ISS writes them, Datasette shows
them as they are, and text in this format sorts chronologically, so the primary key serves range
queries on ``begin``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from candlestick_pipeline.lib.timeframes import to_moscow_naive

VERSION_TABLE = "warehouse_alembic_version"
"""Alembic's version table; not the default name, so the warehouse can share a database with Dagster."""

SQLITE_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


def _sqlite_text(value: dt.datetime) -> str:
    # isoformat writes "YYYY-MM-DD HH:MM:SS" for whole seconds. Sub-second bounds (only ever query
    # bounds: stored candles are validated to whole seconds) get ".ffffff", which still compares
    # correctly as text against the stored whole-second values.
    return value.isoformat(sep=" ")


class MoscowDateTime(TypeDecorator[dt.datetime]):
    """A naive Moscow wall-clock timestamp: ``timestamp without time zone`` on PostgreSQL, TEXT on SQLite.

    Aware datetimes are converted to Moscow time before they are stored or compared.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Text())
        return dialect.type_descriptor(sa.DateTime(timezone=False))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = to_moscow_naive(value)
        return _sqlite_text(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None or isinstance(value, dt.datetime):
            return value
        return dt.datetime.fromisoformat(value)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A UTC instant: ``timestamptz`` on PostgreSQL, TEXT ``YYYY-MM-DD HH:MM:SS`` (UTC) on SQLite.

    Always returned as an aware datetime in UTC.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Text())
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"UTC timestamp {value!r} has no time zone")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None).strftime(SQLITE_TIMESTAMP_FORMAT)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            value = dt.datetime.fromisoformat(value)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


metadata = sa.MetaData()

securities = sa.Table(
    "securities",
    metadata,
    sa.Column("secid", sa.Text(), primary_key=True),
    sa.Column("board", sa.Text(), primary_key=True),
    sa.Column("engine", sa.Text(), nullable=False),
    sa.Column("market", sa.Text(), nullable=False),
    sa.Column("shortname", sa.Text()),
    sa.Column("name", sa.Text()),
    sa.Column("isin", sa.Text()),
    sa.Column("decimals", sa.Integer()),
    sa.Column("currency", sa.Text()),
    sa.Column("is_primary", sa.Boolean(), nullable=False),
    sa.Column("is_traded", sa.Boolean(), nullable=False),
    sa.Column("listed_from", sa.Date()),
    sa.Column("listed_till", sa.Date()),
    sa.Column("history_from", sa.Date()),
    sa.Column("history_till", sa.Date()),
    sa.Column("security_type", sa.Text()),
    sa.Column("security_group", sa.Text()),
    sa.Column("other_boards", sa.Text()),
    sa.Column("added_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("secid", "board", name="securities_pkey"),
)

# No foreign key to securities: candles are bulk-loaded by COPY and may arrive before (or outlive)
# the reference row; delete_security removes a security's candles explicitly when asked to.
candles = sa.Table(
    "candles",
    metadata,
    sa.Column("secid", sa.Text(), nullable=False),
    sa.Column("board", sa.Text(), nullable=False),
    sa.Column("timeframe", sa.Text(), nullable=False),
    sa.Column("begin", MoscowDateTime(), nullable=False),
    sa.Column("end", MoscowDateTime(), nullable=False),
    sa.Column("open", sa.Double(), nullable=False),
    sa.Column("high", sa.Double(), nullable=False),
    sa.Column("low", sa.Double(), nullable=False),
    sa.Column("close", sa.Double(), nullable=False),
    sa.Column("value", sa.Double(), nullable=False),
    sa.Column("volume", sa.BigInteger(), nullable=False),
    # The primary key also serves "latest candle per security/timeframe" and window deletes.
    sa.PrimaryKeyConstraint("secid", "board", "timeframe", "begin", name="candles_pkey"),
    # The rows live in the primary-key B-tree itself: one index to maintain on insert, not two.
    sqlite_with_rowid=False,
)

CANDLE_VALUE_COLUMNS: tuple[str, ...] = ("begin", "end", "open", "high", "low", "close", "value", "volume")
"""The candle columns after the key, in the order of ``lib.frames.CANDLE_SCHEMA``."""
