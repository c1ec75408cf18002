"""The warehouse library against both backends (SQLite file and a fresh PostgreSQL database)."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from polars.testing import assert_frame_equal

from candlestick_pipeline.lib.frames import CANDLE_SCHEMA
from candlestick_pipeline.lib.securities import SecurityInfo, SecurityKey
from candlestick_pipeline.lib.timeframes import MOSCOW
from candlestick_pipeline.lib.warehouse import (
    WarehouseConnectionError,
    WarehouseError,
    candle_row_reader,
    candle_store,
    count_candles,
    create_warehouse_engine,
    current_revision,
    delete_security,
    get_security,
    head_revision,
    list_securities,
    metadata,
    migrate,
    read_candles,
    redact_dsn,
    replace_candles,
    replace_candles_many,
    upsert_security,
)
from candlestick_pipeline.lib.warehouse.copy_binary import ROWS_PER_CHUNK
from candlestick_pipeline.lib.warehouse.schema import VERSION_TABLE

SBER = SecurityKey("SBER", "TQBR")
GAZP = SecurityKey("GAZP", "TQBR")
DAY = dt.timedelta(days=1)
D1 = dt.datetime(2025, 3, 3)
D2 = D1 + DAY
D3 = D2 + DAY


def candles_frame(
    day: dt.datetime, count: int = 30, price: float = 100.0, step_minutes: int = 1
) -> pl.DataFrame:
    """``count`` one-minute candles from 10:00 Moscow time of ``day``, prices rising from ``price``."""
    begins = [day + dt.timedelta(hours=10, minutes=i * step_minutes) for i in range(count)]
    return pl.DataFrame(
        {
            "begin": begins,
            "end": [b + dt.timedelta(seconds=59) for b in begins],
            "open": [price + i for i in range(count)],
            "high": [price + i + 0.5 for i in range(count)],
            "low": [price + i - 0.5 for i in range(count)],
            "close": [price + i + 0.25 for i in range(count)],
            "value": [(price + i) * 1000.0 for i in range(count)],
            "volume": [1000 + i for i in range(count)],
        },
        schema=CANDLE_SCHEMA,
    )


@pytest.fixture
def engine(warehouse_dsn: str) -> Iterator[sa.Engine]:
    engine = create_warehouse_engine(warehouse_dsn)
    migrate(engine)
    yield engine
    engine.dispose()


def everything(engine: sa.Engine) -> pl.DataFrame:
    """All candles, every series, in a stable order (to prove what did not change)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(metadata.tables["candles"]).order_by(
                *(metadata.tables["candles"].c[name] for name in ("secid", "board", "timeframe", "begin"))
            )
        ).all()
    return pl.DataFrame(
        [tuple(r) for r in rows], orient="row", schema=[c.name for c in metadata.tables["candles"].c]
    )


# --- schema and migrations --------------------------------------------------------------------


def test_migrate_creates_the_tables_and_is_idempotent(warehouse_dsn: str) -> None:
    engine = create_warehouse_engine(warehouse_dsn)
    try:
        assert current_revision(engine) is None
        head = migrate(engine)
        assert head == head_revision() == "0001"
        assert migrate(engine) == head
        assert current_revision(engine) == head
        tables = set(sa.inspect(engine).get_table_names())
        assert {"candles", "securities", VERSION_TABLE} <= tables
        with engine.connect() as conn:
            # The migrated database and the metadata the code queries with describe the same schema.
            diffs = compare_metadata(
                MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}), metadata
            )
        assert diffs == []
        pk = sa.inspect(engine).get_pk_constraint("candles")
        assert pk["constrained_columns"] == ["secid", "board", "timeframe", "begin"]
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'candles'").scalar()
            assert "WITHOUT ROWID" in str(ddl)
    finally:
        engine.dispose()


