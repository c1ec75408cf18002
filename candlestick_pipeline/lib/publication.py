"""The publication: a read-only copy of the warehouse in one SQLite file, served by Datasette.

Tables (Datasette shows them with the titles in ``datasette/metadata.yaml``):

* ``candles`` - the warehouse's columns, ``begin``/``end`` as TEXT ``YYYY-MM-DD HH:MM:SS`` (naive
  Moscow time, as ISS writes them), primary key ``(secid, board, timeframe, begin)``, ``WITHOUT
  ROWID`` so the rows live in the primary-key B-tree. That key serves every series query: the
  table view filtered on one series (and its ``_next`` keyset paging, which Datasette builds on the
  primary key), the canned ``candle_series`` query and the ISS route (``... order by begin limit
  500 offset N``).
* ``series`` - one row per (secid, board, timeframe) with its first/last ``begin`` and row count,
  kept in the same transaction as the candles. "The latest candle of every security" is a join of
  this small table with one primary-key lookup per series instead of a ``GROUP BY`` over all
  candles; the chart's pickers and the ISS route's "unknown security" check read it too.
* ``securities`` - the warehouse's reference rows (dates and UTC timestamps as ISO text).

Consistency: each sync runs in ONE SQLite write transaction (``BEGIN IMMEDIATE``: delete the
windows, insert their rows, update ``series``), and the file is in WAL mode, so a reader (Datasette
opens the file ``mode=ro``) sees either the old or the new state of a partition, never a mix, and
is never blocked by the writer.

Rebuilds happen IN PLACE, in one transaction per (series, calendar year); they never swap the
file. Replacing the file (``os.replace``) under a running Datasette is not safe in WAL mode: the
open connections keep reading the unlinked old inode while ``publication.db-wal``/``-shm`` (named
by path, shared by every connection) would then be shared between two different databases - the
"renaming a database file while in use" corruption case of https://www.sqlite.org/howtocorrupt.html.
Year windows are unions of whole partitions (day, month and year grains all nest in a year), so
the guarantee above still holds during a rebuild. To start from an empty file, stop Datasette,
delete ``publication.db*`` and rebuild.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import get_timeframe, to_moscow_naive

# The tables by their schema module: ``warehouse.securities`` is shadowed by the submodule of that name.
from candlestick_pipeline.lib.warehouse.schema import candles as warehouse_candles
from candlestick_pipeline.lib.warehouse.schema import securities as warehouse_securities

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the publication; a file with an older version is recreated empty."""

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
BUSY_TIMEOUT_MS = 30_000

Window = tuple[dt.datetime, dt.datetime]

CANDLE_COLUMNS: tuple[str, ...] = (
    "secid",
    "board",
    "timeframe",
    "begin",
    "end",
    "open",
    "high",
    "low",
    "close",
    "value",
    "volume",
)
SERIES_COLUMNS: tuple[str, ...] = (
    "secid",
    "board",
    "timeframe",
    "first_begin",
    "last_begin",
    "candles",
    "synced_at",
)
# The publication mirrors the warehouse table, column for column.
SECURITY_COLUMNS: tuple[str, ...] = tuple(column.name for column in warehouse_securities.columns)

_DDL = (
    """
    CREATE TABLE candles (
        secid TEXT NOT NULL,
        board TEXT NOT NULL,
        timeframe TEXT NOT NULL,
        begin TEXT NOT NULL,
        "end" TEXT NOT NULL,
        open REAL NOT NULL,
        high REAL NOT NULL,
        low REAL NOT NULL,
        close REAL NOT NULL,
        value REAL NOT NULL,
        volume INTEGER NOT NULL,
        PRIMARY KEY (secid, board, timeframe, begin)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE series (
        secid TEXT NOT NULL,
        board TEXT NOT NULL,
        timeframe TEXT NOT NULL,
        first_begin TEXT NOT NULL,
        last_begin TEXT NOT NULL,
        candles INTEGER NOT NULL,
        synced_at TEXT NOT NULL,
        PRIMARY KEY (secid, board, timeframe)
    ) WITHOUT ROWID
    """,
    # Cross-sections: every security's candles at a time ("1d candles of 2024-06-03"), the newest
    # candles of a timeframe. (Series queries use the primary key.)
    "CREATE INDEX candles_by_timeframe_begin ON candles (timeframe, begin)",
    # "latest candle of every security for a timeframe" scans series by timeframe.
    "CREATE INDEX series_by_timeframe ON series (timeframe, secid, board)",
    """
    CREATE TABLE securities (
        secid TEXT NOT NULL,
        board TEXT NOT NULL,
        engine TEXT NOT NULL,
        market TEXT NOT NULL,
        shortname TEXT,
        name TEXT,
        isin TEXT,
        decimals INTEGER,
        currency TEXT,
        is_primary INTEGER NOT NULL,
        is_traded INTEGER NOT NULL,
        listed_from TEXT,
        listed_till TEXT,
        history_from TEXT,
        history_till TEXT,
        security_type TEXT,
        security_group TEXT,
        other_boards TEXT,
        added_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (secid, board)
    )
    """,
)
_TABLES = ("candles", "series", "securities")

