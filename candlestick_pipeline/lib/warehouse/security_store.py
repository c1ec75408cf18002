"""Security reference rows in the warehouse (one per secid and board)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from candlestick_pipeline.lib.securities import SecurityInfo, SecurityKey
from candlestick_pipeline.lib.timeframes import TIMEFRAMES
from candlestick_pipeline.lib.warehouse.candle_store import series_lock_parts
from candlestick_pipeline.lib.warehouse.engine import is_postgres, lock_key, write_transaction
from candlestick_pipeline.lib.warehouse.schema import candles, securities

_KEY_COLUMNS = ("secid", "board")
_TIMESTAMP_COLUMNS = ("added_at", "updated_at")
_INFO_COLUMNS = tuple(column.name for column in securities.columns if column.name not in _TIMESTAMP_COLUMNS)


def _now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _to_row(info: SecurityInfo) -> dict[str, Any]:
    info.key  # noqa: B018 - constructing the key validates secid and board
    row = {name: getattr(info, name) for name in _INFO_COLUMNS}
    # Comma-separated, so that Datasette can show and filter it; NULL when there is none.
    row["other_boards"] = ",".join(info.other_boards) or None
    return row


def _from_row(row: sa.Row[Any]) -> SecurityInfo:
    values = {name: getattr(row, name) for name in _INFO_COLUMNS}
    values["other_boards"] = tuple(values["other_boards"].split(",")) if values["other_boards"] else ()
    values["is_primary"] = bool(values["is_primary"])
    values["is_traded"] = bool(values["is_traded"])
    return SecurityInfo(**values)


def _key_filter(key: SecurityKey) -> list[sa.ColumnElement[bool]]:
    return [securities.c.secid == key.secid, securities.c.board == key.board]


def upsert_security(engine: sa.Engine, info: SecurityInfo) -> None:
    """Insert the security or update every field of the existing row (``added_at`` is kept)."""
    row = _to_row(info)
    now = _now_utc()
    insert = (postgresql.insert if is_postgres(engine) else sqlite.insert)(securities)
    statement = insert.values(**row, added_at=now, updated_at=now)
    updates = {name: statement.excluded[name] for name in _INFO_COLUMNS if name not in _KEY_COLUMNS}
    statement = statement.on_conflict_do_update(
        index_elements=list(_KEY_COLUMNS), set_={**updates, "updated_at": now}
    )
    with write_transaction(engine) as conn:
        conn.execute(statement)


def get_security(engine: sa.Engine, key: SecurityKey) -> SecurityInfo | None:
    """The stored security ``key``, or ``None``."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(securities).where(*_key_filter(key))).one_or_none()
    return None if row is None else _from_row(row)


def list_securities(engine: sa.Engine) -> list[SecurityInfo]:
    """Every stored security, ordered by secid then board."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(securities).order_by(securities.c.secid, securities.c.board)).all()
    return [_from_row(row) for row in rows]


def delete_security(engine: sa.Engine, key: SecurityKey, *, delete_candles: bool = False) -> int:
    """Delete the security row and, when ``delete_candles``, all its candles; returns candle rows deleted.

    Both happen in one transaction. Without ``delete_candles`` the candles stay (there is no
    foreign key) and 0 is returned.
    """
    with write_transaction(engine) as conn:
        deleted = 0
        if delete_candles:
            # Wait for running loads of this security, so none re-inserts rows after the delete.
            for timeframe in TIMEFRAMES:
                lock_key(conn, *series_lock_parts(key, timeframe))
            result = conn.execute(
                sa.delete(candles).where(candles.c.secid == key.secid, candles.c.board == key.board)
            )
            deleted = result.rowcount
        conn.execute(sa.delete(securities).where(*_key_filter(key)))
    return deleted
