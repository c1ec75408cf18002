"""The publication file: window syncs, neighbours, atomicity under a concurrent reader, rebuild."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import yaml

from candlestick_pipeline.defs.publish import iss_route, serve
from candlestick_pipeline.lib import publication, warehouse
from candlestick_pipeline.lib.frames import empty_candles
from candlestick_pipeline_tests.publish.helpers import (
    DAY,
    GAZP,
    NEXT_DAY,
    SBER,
    USD,
    day_window,
    fill_known,
    minute_day,
    warehouse_rows,
    year_window,
)

METADATA = yaml.safe_load(serve.METADATA.read_text())


def _engine(dsn: str) -> sa.Engine:
    engine = warehouse.create_warehouse_engine(dsn)
    warehouse.migrate(engine)
    return engine


def _published(path: Path, key, timeframe: str, window: tuple[dt.datetime, dt.datetime]) -> list[dict]:
    rows = publication.read_published(path, key, timeframe, *window)
    return [dict(zip(publication.CANDLE_COLUMNS, row, strict=True)) for row in rows]


def _series(path: Path) -> dict[tuple[str, str, str], tuple[str, str, int]]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT secid, board, timeframe, first_begin, last_begin, candles FROM series"
        ).fetchall()
    return {(r[0], r[1], r[2]): (r[3], r[4], r[5]) for r in rows}


@pytest.fixture
def known_engine(warehouse_dsn: str) -> sa.Engine:
    engine = _engine(warehouse_dsn)
    fill_known(engine)
    yield engine
    engine.dispose()


def test_schema_is_wal_with_the_expected_keys(tmp_path: Path) -> None:
    path = tmp_path / "publication.db"
    assert publication.ensure_schema(path) is True
    assert publication.ensure_schema(path) is False
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        info = sorted(conn.execute("PRAGMA table_info(candles)").fetchall(), key=lambda r: r[5])
        assert [r[1] for r in info if r[5]] == ["secid", "board", "timeframe", "begin"]


def _plan(path: Path, sql: str, params: dict[str, object]) -> str:
    with closing(sqlite3.connect(path)) as conn:
        return " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def test_every_published_query_is_an_index_search(tmp_path: Path) -> None:
    """The canned queries, the ISS route and the table view's series filter never scan candles."""
    path = tmp_path / "publication.db"
    publication.ensure_schema(path)
    queries = METADATA["databases"]["publication"]["queries"]
    params = {"secid": "SBER", "board": "TQBR", "timeframe": "1m", "from": "", "till": "", "after": ""}
    plan = _plan(path, queries["candle_series"]["sql"], params)
    assert "SEARCH candles USING PRIMARY KEY" in plan and "TEMP B-TREE" not in plan, plan
    plan = _plan(path, queries["latest_candles"]["sql"], {"timeframe": "1d"})
    assert plan.startswith("SEARCH s USING INDEX series_by_timeframe") and "SCAN c" not in plan, plan
    request = iss_route.parse_request(
        {"engine": "stock", "market": "shares", "board": "TQBR", "secid": "SBER"}, [("interval", "1")]
    )
    plan = _plan(path, *iss_route.candles_sql(request))
    assert "SEARCH candles USING PRIMARY KEY" in plan and "TEMP B-TREE" not in plan, plan
    table_view = (
        "select * from candles where secid = :p0 and board = :p1 and timeframe = :p2 and begin >= :p3"
        " order by secid, board, timeframe, begin limit 1001"
    )
    plan = _plan(path, table_view, {"p0": "SBER", "p1": "TQBR", "p2": "1m", "p3": "2024"})
    assert "SEARCH candles USING PRIMARY KEY" in plan and "TEMP B-TREE" not in plan, plan
    cross_section = "select * from candles where timeframe = :p0 and begin = :p1"
    assert "candles_by_timeframe_begin" in _plan(
        path, cross_section, {"p0": "1d", "p1": "2024-06-03 00:00:00"}
    )


def test_sync_replaces_the_window_and_leaves_neighbours(known_engine: sa.Engine, tmp_path: Path) -> None:
    path = tmp_path / "publication.db"
    day, next_day = day_window(DAY), day_window(NEXT_DAY)
    assert publication.sync_partitions(known_engine, path, SBER, "1m", [day, next_day]) == 2040
    assert publication.sync_partitions(known_engine, path, SBER, "1d", [year_window(2023)]) == 365
    assert _published(path, SBER, "1m", day) == warehouse_rows(known_engine, SBER, "1m", *day)
    old_next = _published(path, SBER, "1m", next_day)
    old_daily = _published(path, SBER, "1d", year_window(2023))

    # A correction of DAY in the warehouse: fewer candles, other prices.
    corrected = minute_day(DAY, seed=9, base=300.0).head(700)
    warehouse.replace_candles(known_engine, SBER, "1m", *day, corrected)
    assert publication.sync_partitions(known_engine, path, SBER, "1m", [day]) == 700

    new_day = _published(path, SBER, "1m", day)
    assert new_day == warehouse_rows(known_engine, SBER, "1m", *day)
    assert len(new_day) == 700 and new_day[0]["open"] == 300.0
    assert _published(path, SBER, "1m", next_day) == old_next
    assert _published(path, SBER, "1d", year_window(2023)) == old_daily
    series = _series(path)
    assert series[("SBER", "TQBR", "1m")] == ("2024-01-03 06:50:00", "2024-01-04 23:49:00", 1720)
    assert series[("SBER", "TQBR", "1d")][2] == 365