_QUOTED_CANDLE_COLUMNS = ", ".join(f'"{name}"' for name in CANDLE_COLUMNS)
_INSERT_CANDLE = (
    f"INSERT OR REPLACE INTO candles ({_QUOTED_CANDLE_COLUMNS})"
    f" VALUES ({', '.join('?' for _ in CANDLE_COLUMNS)})"
)
_INSERT_SECURITY = (
    f"INSERT INTO securities ({', '.join(SECURITY_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in SECURITY_COLUMNS)})"
)
_SERIES_WHERE = "secid = ? AND board = ? AND timeframe = ?"


class PublicationError(RuntimeError):
    """The publication file cannot be used (a newer schema, not a SQLite file, ...)."""


# --- connections and schema --------------------------------------------------------------------


def connect(path: Path | str) -> sqlite3.Connection:
    """A writer connection: autocommit (transactions are explicit), WAL, ``busy_timeout``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise PublicationError(f"{target}: cannot switch to WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise PublicationError(f"{target} is not a usable SQLite file: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any error).

    IMMEDIATE takes the write lock up front (waiting up to ``busy_timeout`` for another writer,
    e.g. two Dagster runs publishing at once) instead of failing when a read upgrades to a write.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _existing_tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in rows}


def _ensure_schema(conn: sqlite3.Connection) -> bool:
    """Create (or recreate, for an older version) the tables; True when they were (re)created."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION and set(_TABLES) <= _existing_tables(conn):
        return False
    if version > SCHEMA_VERSION:
        raise PublicationError(
            f"the publication has schema version {version}, newer than this code's {SCHEMA_VERSION}"
        )
    with write_transaction(conn):
        # Re-read under the write lock: another process may have just created it.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION and set(_TABLES) <= _existing_tables(conn):
            return False
        # An older layout holds nothing that cannot be rebuilt from the warehouse: start over.
        for table in _existing_tables(conn) & {*_TABLES}:
            conn.execute(f"DROP TABLE {table}")
        for statement in _DDL:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return True


def ensure_schema(path: Path | str) -> bool:
    """Create the publication file and its tables if needed; True when the tables were (re)created.

    A file written by an older schema version is emptied and recreated (a rebuild refills it); a
    newer version is an error. Safe to call while Datasette serves the file and from several
    processes at once.
    """
    with closing(connect(path)) as conn:
        return _ensure_schema(conn)


# --- candles -------------------------------------------------------------------------------------


def _now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime(TIMESTAMP_FORMAT)


def _normalize_windows(windows: Iterable[Window]) -> list[Window]:
    out: list[Window] = []
    for start, end in windows:
        start_local, end_local = to_moscow_naive(start), to_moscow_naive(end)
        if end_local <= start_local:
            raise ValueError(f"empty window [{start_local}, {end_local})")
        out.append((start_local, end_local))
    return sorted(out)