def test_migrate_refuses_a_database_newer_than_the_code(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0999'"))
    with pytest.raises(WarehouseError, match="0999"):
        migrate(engine)


def test_migrate_from_two_threads_at_once(warehouse_dsn: str) -> None:
    engines = [create_warehouse_engine(warehouse_dsn) for _ in range(2)]
    results: list[str] = []
    errors: list[BaseException] = []

    def run(engine: sa.Engine) -> None:
        try:
            results.append(migrate(engine))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in engines:
        e.dispose()
    assert errors == []
    assert results == [head_revision()] * 2


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "warehouse.db"
    engine = create_warehouse_engine(f"sqlite:///{path}")
    try:
        assert path.parent.is_dir()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    finally:
        engine.dispose()


def test_postgres_urls_use_psycopg3(pg_dsn: str) -> None:
    for scheme in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        engine = create_warehouse_engine(pg_dsn.replace("postgresql+psycopg://", scheme))
        try:
            assert engine.dialect.driver == "psycopg"
        finally:
            engine.dispose()


# --- DSNs and connection errors ----------------------------------------------------------------


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://bob:s3cr%40t@db:5432/wh") == "postgresql://bob:***@db:5432/wh"
    assert redact_dsn("postgresql+psycopg://bob@db/wh") == "postgresql+psycopg://bob@db/wh"
    assert redact_dsn("sqlite:////data/warehouse.db") == "sqlite:////data/warehouse.db"
    assert (
        redact_dsn("host=db user=bob password=hunter2 dbname=wh") == "host=db user=bob password=*** dbname=wh"
    )
    assert redact_dsn("postgresql://bob@db/wh?password=x&sslmode=require") == (
        "postgresql://bob@db/wh?password=***&sslmode=require"
    )
    # Malformed URLs are redacted too: an unescaped "@" in the password, a port that is no number.
    assert redact_dsn("postgresql://bob:p@ss@db/wh") == "postgresql://bob:***@db/wh"
    assert redact_dsn("postgresql://bob:pw@db:port/wh") == "postgresql://bob:***@db:port/wh"
    with pytest.raises(WarehouseError) as info:
        create_warehouse_engine("postgresql://bob:pw@db:port/wh")
    assert "pw" not in str(info.value).replace("postgresql", "")


def test_a_dsn_that_does_not_connect_raises_without_the_password() -> None:
    dsn = "postgresql+psycopg://postgres:topsecret@127.0.0.1:1/x"
    with pytest.raises(WarehouseConnectionError) as info:
        create_warehouse_engine(dsn)
    message = str(info.value)
    assert "topsecret" not in message
    assert "postgres:***@127.0.0.1:1/x" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unsupported_backend() -> None:
    with pytest.raises(WarehouseError, match="unsupported"):
        create_warehouse_engine("mysql://root:pw@localhost/x")


# --- replacing windows ------------------------------------------------------------------------


def test_replace_is_idempotent_and_round_trips(engine: sa.Engine) -> None:
    frame = candles_frame(D1)
    assert replace_candles(engine, SBER, "1m", D1, D2, frame) == 30
    first = everything(engine)
    assert replace_candles(engine, SBER, "1m", D1, D2, frame) == 30
    assert_frame_equal(everything(engine), first)
    assert count_candles(engine) == 30
    assert_frame_equal(read_candles(engine, SBER, "1m", D1, D2), frame)


def test_begin_round_trips_exactly(engine: sa.Engine) -> None:
    frame = candles_frame(D1, count=3)
    replace_candles(engine, SBER, "1m", D1, D2, frame)
    back = read_candles(engine, SBER, "1m", D1, D2)
    assert back.schema == pl.Schema(CANDLE_SCHEMA)
    assert back["begin"].to_list() == [D1 + dt.timedelta(hours=10, minutes=i) for i in range(3)]
    assert back["begin"].dtype == pl.Datetime("us", None)
    if engine.dialect.name == "sqlite":
        assert engine.url.database is not None
        with sqlite3.connect(engine.url.database) as raw:
            rows = raw.execute(
                'SELECT "begin", "end", typeof("begin") FROM candles ORDER BY "begin"'
            ).fetchall()
        assert rows[0] == ("2025-03-03 10:00:00", "2025-03-03 10:00:59", "text")
    else:
        with engine.connect() as conn:
            column_type = conn.exec_driver_sql(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_name = 'candles' AND column_name = 'begin'"
            ).scalar()
        assert column_type == "timestamp without time zone"


def test_replacing_a_window_leaves_everything_else_alone(engine: sa.Engine) -> None:
    replace_candles(engine, SBER, "1m", D1, D2, candles_frame(D1))
    replace_candles(engine, SBER, "1m", D2, D3, candles_frame(D2))
    replace_candles(engine, SBER, "1m", D3, D3 + DAY, candles_frame(D3))
    replace_candles(engine, SBER, "10m", D1, D3 + DAY, candles_frame(D2, step_minutes=10))
    replace_candles(engine, GAZP, "1m", D1, D3 + DAY, candles_frame(D2, price=200.0))
    before = everything(engine)

    replace_candles(engine, SBER, "1m", D2, D3, candles_frame(D2, count=5, price=500.0))

    after = everything(engine)
    changed = (
        (pl.col("secid") == "SBER")
        & (pl.col("timeframe") == "1m")
        & (pl.col("begin").cast(pl.String).str.starts_with("2025-03-04"))
    )
    assert_frame_equal(after.filter(~changed), before.filter(~changed))
    assert_frame_equal(read_candles(engine, SBER, "1m", D2, D3), candles_frame(D2, count=5, price=500.0))
    assert count_candles(engine, SBER, "1m") == 65
    assert count_candles(engine, SBER) == 95
    assert count_candles(engine, timeframe="1m") == 95
    assert count_candles(engine) == 125


def test_a_correction_replaces_values(engine: sa.Engine) -> None:
    replace_candles(engine, SBER, "1m", D1, D2, candles_frame(D1))
    corrected = candles_frame(D1).with_columns(pl.col("close") * 2, pl.col("volume") + 7)
    replace_candles(engine, SBER, "1m", D1, D2, corrected)
    assert_frame_equal(read_candles(engine, SBER, "1m", D1, D2), corrected)


def test_an_empty_frame_empties_the_window(engine: sa.Engine) -> None:
    replace_candles(engine, SBER, "1m", D1, D2, candles_frame(D1))
    assert replace_candles(engine, SBER, "1m", D1, D2, candles_frame(D1, count=0)) == 0
    assert count_candles(engine) == 0
    assert read_candles(engine, SBER, "1m", D1, D2).schema == pl.Schema(CANDLE_SCHEMA)


def test_aware_bounds_and_columns_are_converted_to_moscow(engine: sa.Engine) -> None:
    utc_start = dt.datetime(2025, 3, 2, 21, tzinfo=dt.UTC)  # 2025-03-03 00:00 in Moscow
    frame = candles_frame(D1).with_columns(
        pl.col("begin", "end").dt.replace_time_zone(MOSCOW.key).dt.convert_time_zone("UTC")
    )
    replace_candles(engine, SBER, "1m", utc_start, utc_start + DAY, frame)
    assert_frame_equal(read_candles(engine, SBER, "1m", D1, D2), candles_frame(D1))


def test_replace_many_windows_in_one_go(engine: sa.Engine) -> None:
    for day in (D1, D2, D3):
        replace_candles(engine, SBER, "1m", day, day + DAY, candles_frame(day))
    new = pl.concat([candles_frame(D1, count=3, price=1.0), candles_frame(D3, count=4, price=3.0)])
    # Two windows that do not touch: D2 in between must survive.
    assert replace_candles_many(engine, SBER, "1m", [(D3, D3 + DAY), (D1, D2)], new) == 7
    assert_frame_equal(
        read_candles(engine, SBER, "1m", D1, D3 + DAY),
        pl.concat([new.head(3), candles_frame(D2), new.tail(4)]),
    )
    # Contiguous windows are deleted as one range.
    assert replace_candles_many(engine, SBER, "1m", [(D1, D2), (D2, D3), (D3, D3 + DAY)], new) == 7
    assert count_candles(engine) == 7
    with pytest.raises(ValueError, match="outside"):
        replace_candles_many(engine, SBER, "1m", [(D1, D2), (D3, D3 + DAY)], candles_frame(D2))


# --- validation happens before the database is touched -----------------------------------------


def _row_versions(engine: sa.Engine) -> dict[dt.datetime, str]:
    """PostgreSQL: the transaction that wrote each stored candle of SBER 1m (``xmin``), by ``begin``."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT \"begin\", xmin::text FROM candles WHERE secid = 'SBER' AND timeframe = '1m'"
        ).all()
    return {begin: xmin for begin, xmin in rows}


def test_a_refresh_writes_only_the_candles_that_differ(engine: sa.Engine) -> None:
    replace_candles(engine, SBER, "1m", D1, D2, candles_frame(D1))
    replace_candles(engine, SBER, "1m", D2, D3, candles_frame(D2))
    before = _row_versions(engine) if engine.dialect.name == "postgresql" else {}
    # The same candles again: nothing is rewritten.
    assert replace_candles(engine, SBER, "1m", D1, D2, candles_frame(D1)) == 30
    if before:
        assert _row_versions(engine) == before
    # One corrected, one gone, one new (a minute after the last): only those three change.
    stored = candles_frame(D1)
    new_minute = stored.tail(1).with_columns(pl.col("begin", "end") + dt.timedelta(minutes=1))
    refreshed = pl.concat(
        [stored.with_columns(pl.col("close") + pl.lit(0.5) * (pl.int_range(30) == 7)), new_minute]
    )
    refreshed = refreshed.filter(pl.int_range(31) != 12)
    assert replace_candles(engine, SBER, "1m", D1, D2, refreshed) == 30
    assert_frame_equal(read_candles(engine, SBER, "1m", D1, D2), refreshed)
    assert_frame_equal(read_candles(engine, SBER, "1m", D2, D3), candles_frame(D2))
    if before:
        after = _row_versions(engine)
        begins = stored["begin"].to_list()
        rewritten = {begin for begin in after if after[begin] != before.get(begin)}
        assert rewritten == {begins[7], new_minute["begin"][0]}
        assert begins[12] not in after


def test_a_refresh_of_several_windows_writes_only_the_candles_that_differ(engine: sa.Engine) -> None:
    for day in (D1, D2, D3):
        replace_candles(engine, SBER, "1m", day, day + DAY, candles_frame(day))
    before = _row_versions(engine) if engine.dialect.name == "postgresql" else {}
    first, third = candles_frame(D1), candles_frame(D3)
    new = pl.concat([first.with_columns(pl.col("volume") + (pl.int_range(30) == 0)), third.head(29)])
    assert replace_candles_many(engine, SBER, "1m", [(D1, D2), (D3, D3 + DAY)], new) == 59
    assert_frame_equal(
        read_candles(engine, SBER, "1m", D1, D3 + DAY),
        pl.concat([new.head(30), candles_frame(D2), new.tail(29)]),
    )
    if before:
        after = _row_versions(engine)
        assert {begin for begin in after if after[begin] != before[begin]} == {first["begin"][0]}
        assert third["begin"][29] not in after


def test_a_zero_of_the_other_sign_is_written(pg_dsn: str) -> None:
    # 0.0 = -0.0 in SQL, but the stored value must be the frame's, bit for bit (SQLite keeps no -0.0).
    engine = create_warehouse_engine(pg_dsn)
    try:
        migrate(engine)
        frame = candles_frame(D1, count=4).with_columns(pl.lit(0.0).alias("value"))
        replace_candles(engine, SBER, "1m", D1, D2, frame)
        negative = frame.with_columns(pl.lit(-0.0).alias("value"))
        replace_candles(engine, SBER, "1m", D1, D2, negative)
        values = read_candles(engine, SBER, "1m", D1, D2)["value"].to_list()
        assert [math.copysign(1.0, value) for value in values] == [-1.0] * 4
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (
            lambda f: pl.concat([f, candles_frame(D2, count=1)]),
            r"1 row\(s\) with begin outside the window.*row 30 \(begin 2025-03-04 10:00:00\)",
        ),
        (lambda f: pl.concat([f, f.slice(3, 2)]), r"4 row\(s\) with a duplicate begin: row 3 .*row 30 "),
        (
            lambda f: f.with_columns(
                pl.when(pl.int_range(pl.len()) == 4).then(None).otherwise(pl.col("open")).alias("open")
            ),
            r"1 row\(s\) with nulls: row 4 ",
        ),
        (
            lambda f: f.with_columns(
                pl.when(pl.int_range(pl.len()) == 5)
                .then(float("nan"))
                .otherwise(pl.col("high"))
                .alias("high")
            ),
            r"with NaN: row 5 ",
        ),
        (
            lambda f: f.with_columns(pl.col("begin") + pl.duration(microseconds=1)),
            r"with sub-second begin/end",
        ),
        (lambda f: f.drop("volume"), r"does not fit the candle schema"),
        (lambda f: f.with_columns(pl.lit("x").alias("open")), r"does not fit the candle schema"),
    ],
    ids=["outside", "duplicate", "null", "nan", "sub-second", "missing-column", "bad-type"],
)
def test_an_invalid_frame_changes_nothing(
    engine: sa.Engine, mangle: Callable[[pl.DataFrame], pl.DataFrame], message: str
) -> None:
    replace_candles(engine, SBER, "1m", D1, D2, candles_frame(D1))
    before = everything(engine)
    with pytest.raises(ValueError, match=message):
        replace_candles(engine, SBER, "1m", D1, D2, mangle(candles_frame(D1, price=7.0)))
    assert_frame_equal(everything(engine), before)


def test_infinities_of_both_signs_are_not_taken_for_nan(engine: sa.Engine) -> None:
    # The quick check reads a NaN off a column's sum, and +inf + -inf sums to NaN too: the row-wise
    # check then finds no NaN, and the frame is written as it is.
    frame = candles_frame(D1, count=4).with_columns(
        pl.Series("value", [float("inf"), float("-inf"), 1.0, 2.0])
    )
    assert replace_candles(engine, SBER, "1m", D1, D2, frame) == 4
    assert read_candles(engine, SBER, "1m", D1, D2)["value"].to_list() == [
        float("inf"),
        float("-inf"),
        1.0,
        2.0,
    ]


def test_bad_windows_and_timeframes(engine: sa.Engine) -> None:
    with pytest.raises(ValueError, match="empty window"):
        replace_candles(engine, SBER, "1m", D2, D1, candles_frame(D1, count=0))
    with pytest.raises(ValueError, match="unknown timeframe"):
        replace_candles(engine, SBER, "2m", D1, D2, candles_frame(D1))


def test_a_failure_mid_write_keeps_the_old_rows(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    replace_candles(engine, SBER, "1m", D1, D2, candles_frame(D1))
    before = everything(engine)
    real_bulk_insert = candle_store._bulk_insert

    def insert_then_fail(conn: sa.Connection, *args: object) -> None:
        real_bulk_insert(conn, *args)  # type: ignore[arg-type]
        assert count_candles(engine) == 30  # other connections still see the old rows
        raise RuntimeError("injected after the delete and the insert")

    monkeypatch.setattr(candle_store, "_bulk_insert", insert_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        replace_candles(engine, SBER, "1m", D1, D2, candles_frame(D1, count=10, price=1.0))
    assert_frame_equal(everything(engine), before)


def test_concurrent_replaces_of_one_window_serialize(warehouse_dsn: str) -> None:
    engines = [create_warehouse_engine(warehouse_dsn) for _ in range(2)]
    migrate(engines[0])
    frame = candles_frame(D1, count=300)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def load(engine: sa.Engine) -> None:
        barrier.wait()
        for _ in range(10):
            try:
                replace_candles(engine, SBER, "1m", D1, D2, frame)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=load, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert count_candles(engines[0]) == 300
        assert_frame_equal(read_candles(engines[0], SBER, "1m", D1, D2), frame)
    finally:
        for e in engines:
            e.dispose()


def test_a_frame_larger_than_one_copy_chunk_round_trips(engine: sa.Engine) -> None:
    frame = candles_frame(D1, count=2 * ROWS_PER_CHUNK + 17)  # three COPY chunks on PostgreSQL
    end = D1 + 5 * DAY
    assert replace_candles(engine, SBER, "1m", D1, end, frame.reverse()) == frame.height
    assert_frame_equal(read_candles(engine, SBER, "1m", D1, end), frame)


def test_extreme_values_round_trip(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    old = dt.datetime(1970, 1, 1)
    frame = pl.DataFrame(
        {
            "begin": [
                old,
                dt.datetime(1999, 12, 31, 23, 59, 59),
                dt.datetime(2000, 1, 1),
                dt.datetime(2099, 12, 31, 23, 59),
            ],
            "end": [
                old,
                dt.datetime(1999, 12, 31, 23, 59, 59),
                dt.datetime(2000, 1, 1, 0, 0, 1),
                dt.datetime(2100, 1, 1),
            ],
            "open": [-1.5, 0.0, 1e-300, 1.7976931348623157e308],
            "high": [2.0, -0.0, 123456789.123456789, 5e-324],
            "low": [0.1, 0.2, 0.3, 1 / 3],
            "close": [1.0, 2.0, 3.0, 4.0],
            "value": [0.0, 1e15, 2.5, 7.0],
            "volume": [0, -1, 2**62, 9_223_372_036_854_775_807],
        },
        schema=CANDLE_SCHEMA,
    )
    replace_candles(engine, SBER, "1d", old, dt.datetime(2100, 1, 1), frame)
    assert_frame_equal(read_candles(engine, SBER, "1d", old, dt.datetime(2100, 1, 1)), frame)
    # The same rows in ISS's text form, for a copy into the publication.
    text = "%Y-%m-%d %H:%M:%S"
    expected = [
        ("SBER", "TQBR", "1d", begin.strftime(text), end.strftime(text), *values)
        for begin, end, *values in frame.iter_rows()
    ]
    with candle_row_reader(engine, SBER, "1d") as read:
        assert list(read(old, dt.datetime(2100, 1, 1))) == expected
        assert list(read(dt.datetime(2000, 1, 1), dt.datetime(2000, 1, 1, 0, 0, 1))) == expected[2:3]
        assert list(read(dt.datetime(2000, 1, 2), dt.datetime(2099, 1, 1))) == []
        assert list(read(old, dt.datetime(2100, 1, 1))) == expected  # the reader reads again
        # Two windows read side by side (each with its own cursor) do not mix, short or long, even
        # when the driver's rows come one batch of one at a time.
        monkeypatch.setattr(candle_store, "_READ_BATCH_ROWS", 1)
        for split in (dt.datetime(2000, 1, 1), dt.datetime(2000, 1, 2)):
            first, second = read(old, split), read(split, dt.datetime(2100, 1, 1))
            taken: tuple[list[tuple[object, ...]], list[tuple[object, ...]]] = ([], [])
            for _ in expected:  # alternately, one row at a time
                for rows, source in zip(taken, (first, second), strict=True):
                    rows.extend(itertools.islice(source, 1))
            assert [*taken[0], *taken[1]] == expected


# --- securities -------------------------------------------------------------------------------


def security(key: SecurityKey, **changes: object) -> SecurityInfo:
    values: dict[str, object] = {
        "secid": key.secid,
        "board": key.board,
        "engine": "stock",
        "market": "shares",
        "shortname": "Сбербанк",
        "name": "Сбербанк России ПАО ао",
        "isin": "RU0009029540",
        "decimals": 2,
        "currency": "SUR",
        "is_primary": True,
        "is_traded": True,
        "listed_from": dt.date(1997, 1, 1),
        "listed_till": None,
        "history_from": dt.date(2011, 11, 21),
        "history_till": dt.date(2025, 11, 21),
        "security_type": "common_share",
        "security_group": "stock_shares",
        "other_boards": ("SMAL", "SPEQ"),
    }
    values.update(changes)
    return SecurityInfo(**values)  # type: ignore[arg-type]


def test_securities_upsert_list_get_delete(engine: sa.Engine) -> None:
    assert list_securities(engine) == []
    assert get_security(engine, SBER) is None
    sber = security(SBER)
    gazp = security(
        GAZP, shortname="ГАЗПРОМ ао", other_boards=(), listed_till=dt.date(2030, 1, 1), decimals=None
    )
    upsert_security(engine, sber)
    upsert_security(engine, gazp)
    assert get_security(engine, SBER) == sber
    assert list_securities(engine) == [gazp, sber]

    with engine.connect() as conn:
        added = conn.execute(
            sa.select(metadata.tables["securities"].c.added_at).where(
                metadata.tables["securities"].c.secid == "SBER"
            )
        ).scalar_one()
    assert added.tzinfo is not None and added.utcoffset() == dt.timedelta(0)
    updated = security(SBER, is_traded=False, other_boards=("SMAL",))
    upsert_security(engine, updated)
    assert get_security(engine, SBER) == updated
    assert len(list_securities(engine)) == 2
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(metadata.tables["securities"]).where(metadata.tables["securities"].c.secid == "SBER")
        ).one()
    assert row.added_at == added and row.updated_at >= added

    replace_candles(engine, SBER, "1m", D1, D2, candles_frame(D1))
    replace_candles(engine, SBER, "1d", D1, D2 + DAY, candles_frame(D1, count=2))
    replace_candles(engine, GAZP, "1m", D1, D2, candles_frame(D1))
    assert delete_security(engine, GAZP) == 0
    assert get_security(engine, GAZP) is None
    assert count_candles(engine, GAZP) == 30  # kept unless asked
    assert delete_security(engine, SBER, delete_candles=True) == 32
    assert list_securities(engine) == []
    assert count_candles(engine) == 30
    assert delete_security(engine, SBER, delete_candles=True) == 0