def test_a_warehouse_read_that_fails_mid_sync_leaves_the_publication_as_it_was(
    known_engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "publication.db"
    day, next_day = day_window(DAY), day_window(NEXT_DAY)
    publication.sync_partitions(known_engine, path, SBER, "1m", [day, next_day])
    before = (_published(path, SBER, "1m", day), _published(path, SBER, "1m", next_day), _series(path))
    warehouse.replace_candles(known_engine, SBER, "1m", *day, minute_day(DAY, seed=9, base=300.0))
    real_reader = warehouse.candle_row_reader

    @contextmanager
    def failing_reader(*args: object) -> Iterator[warehouse.RowReader]:
        with real_reader(*args) as read:  # type: ignore[arg-type]

            def read_then_fail(start: dt.datetime, end: dt.datetime) -> Iterator[tuple[object, ...]]:
                for number, row in enumerate(read(start, end)):
                    if start == next_day[0] and number == 100:  # DAY is in, half of NEXT_DAY too
                        raise sa.exc.OperationalError("SELECT", {}, Exception("connection lost"))
                    yield row

            yield read_then_fail

    monkeypatch.setattr(warehouse, "candle_row_reader", failing_reader)
    with pytest.raises(sa.exc.OperationalError, match="connection lost"):
        publication.sync_partitions(known_engine, path, SBER, "1m", [day, next_day])
    after = (_published(path, SBER, "1m", day), _published(path, SBER, "1m", next_day), _series(path))
    assert after == before
    monkeypatch.undo()
    assert publication.sync_partitions(known_engine, path, SBER, "1m", [day, next_day]) == 2040
    assert _published(path, SBER, "1m", day) == warehouse_rows(known_engine, SBER, "1m", *day)


def test_an_emptied_window_is_emptied_and_the_series_row_goes_with_the_last_candle(
    known_engine: sa.Engine, tmp_path: Path
) -> None:
    path = tmp_path / "publication.db"
    publication.sync_partitions(known_engine, path, USD, "1h", [day_window(DAY)])
    assert ("USD000UTSTOM", "CETS", "1h") in _series(path)
    warehouse.replace_candles(known_engine, USD, "1h", *day_window(DAY), empty_candles())
    assert publication.sync_partitions(known_engine, path, USD, "1h", [day_window(DAY)]) == 0
    assert _published(path, USD, "1h", day_window(DAY)) == []
    assert ("USD000UTSTOM", "CETS", "1h") not in _series(path)


def test_windows_may_be_aware_moscow_datetimes(known_engine: sa.Engine, tmp_path: Path) -> None:
    moscow = ZoneInfo("Europe/Moscow")
    start = dt.datetime(2024, 1, 3, tzinfo=moscow)
    path = tmp_path / "publication.db"
    assert (
        publication.sync_partitions(known_engine, path, SBER, "1m", [(start, start + dt.timedelta(days=1))])
        == 1020
    )
    with pytest.raises(ValueError, match="empty window"):
        publication.sync_partitions(known_engine, path, SBER, "1m", [(start, start)])
    with pytest.raises(ValueError, match="unknown timeframe"):
        publication.sync_partitions(known_engine, path, SBER, "5m", [day_window(DAY)])


def test_sync_securities_copies_the_reference_rows(known_engine: sa.Engine, tmp_path: Path) -> None:
    path = tmp_path / "publication.db"
    assert publication.sync_securities(known_engine, path) == 3
    with closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        rows = {r["secid"]: dict(r) for r in conn.execute("SELECT * FROM securities")}
    assert set(rows) == {"SBER", "GAZP", "USD000UTSTOM"}
    assert rows["USD000UTSTOM"]["engine"] == "currency" and rows["USD000UTSTOM"]["market"] == "selt"
    assert rows["SBER"]["listed_from"] == "2010-01-01" and rows["SBER"]["is_primary"] == 1
    dt.datetime.strptime(rows["SBER"]["added_at"], "%Y-%m-%d %H:%M:%S")


def _fingerprint(rows: list[tuple]) -> str:
    return hashlib.sha1(repr(rows).encode()).hexdigest()


def test_a_concurrent_reader_sees_each_partition_old_or_new_never_a_mix(tmp_path: Path) -> None:
    """Two warehouses hold versions A and B of two partitions; a writer flips the publication
    between them (one sync = one transaction over both windows) while a reader, connected like
    Datasette (``mode=ro``), reads both partitions in one read transaction again and again."""
    day, next_day = day_window(DAY), day_window(NEXT_DAY)
    versions = {}
    engines = {}
    for name, seed, count in (("A", 1, 1020), ("B", 7, 600)):
        engine = _engine(f"sqlite:///{tmp_path / f'warehouse_{name}.db'}")
        warehouse.replace_candles(engine, SBER, "1m", *day, minute_day(DAY, seed=seed).head(count))
        warehouse.replace_candles(
            engine, SBER, "1m", *next_day, minute_day(NEXT_DAY, seed=seed + 1).head(count)
        )
        engines[name] = engine
    path = tmp_path / "publication.db"
    for name in ("B", "A"):  # ends on A
        publication.sync_partitions(engines[name], path, SBER, "1m", [day, next_day])
        versions[name] = (
            _fingerprint(publication.read_published(path, SBER, "1m", *day)),
            _fingerprint(publication.read_published(path, SBER, "1m", *next_day)),
        )
    assert versions["A"] != versions["B"]

    stop = threading.Event()
    seen: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            uri = f"{path.resolve().as_uri()}?mode=ro"
            with closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as conn:
                sql = (
                    "SELECT * FROM candles WHERE secid = 'SBER' AND board = 'TQBR' AND timeframe = '1m'"
                    " AND begin >= ? AND begin < ? ORDER BY begin"
                )
                bounds = [
                    (s.strftime("%Y-%m-%d %H:%M:%S"), e.strftime("%Y-%m-%d %H:%M:%S"))
                    for s, e in (day, next_day)
                ]
                while not stop.is_set():
                    conn.execute("BEGIN")
                    first = _fingerprint(conn.execute(sql, bounds[0]).fetchall())
                    second = _fingerprint(conn.execute(sql, bounds[1]).fetchall())
                    conn.execute("COMMIT")
                    seen.append((first, second))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    flips = 0
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            for name in ("B", "A"):
                publication.sync_partitions(engines[name], path, SBER, "1m", [day, next_day])
                flips += 1
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not errors, errors
    assert flips >= 4 and len(seen) >= 20
    states = set(seen)
    assert states <= {versions["A"], versions["B"]}, "a reader saw a partition half-written or mixed"
    assert states == {versions["A"], versions["B"]}, "the reader should have seen both versions"


def test_rebuild_in_place_keeps_the_file_and_open_readers(known_engine: sa.Engine, tmp_path: Path) -> None:
    path = tmp_path / "publication.db"
    # A stale publication: an old copy of SBER 1m, a series the warehouse no longer has, no securities.
    other = _engine(f"sqlite:///{tmp_path / 'other.db'}")
    warehouse.replace_candles(other, SBER, "1m", *day_window(DAY), minute_day(DAY, seed=5).head(10))
    warehouse.replace_candles(other, GAZP, "1m", *day_window(DAY), minute_day(DAY, seed=6).head(10))
    publication.sync_partitions(other, path, SBER, "1m", [day_window(DAY)])
    publication.sync_partitions(other, path, GAZP, "1m", [day_window(DAY)])
    inode = os.stat(path).st_ino
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as reader:  # a Datasette-like reader stays open
        assert reader.execute("SELECT count(*) FROM candles").fetchone()[0] == 20
        result = publication.rebuild(known_engine, path)
        assert os.stat(path).st_ino == inode, "rebuild must not swap the file under open readers"
        assert result.series == 4 and result.removed_series == 1 and result.securities == 3
        assert result.candles == 1020 * 2 + 365 + 200 + 17
        assert reader.execute("SELECT count(*) FROM candles").fetchone()[0] == result.candles
    for key, timeframe, window in (
        (SBER, "1m", (dt.datetime(2024, 1, 1), dt.datetime(2024, 2, 1))),
        (SBER, "1d", year_window(2023)),
        (GAZP, "1d", year_window(2023)),
        (USD, "1h", day_window(DAY)),
    ):
        assert _published(path, key, timeframe, window) == warehouse_rows(
            known_engine, key, timeframe, *window
        )
    assert _published(path, GAZP, "1m", day_window(DAY)) == []
    assert set(_series(path)) == {
        ("SBER", "TQBR", "1m"),
        ("SBER", "TQBR", "1d"),
        ("GAZP", "TQBR", "1d"),
        ("USD000UTSTOM", "CETS", "1h"),
    }


def test_an_older_schema_is_recreated_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "publication.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE candles (secid TEXT, interval INTEGER)")
        conn.execute("INSERT INTO candles VALUES ('SBER', 1)")
        conn.commit()
    assert publication.ensure_schema(path) is True
    with closing(sqlite3.connect(path)) as conn:
        assert "timeframe" in [r[1] for r in conn.execute("PRAGMA table_info(candles)")]
        assert conn.execute("SELECT count(*) FROM candles").fetchone()[0] == 0
        conn.execute(f"PRAGMA user_version = {publication.SCHEMA_VERSION + 1}")
    with pytest.raises(publication.PublicationError, match="newer"):
        publication.ensure_schema(path)


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "publication.db"
    path.write_bytes(b"not a database at all, just text" * 100)
    with pytest.raises(publication.PublicationError, match="not a usable SQLite file"):
        publication.ensure_schema(path)


def test_year_windows_cover_the_span() -> None:
    windows = publication.year_windows(dt.datetime(2022, 12, 31, 23, 59), dt.datetime(2024, 1, 1))
    assert windows == [year_window(2022), year_window(2023), year_window(2024)]