def _refresh_series(
    conn: sqlite3.Connection, key: SecurityKey, timeframe: str, deleted: int, inserted: int
) -> None:
    """Update the ``series`` row after a window replace (inside the same transaction)."""
    params = (key.secid, key.board, timeframe)
    row = conn.execute(f"SELECT candles FROM series WHERE {_SERIES_WHERE}", params).fetchone()
    count = (row[0] if row else 0) - deleted + inserted
    bounds = conn.execute(
        f"SELECT (SELECT min(begin) FROM candles WHERE {_SERIES_WHERE}),"
        f" (SELECT max(begin) FROM candles WHERE {_SERIES_WHERE})",
        params + params,
    ).fetchone()
    if bounds[0] is None:
        conn.execute(f"DELETE FROM series WHERE {_SERIES_WHERE}", params)
        return
    if row is None or count <= 0:
        # No bookkeeping yet (or it went wrong): count once, exactly.
        count = conn.execute(f"SELECT count(*) FROM candles WHERE {_SERIES_WHERE}", params).fetchone()[0]
    conn.execute(
        "INSERT OR REPLACE INTO series (secid, board, timeframe, first_begin, last_begin, candles, synced_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (*params, bounds[0], bounds[1], count, _now_text()),
    )


def _replace_windows(
    conn: sqlite3.Connection,
    key: SecurityKey,
    timeframe: str,
    windows: Sequence[Window],
    read: warehouse.RowReader,
) -> list[int]:
    """Delete each window and insert the warehouse's rows of it; the caller holds the transaction."""
    counts: list[int] = []
    deleted = inserted = 0
    series = (key.secid, key.board, timeframe)
    for start, end in windows:
        cur = conn.execute(
            f"DELETE FROM candles WHERE {_SERIES_WHERE} AND begin >= ? AND begin < ?",
            (*series, start.strftime(TIMESTAMP_FORMAT), end.strftime(TIMESTAMP_FORMAT)),
        )
        deleted += max(cur.rowcount, 0)
        rows = max(conn.executemany(_INSERT_CANDLE, read(start, end)).rowcount, 0)
        counts.append(rows)
        inserted += rows
    _refresh_series(conn, key, timeframe, deleted, inserted)
    return counts


def sync_windows(
    engine: sa.Engine,
    path: Path | str,
    key: SecurityKey,
    timeframe: str,
    windows: Sequence[Window],
) -> list[int]:
    """Like :func:`sync_partitions`, returning the rows published per window (in the given order)."""
    get_timeframe(timeframe)
    normalized = [_normalize_windows([window])[0] for window in windows]
    if not normalized:
        return []
    # The warehouse's rows stream into the insert under the publication's write lock. That holds the
    # lock a little longer than reading everything first (readers are never blocked: WAL), and
    # keeps no long window (a year of a series, in a rebuild) in memory.
    with closing(connect(path)) as conn:
        _ensure_schema(conn)
        with warehouse.candle_row_reader(engine, key, timeframe) as read, write_transaction(conn):
            return _replace_windows(conn, key, timeframe, normalized, read)


def sync_partitions(
    engine: sa.Engine,
    path: Path | str,
    key: SecurityKey,
    timeframe: str,
    windows: Sequence[Window],
) -> int:
    """Copy the windows ``[start, end)`` of one series from the warehouse to the publication.

    All windows are replaced in ONE SQLite transaction (delete each window, insert the warehouse's
    rows, update ``series``), so a reader sees the old or the new state, never a mix; rows of the
    series outside the windows are untouched. Bounds are naive Moscow datetimes (aware ones are
    converted). Returns the number of candles now published in the windows.
    """
    return sum(sync_windows(engine, path, key, timeframe, windows))


def delete_series(path: Path | str, key: SecurityKey, timeframe: str | None = None) -> int:
    """Remove a series (or every timeframe of a security) from the publication in one transaction."""
    with closing(connect(path)) as conn:
        _ensure_schema(conn)
        with write_transaction(conn):
            where = "secid = ? AND board = ?" if timeframe is None else _SERIES_WHERE
            params: tuple[str, ...] = (key.secid, key.board)
            if timeframe is not None:
                params = (*params, timeframe)
            deleted = conn.execute(f"DELETE FROM candles WHERE {where}", params).rowcount
            conn.execute(f"DELETE FROM series WHERE {where}", params)
    return deleted


# --- securities ----------------------------------------------------------------------------------


