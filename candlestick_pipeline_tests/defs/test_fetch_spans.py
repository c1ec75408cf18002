"""Fetch spans: adjacent partitions of a run paged as one ISS query, written as the days complete."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa

from candlestick_pipeline.defs.candles import loading
from candlestick_pipeline.defs.candles.loading import PartitionLoad, load_partitions, plan_spans
from candlestick_pipeline.defs.candles.partitions import CandlePartition, multi_key, parse_candle_partition
from candlestick_pipeline.defs.iss.client import ISSClient
from candlestick_pipeline.defs.iss.errors import ISSResponseError
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.frames import CANDLE_SCHEMA
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import TIMEFRAMES
from candlestick_pipeline.standin.server import ISSStandIn
from candlestick_pipeline_tests.factories import security_info

SBER = SecurityKey("SBER", "TQBR")
GAZP = SecurityKey("GAZP", "TQBR")
NOW = dt.datetime(2025, 6, 10, 15, 0)


def _days(key: SecurityKey, first: dt.date, count: int) -> list[CandlePartition]:
    return [
        parse_candle_partition(
            TIMEFRAMES["1m"], str(multi_key(key, (first + dt.timedelta(days=i)).isoformat()))
        )
        for i in range(count)
    ]


def _months(key: SecurityKey, year: int, count: int) -> list[CandlePartition]:
    return [
        parse_candle_partition(TIMEFRAMES["1h"], str(multi_key(key, f"{year + m // 12}-{m % 12 + 1:02d}-01")))
        for m in range(count)
    ]


def _lengths(partitions: list[CandlePartition]) -> list[int]:
    spans = plan_spans(partitions)
    # Every partition is in exactly one span, in order, and a span's partitions are adjacent.
    assert [p for span in spans for p in span.partitions] == partitions
    for span in spans:
        assert all(a.end == b.start for a, b in zip(span.partitions, span.partitions[1:], strict=False))
    return [len(span.partitions) for span in spans]


@pytest.mark.parametrize("days", [1, 3, 120, 365, 1000])
def test_adjacent_partitions_are_one_iss_query(days: int) -> None:
    assert _lengths(_days(SBER, dt.date(2025, 1, 1), days)) == [days]


def test_spans_never_cross_a_gap_or_a_security() -> None:
    parts = (
        _days(SBER, dt.date(2025, 1, 1), 3)
        + _days(SBER, dt.date(2025, 1, 10), 2)
        + _days(GAZP, dt.date(2025, 1, 12), 2)
    )
    spans = plan_spans(parts)
    assert [span.describe() for span in spans] == [
        "2025-01-01 .. 2025-01-03 (3 partitions)",
        "2025-01-10 .. 2025-01-11 (2 partitions)",
        "2025-01-12 .. 2025-01-13 (2 partitions)",
    ]


def test_the_span_cap_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _lengths(_months(SBER, 2023, 24)) == [24]
    monkeypatch.setenv("CANDLESTICK_FETCH_SPAN_MAX", "10")
    assert _lengths(_months(SBER, 2023, 24)) == [10, 10, 4]
    monkeypatch.setenv("CANDLESTICK_FETCH_SPAN_MAX", "1")
    assert _lengths(_months(SBER, 2023, 3)) == [1, 1, 1]
    monkeypatch.setenv("CANDLESTICK_FETCH_SPAN_MAX", "0")
    with pytest.raises(Exception, match="CANDLESTICK_FETCH_SPAN_MAX"):
        plan_spans(_months(SBER, 2023, 3))


def _assert_stored_as_source(standin: ISSStandIn, engine: sa.Engine, loads: list[PartitionLoad]) -> None:
    """Each loaded partition holds exactly the stand-in's candles, and its record says so."""
    for load in loads:
        part = load.partition
        source = standin.market.candles_frame("SBER", "TQBR", 1, part.start_naive, part.end_naive, NOW)
        stored = warehouse.read_candles(engine, SBER, "1m", part.start_naive, part.end_naive)
        assert load.rows == stored.height == source.height
        assert stored.select(source.columns).equals(source)
        if source.height:
            assert load.first_begin == source["begin"].min() and load.last_begin == source["begin"].max()


def _load_sber(
    standin: ISSStandIn,
    engine: sa.Engine,
    parts: list[CandlePartition],
    concurrency: int,
    final_after: dt.timedelta = dt.timedelta(0),
) -> list[PartitionLoad]:
    """``load_partitions`` of SBER 1m through a fresh client, the stand-in's counts reset first."""
    with ISSClient(standin.base_url, max_concurrency=concurrency) as client:
        info = client.get_security("SBER", "TQBR")
        standin.reset_stats()
        return load_partitions(
            client, engine, info, TIMEFRAMES["1m"], parts, concurrency=concurrency, final_after=final_after
        )


