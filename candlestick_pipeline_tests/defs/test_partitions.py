"""Partition keys: building, parsing, bad input, and the windows they stand for."""

from __future__ import annotations

import datetime as dt

import pytest

from candlestick_pipeline.defs.candles.partitions import (
    InvalidPartitionKeyError,
    date_keys_between,
    multi_key,
    parse_candle_partition,
)
from candlestick_pipeline.defs.candles.status import contiguous_runs
from candlestick_pipeline.lib.securities import InvalidSecurityKeyError, SecurityKey
from candlestick_pipeline.lib.timeframes import MOSCOW, TIMEFRAMES, window_to_iss_dates


def test_multi_key_is_date_first() -> None:
    assert str(multi_key(SecurityKey("SBER", "TQBR"), "2025-06-02")) == "2025-06-02|SBER.TQBR"


@pytest.mark.parametrize(
    ("timeframe", "key", "start", "end"),
    [
        ("1m", "2025-06-02|SBER.TQBR", dt.datetime(2025, 6, 2), dt.datetime(2025, 6, 3)),
        ("1h", "2025-02-01|SiZ5.RFUD", dt.datetime(2025, 2, 1), dt.datetime(2025, 3, 1)),
        ("1d", "2024-01-01|SU26238RMFS4.TQOB", dt.datetime(2024, 1, 1), dt.datetime(2025, 1, 1)),
    ],
)
def test_parse_partition_window(timeframe: str, key: str, start: dt.datetime, end: dt.datetime) -> None:
    part = parse_candle_partition(TIMEFRAMES[timeframe], key)
    assert (part.start_naive, part.end_naive) == (start, end)
    assert part.start.tzinfo is not None and part.start.utcoffset() == dt.timedelta(hours=3)
    assert part.key == key


@pytest.mark.parametrize(
    "key",
    ["SBER.TQBR|2025-06-02", "2025-06-02", "2025-13-01|SBER.TQBR", "2025-06-02|SBER", "2025-06-02|SB R.TQBR"],
)
def test_malformed_partition_keys_are_clear_errors(key: str) -> None:
    with pytest.raises((InvalidPartitionKeyError, InvalidSecurityKeyError)):
        parse_candle_partition(TIMEFRAMES["1m"], key)


def test_month_key_must_start_a_month() -> None:
    with pytest.raises(InvalidPartitionKeyError, match="not the start"):
        parse_candle_partition(TIMEFRAMES["1h"], "2025-06-02|SBER.TQBR")


def test_date_keys_between_overlapping_windows() -> None:
    assert date_keys_between(TIMEFRAMES["1h"], dt.date(2024, 1, 15), dt.date(2024, 3, 2)) == [
        "2024-01-01",
        "2024-02-01",
        "2024-03-01",
    ]
    assert date_keys_between(TIMEFRAMES["1m"], dt.date(2025, 6, 1), dt.date(2025, 6, 3)) == [
        "2025-06-01",
        "2025-06-02",
        "2025-06-03",
    ]
    with pytest.raises(ValueError, match="after"):
        date_keys_between(TIMEFRAMES["1m"], dt.date(2025, 6, 3), dt.date(2025, 6, 1))


def test_future_periods_are_not_partitions() -> None:
    today = dt.datetime.now(MOSCOW).date()
    keys = date_keys_between(TIMEFRAMES["1m"], today, today + dt.timedelta(days=5))
    assert keys == [today.isoformat()]


def test_iss_dates_of_a_window() -> None:
    part = parse_candle_partition(TIMEFRAMES["1mo"], "2024-01-01|SBER.TQBR")
    assert window_to_iss_dates(part.start, part.end) == (dt.date(2024, 1, 1), dt.date(2024, 12, 31))


def test_contiguous_runs() -> None:
    all_keys = ["a", "b", "c", "d", "e"]
    assert contiguous_runs(["e", "a", "b", "d"], all_keys) == [["a", "b"], ["d", "e"]]
    assert contiguous_runs([], all_keys) == []