def _text(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.strftime(TIMESTAMP_FORMAT)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    return value


def sync_securities(engine: sa.Engine, path: Path | str) -> int:
    """Replace the publication's ``securities`` with the warehouse's, in one transaction."""
    with engine.connect() as wconn:
        rows = wconn.execute(
            sa.select(*(warehouse_securities.c[name] for name in SECURITY_COLUMNS)).order_by(
                warehouse_securities.c.secid, warehouse_securities.c.board
            )
        ).all()
    values = [tuple(_text(v) for v in row) for row in rows]
    with closing(connect(path)) as conn:
        _ensure_schema(conn)
        with write_transaction(conn):
            conn.execute("DELETE FROM securities")
            conn.executemany(_INSERT_SECURITY, values)
    return len(values)


# --- rebuild -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesSpan:
    """A series and the span of ``begin`` it covers (naive Moscow time)."""

    key: SecurityKey
    timeframe: str
    first: dt.datetime
    last: dt.datetime


def _as_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return to_moscow_naive(value)
    return dt.datetime.fromisoformat(str(value))


def warehouse_series(engine: sa.Engine) -> list[SeriesSpan]:
    """Every (secid, board, timeframe) in the warehouse with its first and last ``begin``."""
    c = warehouse_candles.c
    query = sa.select(c.secid, c.board, c.timeframe, sa.func.min(c.begin), sa.func.max(c.begin)).group_by(
        c.secid, c.board, c.timeframe
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        SeriesSpan(SecurityKey(secid, board), timeframe, _as_datetime(first), _as_datetime(last))
        for secid, board, timeframe, first, last in rows
    ]


def published_series(path: Path | str) -> list[SeriesSpan]:
    """Every series the publication holds, from its ``series`` table."""
    with closing(connect(path)) as conn:
        _ensure_schema(conn)
        rows = conn.execute("SELECT secid, board, timeframe, first_begin, last_begin FROM series").fetchall()
    return [
        SeriesSpan(SecurityKey(secid, board), timeframe, _as_datetime(first), _as_datetime(last))
        for secid, board, timeframe, first, last in rows
    ]


def year_windows(first: dt.datetime, last: dt.datetime) -> list[Window]:
    """Calendar-year windows ``[Jan 1, next Jan 1)`` covering ``first``..``last``."""
    years = range(first.year, last.year + 1)
    return [(dt.datetime(year, 1, 1), dt.datetime(year + 1, 1, 1)) for year in years]


@dataclass(frozen=True)
class RebuildResult:
    candles: int
    series: int
    removed_series: int
    securities: int
    recreated: bool


def rebuild(engine: sa.Engine, path: Path | str) -> RebuildResult:
    """Make the publication equal to the warehouse, in place, while readers keep reading.

    One transaction per (series, calendar year): each replaces that year of the series with the
    warehouse's rows, so at any moment every partition is either in its old or in its new state.
    Series the warehouse no longer has are removed (one transaction each); ``securities`` is
    replaced. The file is never swapped (see the module docstring for why).
    """
    recreated = ensure_schema(path)
    securities_count = sync_securities(engine, path)
    wanted = {(span.key, span.timeframe): span for span in warehouse_series(engine)}
    have = {(span.key, span.timeframe): span for span in published_series(path)}
    total = 0
    for (key, timeframe), span in sorted(wanted.items(), key=lambda item: (item[0][0], item[0][1])):
        first, last = span.first, span.last
        old = have.get((key, timeframe))
        if old is not None:
            first, last = min(first, old.first), max(last, old.last)
        for window in year_windows(first, last):
            total += sync_partitions(engine, path, key, timeframe, [window])
    removed = 0
    for key, timeframe in sorted(set(have) - set(wanted)):
        delete_series(path, key, timeframe)
        removed += 1
    with closing(connect(path)) as conn:
        conn.execute("PRAGMA optimize")
    return RebuildResult(total, len(wanted), removed, securities_count, recreated)


# --- reading (tests, benchmarks, the CLI) ----------------------------------------------------------


def read_published(
    path: Path | str, key: SecurityKey, timeframe: str, start: dt.datetime, end: dt.datetime
) -> list[tuple[Any, ...]]:
    """Rows of one series with ``begin`` in ``[start, end)``, ordered by ``begin``, as stored."""
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        return conn.execute(
            f"SELECT {_QUOTED_CANDLE_COLUMNS} FROM candles"
            f" WHERE {_SERIES_WHERE} AND begin >= ? AND begin < ? ORDER BY begin",
            (
                key.secid,
                key.board,
                timeframe,
                to_moscow_naive(start).strftime(TIMESTAMP_FORMAT),
                to_moscow_naive(end).strftime(TIMESTAMP_FORMAT),
            ),
        ).fetchall()
