"""The candle checks count in the warehouse (per day, one query), read back only suspect partitions,
and judge sparse days against the week around the run. Both backends."""

from __future__ import annotations

import datetime as dt
import itertools

import polars as pl
import pytest
import sqlalchemy as sa

from candlestick_pipeline.defs.candles import checks
from candlestick_pipeline.defs.candles.partitions import CandlePartition, multi_key, parse_candle_partition
from candlestick_pipeline.defs.warehouse import WarehouseResource
from candlestick_pipeline.lib import warehouse as wh
from candlestick_pipeline.lib.frames import CANDLE_SCHEMA
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import TIMEFRAMES, Timeframe

SBER = SecurityKey("SBER", "TQBR")
MINUTES = TIMEFRAMES["1m"]
FIRST = dt.datetime(2025, 3, 3)


def _day(day: dt.datetime, count: int) -> pl.DataFrame:
    begins = [day + dt.timedelta(hours=10, minutes=i) for i in range(count)]
    return pl.DataFrame(
        {
            "begin": begins,
            "end": [b + dt.timedelta(seconds=59) for b in begins],
            "open": [100.0] * count,
            "high": [101.0] * count,
            "low": [99.0] * count,
            "close": [100.5] * count,
            "value": [1000.0] * count,
            "volume": [10] * count,
        },
        schema=CANDLE_SCHEMA,
    )


def _parts(timeframe: Timeframe, date_keys: list[str]) -> list[CandlePartition]:
    return [parse_candle_partition(timeframe, str(multi_key(SBER, key))) for key in date_keys]


def _minute_parts(first: int, last: int) -> list[CandlePartition]:
    return _parts(MINUTES, [(FIRST + dt.timedelta(days=n)).strftime("%Y-%m-%d") for n in range(first, last)])


@pytest.fixture
def resource(warehouse_dsn: str) -> WarehouseResource:
    return WarehouseResource(dsn=warehouse_dsn)


def test_sparse_days_are_judged_with_the_week_around_the_run(resource: WarehouseResource) -> None:
    counts = {n: 100 for n in range(30)}
    counts[10] = 5  # sparse, inside the run
    counts[19] = 7  # sparse, the run's last day: judged against the days after the run
    for n, count in counts.items():
        day = FIRST + dt.timedelta(days=n)
        resource.replace_candles(SBER, "1m", day, day + dt.timedelta(days=1), _day(day, count))
    parts = _minute_parts(8, 20)

    findings = checks.evaluate_run(resource, MINUTES, parts, sparse=True)

    assert findings.failures == {checks.CHECK_SPARSE: [parts[2].date_key, parts[-1].date_key]}
    # A one-day run is judged only by the neighbours outside it.
    findings = checks.evaluate_run(resource, MINUTES, [parts[2]], sparse=True)
    assert findings.failures == {checks.CHECK_SPARSE: [parts[2].date_key]}
    assert checks.evaluate_run(resource, MINUTES, [parts[2]], sparse=False).failures == {}
    resource.get_engine().dispose()


def _insert_raw(engine: sa.Engine, timeframe: str, rows: list[dict[str, object]]) -> None:
    """Rows the pipeline's own writes would refuse (the checks exist for rows that got in anyway)."""
    with engine.begin() as conn:
        conn.execute(
            wh.candles.insert(),
            [{"secid": SBER.secid, "board": SBER.board, "timeframe": timeframe, **row} for row in rows],
        )


