"""A process that replaces big candle windows one after another, to be killed with SIGKILL mid-write.

``python -m candlestick_pipeline_tests.reliability.killable_writer DSN MARKER_DIR WINDOWS ROWS``
replaces window 0, 1, ... of the series ``KILL.TEST 1m`` with :func:`frame` (``variant="new"``)
through the real ``replace_candles``. Just before each bulk insert (after the window's DELETE, inside
its transaction) it creates ``MARKER_DIR/writing-<i>``; after each commit it prints ``committed <i>``.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import polars as pl

from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.warehouse import candle_store

KEY = SecurityKey("KILL", "TEST")
TIMEFRAME = "1m"
_BASE = dt.datetime(2010, 1, 1)


def window(index: int, rows: int) -> tuple[dt.datetime, dt.datetime]:
    """Window ``index``: whole days, long enough for ``rows`` one-minute candles."""
    span = dt.timedelta(days=rows // 1440 + 1)
    start = _BASE + index * span
    return start, start + span


def frame(index: int, rows: int, variant: str) -> pl.DataFrame:
    """'new': ``rows`` consecutive minutes; 'old': every 10th of those minutes, other prices."""
    start, _ = window(index, rows)
    step = 1 if variant == "new" else 10
    count = rows if variant == "new" else rows // 10
    price = 100.0 if variant == "new" else 50.0
    begin = pl.datetime_range(
        start, start + dt.timedelta(minutes=step * (count - 1)), f"{step}m", eager=True, time_unit="us"
    )
    seq = pl.int_range(0, count, eager=True)
    return pl.DataFrame(
        {
            "begin": begin,
            "end": begin + dt.timedelta(seconds=59),
            "open": price + seq.cast(pl.Float64) / 1000,
            "high": price + 1 + seq.cast(pl.Float64) / 1000,
            "low": price - 1 + seq.cast(pl.Float64) / 1000,
            "close": price + seq.cast(pl.Float64) / 1000,
            "value": seq.cast(pl.Float64) * price,
            "volume": seq.cast(pl.Int64) + index,
        }
    )


def main(dsn: str, marker_dir: str, windows: int, rows: int) -> None:
    markers = Path(marker_dir)
    original = candle_store._bulk_insert
    current = {"index": -1}

    def marked_bulk_insert(*args: Any, **kwargs: Any) -> None:
        (markers / f"writing-{current['index']}").touch()
        original(*args, **kwargs)

    candle_store._bulk_insert = marked_bulk_insert  # type: ignore[assignment]
    engine = warehouse.create_warehouse_engine(dsn)
    warehouse.migrate(engine)
    for index in range(windows):
        data = frame(index, rows, "new")
        current["index"] = index
        warehouse.replace_candles(engine, KEY, TIMEFRAME, *window(index, rows), data)
        print(f"committed {index}", flush=True)
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
