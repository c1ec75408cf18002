"""The one fixed schema of a candle frame, shared by the ISS client, the warehouse and the checks.

``begin``/``end`` are naive datetimes in Moscow wall-clock time, exactly as ISS writes them.
"""

from __future__ import annotations

import polars as pl

CANDLE_SCHEMA: dict[str, pl.DataType] = {
    "begin": pl.Datetime("us"),
    "end": pl.Datetime("us"),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "value": pl.Float64(),
    "volume": pl.Int64(),
}

CANDLE_COLUMNS: tuple[str, ...] = tuple(CANDLE_SCHEMA)


def empty_candles() -> pl.DataFrame:
    """A frame with no rows and the candle schema."""
    return pl.DataFrame(schema=CANDLE_SCHEMA)


def latest_per_begin(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The candles of ``frames`` (in the order ISS sent them), one per ``begin``, sorted by it.

    Offsets can shift between pages while ISS appends bars, so a bar can come twice; the later
    copy is the fresher one and is kept.
    """
    combined = pl.concat(frames) if frames else empty_candles()
    return combined.unique(subset=["begin"], keep="last", maintain_order=True).sort("begin")


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """Select the candle columns in schema order and cast them; extra columns are dropped."""
    if frame.schema == CANDLE_SCHEMA:  # the usual case, as the parser makes them: nothing to do
        return frame
    return frame.select([pl.col(name).cast(dtype) for name, dtype in CANDLE_SCHEMA.items()])