def test_a_span_load_equals_the_source_partition_by_partition_with_fewer_requests(
    standin: ISSStandIn, sqlite_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin.set_now(NOW)
    engine = warehouse.create_warehouse_engine(sqlite_dsn)
    try:
        warehouse.migrate(engine)
        # 5 June (Thu) .. 10 June (Tue, still open at 15:00): a weekend inside, today partial.
        parts = _days(SBER, dt.date(2025, 6, 5), 6)
        loads = _load_sber(standin, engine, parts, 1, final_after=dt.timedelta(minutes=30))
        one_stream = standin.candle_requests()
        assert {load.fetch for load in loads} == {"2025-06-05 .. 2025-06-10 (6 partitions)"}
        assert {load.pages for load in loads} == {one_stream}
        _assert_stored_as_source(standin, engine, loads)
        assert all(load.rows > 0 for load in loads)
        assert [load.final for load in loads] == [True] * 5 + [False]  # 10 June was still open

        # Paging each day on its own costs a partial and an empty page per day.
        monkeypatch.setenv("CANDLESTICK_FETCH_SPAN_MAX", "1")
        assert len(_load_sber(standin, engine, parts, 1)) == len(parts)
        assert one_stream < standin.candle_requests() - len(parts) // 2
    finally:
        engine.dispose()


def test_a_span_is_written_in_order_while_its_pages_arrive(
    standin: ISSStandIn, sqlite_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four pages in flight at interleaved offsets; complete days written in batches as they come."""
    standin.set_now(NOW)
    engine = warehouse.create_warehouse_engine(sqlite_dsn)
    original = warehouse.replace_candles_many
    writes: list[tuple[list[tuple[dt.datetime, dt.datetime]], int]] = []

    def recording(*args: Any, **kwargs: Any) -> int:
        # The windows written, and how many candle requests ISS had received by then.
        writes.append((list(args[3]), standin.candle_requests()))
        return original(*args, **kwargs)

    monkeypatch.setattr(warehouse, "replace_candles_many", recording)
    try:
        warehouse.migrate(engine)
        parts = _days(SBER, dt.date(2025, 5, 1), 40)
        loads = _load_sber(standin, engine, parts, 4)
        requests = standin.candle_requests()
        rows = sum(load.rows for load in loads)
        assert [load.partition for load in loads] == parts
        _assert_stored_as_source(standin, engine, loads)
        # One query: its pages, one empty page, and those sent past the end before it showed (at
        # most the 4 in flight and the 4 waiting beside them); all counted.
        assert {load.pages for load in loads} == {requests}
        assert math.ceil(rows / 500) + 1 <= requests <= math.ceil(rows / 500) + 2 * 4
        # Several batches, each of whole adjacent days, in order, every day once ...
        windows = [window for batch, _ in writes for window in batch]
        assert windows == [(part.start_naive, part.end_naive) for part in parts]
        assert len(writes) >= 4
        # ... and the first ones while pages were still being fetched.
        assert writes[0][1] < requests / 2
    finally:
        engine.dispose()


class _Stream:
    """A stand-in for ``CandleStream``: the given page frames, in the given order."""

    def __init__(self, frames: list[pl.DataFrame]) -> None:
        self._frames = frames
        self.pages = self.requests = len(frames)
        self.retries = 0
        self.server_time: dt.datetime | None = None

    def __iter__(self) -> Any:
        return iter(self._frames)


class _Client:
    def __init__(self, frames: list[pl.DataFrame]) -> None:
        self._frames = frames

    def stream_candles(self, *args: Any, **kwargs: Any) -> _Stream:
        return _Stream(self._frames)


def _candles(begins: list[dt.datetime]) -> pl.DataFrame:
    count = len(begins)
    return pl.DataFrame(
        {
            "begin": begins,
            "end": [b + dt.timedelta(seconds=59) for b in begins],
            **{name: [100.0] * count for name in ("open", "close", "high", "low", "value")},
            "volume": [1] * count,
        },
        schema=CANDLE_SCHEMA,
    )


def test_pages_out_of_begin_order_fail_the_load_and_leave_written_days_whole(
    sqlite_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "WRITE_BATCH_ROWS", 2)
    day1, day2, day3 = (dt.datetime(2025, 6, d, 10, 0) for d in (2, 3, 4))
    minute = dt.timedelta(minutes=1)
    frames = [
        _candles([day1, day1 + minute]),
        _candles([day2, day2 + minute]),  # day 1 is complete: written
        _candles([day1 + 2 * minute, day3]),  # a day-1 candle after day 1 was written
    ]
    engine = warehouse.create_warehouse_engine(sqlite_dsn)
    try:
        warehouse.migrate(engine)
        info = security_info(SBER, "Sberbank")
        with pytest.raises(ISSResponseError, match="pages out of begin order"):
            load_partitions(
                _Client(frames),  # type: ignore[arg-type]
                engine,
                info,
                TIMEFRAMES["1m"],
                _days(SBER, dt.date(2025, 6, 2), 3),
                concurrency=4,
                final_after=dt.timedelta(0),
            )
        stored = warehouse.read_candles(engine, SBER, "1m", day1 - 10 * 60 * minute, day3 + 60 * minute)
        assert stored.get_column("begin").to_list() == [day1, day1 + minute]
    finally:
        engine.dispose()