def test_suspect_partitions_are_read_back_and_named(resource: WarehouseResource) -> None:
    for n in range(5):
        day = FIRST + dt.timedelta(days=n)
        resource.replace_candles(SBER, "1m", day, day + dt.timedelta(days=1), _day(day, 50))
    bad_ohlc = FIRST + dt.timedelta(days=1, hours=9)
    off_grid = FIRST + dt.timedelta(days=3, hours=9, seconds=30)
    good = {"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "value": 1.0, "volume": 1}
    _insert_raw(
        resource.get_engine(),
        "1m",
        [
            {**good, "begin": bad_ohlc, "end": bad_ohlc, "low": 1.2},  # low above open
            {**good, "begin": off_grid, "end": off_grid},
        ],
    )
    parts = _minute_parts(0, 5)

    findings = checks.evaluate_run(resource, MINUTES, parts, sparse=False)

    assert findings.failures == {
        checks.CHECK_OHLC: [parts[1].date_key],
        checks.CHECK_ALIGNED: [parts[3].date_key],
    }
    assert findings.examples[checks.CHECK_OHLC] == [
        f"{parts[1].date_key}: 1 bad candle(s), first at {bad_ohlc}"
    ]
    assert findings.examples[checks.CHECK_ALIGNED] == [
        f"{parts[3].date_key}: 1 off-grid begin(s), first {off_grid}"
    ]
    resource.get_engine().dispose()


def test_the_warehouse_counts_decide_even_without_an_example(
    resource: WarehouseResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = FIRST
    resource.replace_candles(SBER, "1m", day, day + dt.timedelta(days=1), _day(day, 10))
    bad = day + dt.timedelta(hours=9)
    _insert_raw(
        resource.get_engine(),
        "1m",
        [
            {
                "begin": bad,
                "end": bad,
                "open": 1.0,
                "high": 0.5,
                "low": 0.7,
                "close": 1.0,
                "value": 1.0,
                "volume": 1,
            }
        ],
    )
    monkeypatch.setattr(checks, "evaluate_partition", lambda *args: None)  # as if Python saw nothing

    findings = checks.evaluate_run(resource, MINUTES, _minute_parts(0, 1), sparse=False)

    assert findings.failures == {checks.CHECK_OHLC: ["2025-03-03"]}
    assert findings.examples[checks.CHECK_OHLC] == ["2025-03-03: 1 candle(s), as counted by the warehouse"]
    resource.get_engine().dispose()


# Begins on and off every timeframe's grid: Monday, Tuesday, the 1st of a quarter's month and of
# another month, at midnight and during the day, on whole minutes and not, and sub-second.
_DAYS = [dt.datetime(2025, 1, 6), dt.datetime(2025, 1, 7), dt.datetime(2025, 4, 1), dt.datetime(2025, 2, 1)]
_TIMES = [
    dt.timedelta(0),
    dt.timedelta(seconds=30),
    dt.timedelta(microseconds=500_000),
    dt.timedelta(hours=10),
    dt.timedelta(hours=10, minutes=5),
    dt.timedelta(hours=10, minutes=10),
    dt.timedelta(hours=10, minutes=30, seconds=1),
]
# (open, high, low, close, volume): sane, and each way of breaking OHLC sanity.
_OHLC = [
    (10.0, 12.0, 9.0, 11.0, 5),
    (10.0, 12.0, 10.5, 11.0, 5),  # low above open
    (10.0, 10.5, 9.0, 11.0, 5),  # high below close
    (10.0, 8.0, 9.0, 10.0, 5),  # low above high
    (10.0, 12.0, 9.0, 11.0, -1),  # negative volume
    (10.0, 10.0, 10.0, 10.0, 0),  # flat: sane
]


@pytest.mark.parametrize("timeframe", list(TIMEFRAMES.values()), ids=list(TIMEFRAMES))
def test_the_warehouse_counts_as_python_checks(resource: WarehouseResource, timeframe: Timeframe) -> None:
    begins = [day + time for day in _DAYS for time in _TIMES]
    rows = [
        {
            "begin": begin,
            "end": begin,
            "open": o,
            "high": h,
            "low": low,
            "close": c,
            "value": 1.0,
            "volume": v,
        }
        for begin, (o, h, low, c, v) in zip(begins, itertools.cycle(_OHLC), strict=False)
    ]
    _insert_raw(resource.get_engine(), timeframe.name, rows)
    frame = pl.DataFrame(rows).with_columns(pl.col("begin").dt.cast_time_unit("us"))

    days = resource.summarize_days(SBER, timeframe, dt.datetime(2025, 1, 1), dt.datetime(2025, 5, 1))

    bad_ohlc = set(checks.check_ohlc(frame).get_column("begin").to_list())
    expected = [
        wh.DaySummary(
            day=day.date(),
            candles=len(_TIMES),
            duplicate_begins=0,
            bad_ohlc=sum(day + time in bad_ohlc for time in _TIMES),
            off_grid=sum(not timeframe.is_aligned(day + time) for time in _TIMES),
        )
        for day in sorted(_DAYS)
    ]
    assert days == expected
    assert sum(summary.off_grid for summary in days) > 0 and sum(summary.bad_ohlc for summary in days) > 0
    assert any(summary.off_grid < summary.candles for summary in days)  # some begins on every grid
    resource.get_engine().dispose()
