"""Fetch spans: adjacent partitions of a run paged as one ISS stream, then split back by ``begin``."""

from __future__ import annotations

import datetime as dt

import pytest

from candlestick_pipeline.defs.candles.loading import load_partitions, plan_spans
from candlestick_pipeline.defs.candles.partitions import CandlePartition, multi_key, parse_candle_partition
from candlestick_pipeline.defs.iss.client import ISSClient
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import TIMEFRAMES, Timeframe
from candlestick_pipeline.standin.server import ISSStandIn

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


def _lengths(partitions: list[CandlePartition], timeframe: Timeframe, concurrency: int) -> list[int]:
    spans = plan_spans(partitions, timeframe, concurrency)
    # Every partition is in exactly one span, in order, and a span's partitions are adjacent.
    assert [p for span in spans for p in span.partitions] == partitions
    for span in spans:
        assert all(a.end == b.start for a, b in zip(span.partitions, span.partitions[1:], strict=False))
    return [len(span.partitions) for span in spans]


@pytest.mark.parametrize(
    ("days", "concurrency", "expected"),
    [
        (1, 4, [1]),
        (3, 4, [1, 1, 1]),  # never more spans than partitions
        (5, 4, [2, 1, 1, 1]),
        (120, 4, [30] * 4),  # as many spans as fetches in flight
        (120, 8, [15] * 8),
        (365, 4, [31] * 5 + [30] * 7),  # capped at 31 days, in a multiple of the concurrency
        (40, 1, [20, 20]),
    ],
)
def test_spans_are_balanced_across_the_concurrency_and_capped(
    days: int, concurrency: int, expected: list[int]
) -> None:
    assert _lengths(_days(SBER, dt.date(2025, 1, 1), days), TIMEFRAMES["1m"], concurrency) == expected


def test_spans_never_cross_a_gap_or_a_security() -> None:
    parts = (
        _days(SBER, dt.date(2025, 1, 1), 3)
        + _days(SBER, dt.date(2025, 1, 10), 2)
        + _days(GAZP, dt.date(2025, 1, 12), 2)
    )
    spans = plan_spans(parts, TIMEFRAMES["1m"], 1)
    assert [span.describe() for span in spans] == [
        "2025-01-01 .. 2025-01-03 (3 partitions)",
        "2025-01-10 .. 2025-01-11 (2 partitions)",
        "2025-01-12 .. 2025-01-13 (2 partitions)",
    ]


def test_monthly_partitions_span_up_to_a_year(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _lengths(_months(SBER, 2023, 24), TIMEFRAMES["1h"], 1) == [12, 12]
    monkeypatch.setenv("CANDLESTICK_FETCH_SPAN_MAX", "1")
    assert _lengths(_months(SBER, 2023, 3), TIMEFRAMES["1h"], 1) == [1, 1, 1]
    monkeypatch.setenv("CANDLESTICK_FETCH_SPAN_MAX", "0")
    with pytest.raises(Exception, match="CANDLESTICK_FETCH_SPAN_MAX"):
        plan_spans(_months(SBER, 2023, 3), TIMEFRAMES["1h"], 1)


def test_a_span_load_equals_the_source_partition_by_partition_with_fewer_requests(
    standin: ISSStandIn, sqlite_dsn: str
) -> None:
    standin.set_now(NOW)
    engine = warehouse.create_warehouse_engine(sqlite_dsn)
    try:
        warehouse.migrate(engine)
        # 5 June (Thu) .. 10 June (Tue, still open at 15:00): a weekend inside, today partial.
        parts = _days(SBER, dt.date(2025, 6, 5), 6)
        with ISSClient(standin.base_url, max_concurrency=1) as client:
            info = client.get_security("SBER", "TQBR")
            standin.reset_stats()
            loads = load_partitions(
                client,
                engine,
                info,
                TIMEFRAMES["1m"],
                parts,
                concurrency=1,
                final_after=dt.timedelta(minutes=30),
            )
        one_stream = standin.candle_requests()
        assert {load.fetch for load in loads} == {"2025-06-05 .. 2025-06-10 (6 partitions)"}
        assert {load.pages for load in loads} == {one_stream}
        for load in loads:
            part = load.partition
            source = standin.market.candles_frame("SBER", "TQBR", 1, part.start_naive, part.end_naive, NOW)
            stored = warehouse.read_candles(engine, SBER, "1m", part.start_naive, part.end_naive)
            assert load.rows == stored.height == source.height > 0
            assert stored.select(source.columns).equals(source)
            assert load.first_begin == source["begin"].min() and load.last_begin == source["begin"].max()
            assert load.final is (part.date_key != "2025-06-10")

        # Paging each day on its own costs a partial and an empty page per day.
        with ISSClient(standin.base_url, max_concurrency=1) as client:
            standin.reset_stats()
            for part in parts:
                load_partitions(
                    client, engine, info, TIMEFRAMES["1m"], [part], concurrency=1, final_after=dt.timedelta(0)
                )
        assert one_stream < standin.candle_requests() - len(parts) // 2
    finally:
        engine.dispose()
