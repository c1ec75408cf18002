"""The candle checks read stored partitions in chunks and judge sparse days against the margins."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from candlestick_pipeline.defs.candles import checks
from candlestick_pipeline.defs.candles.partitions import multi_key, parse_candle_partition
from candlestick_pipeline.defs.warehouse import WarehouseResource
from candlestick_pipeline.lib.frames import CANDLE_SCHEMA
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import TIMEFRAMES

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


def test_chunked_reading_and_sparse_days_at_the_edges(
    warehouse_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = WarehouseResource(dsn=warehouse_dsn)
    counts = {n: 100 for n in range(30)}
    counts[10] = 5  # sparse, inside the run
    counts[19] = 7  # sparse, the run's last day: judged against the days after the run
    for n, count in counts.items():
        day = FIRST + dt.timedelta(days=n)
        warehouse.replace_candles(SBER, "1m", day, day + dt.timedelta(days=1), _day(day, count))
    monkeypatch.setattr(checks, "_PARTITIONS_PER_READ", 3)  # several chunks, one partial
    parts = [
        parse_candle_partition(
            MINUTES, str(multi_key(SBER, (FIRST + dt.timedelta(days=n)).strftime("%Y-%m-%d")))
        )
        for n in range(8, 20)
    ]

    stored = list(checks._stored_partitions(warehouse, MINUTES, parts))

    assert [part for part, _ in stored] == parts
    assert [frame.height for _, frame in stored] == [counts[n] for n in range(8, 20)]
    assert all(frame["begin"].dt.date().unique().to_list() == [p.start_naive.date()] for p, frame in stored)
    findings = checks.CheckFindings()
    daily: dict[dt.date, int] = {}
    for _, frame in stored:
        daily.update(checks._daily_counts(frame))
    checks._evaluate_sparse(findings, warehouse, MINUTES, parts, daily)
    assert findings.failures[checks.CHECK_SPARSE] == [parts[2].date_key, parts[-1].date_key]

    # A one-day run is judged only by the neighbours read from the margins.
    single = [parts[2]]
    findings = checks.CheckFindings()
    [(_, frame)] = checks._stored_partitions(warehouse, MINUTES, single)
    checks._evaluate_sparse(findings, warehouse, MINUTES, single, checks._daily_counts(frame))
    assert findings.failures[checks.CHECK_SPARSE] == [parts[2].date_key]
    warehouse.get_engine().dispose()
