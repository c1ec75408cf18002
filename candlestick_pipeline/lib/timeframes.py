"""Candle timeframes: the ISS interval code, the partition grain and the bar alignment of each.

Why these grains: Dagster spends 25-40 ms of bookkeeping per partition (events, status cache), and
ISS returns at most 500 candles a page. A partition should hold a few hundred to a few thousand
candles, i.e. one to a few ISS pages, so that both the partition count and the re-fetch cost of a
partition that is still open (today, this month) stay small:

| timeframe | ISS interval | grain | candles per partition (shares, 2025 sessions) |
|-----------|--------------|-------|-----------------------------------------------|
| 1m        | 1            | day   | up to ~1,000 (06:50-23:50)                     |
| 10m       | 10           | month | ~3,000                                        |
| 1h        | 60           | month | ~500                                          |
| 1d        | 24           | year  | ~250-360                                      |
| 1w        | 7            | year  | 52-53                                         |
| 1mo       | 31           | year  | 12                                            |
| 1q        | 4            | year  | 4                                             |
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from zoneinfo import ZoneInfo

MOSCOW = ZoneInfo("Europe/Moscow")


class Grain(StrEnum):
    """The time grain of a partition (the length of one partition's window)."""

    DAY = "day"
    MONTH = "month"
    YEAR = "year"


@dataclass(frozen=True)
class Timeframe:
    """One candle timeframe, as stored (``name``) and as asked of ISS (``iss_interval``)."""

    name: str
    iss_interval: int
    grain: Grain
    title: str

    @property
    def asset_name(self) -> str:
        return f"candles_{self.name}"

    def is_aligned(self, begin: dt.datetime) -> bool:
        """Whether a bar ``begin`` (naive Moscow time) sits on this timeframe's grid."""
        if begin.second or begin.microsecond:
            return False
        if self.iss_interval == 1:
            return True
        if self.iss_interval == 10:
            return begin.minute % 10 == 0
        if self.iss_interval == 60:
            return begin.minute == 0
        if begin.time() != dt.time(0, 0):
            return False
        if self.iss_interval == 24:
            return True
        if self.iss_interval == 7:
            return begin.weekday() == 0
        if self.iss_interval == 31:
            return begin.day == 1
        return begin.day == 1 and begin.month in (1, 4, 7, 10)


TIMEFRAMES: dict[str, Timeframe] = {
    tf.name: tf
    for tf in (
        Timeframe("1m", 1, Grain.DAY, "1 minute"),
        Timeframe("10m", 10, Grain.MONTH, "10 minutes"),
        Timeframe("1h", 60, Grain.MONTH, "1 hour"),
        Timeframe("1d", 24, Grain.YEAR, "1 day"),
        Timeframe("1w", 7, Grain.YEAR, "1 week"),
        Timeframe("1mo", 31, Grain.YEAR, "1 month"),
        Timeframe("1q", 4, Grain.YEAR, "1 quarter"),
    )
}

BY_ISS_INTERVAL: dict[int, Timeframe] = {tf.iss_interval: tf for tf in TIMEFRAMES.values()}


class UnknownTimeframeError(ValueError):
    """A timeframe name that is not one of :data:`TIMEFRAMES`."""


def get_timeframe(name: str) -> Timeframe:
    """Look a timeframe up by name (``1m``, ``10m``, ``1h``, ``1d``, ``1w``, ``1mo``, ``1q``)."""
    try:
        return TIMEFRAMES[name]
    except KeyError:
        known = ", ".join(TIMEFRAMES)
        raise UnknownTimeframeError(f"unknown timeframe {name!r}; known: {known}") from None


def window_to_iss_dates(start: dt.datetime, end: dt.datetime) -> tuple[dt.date, dt.date]:
    """ISS ``from``/``till`` (both inclusive, on bar ``begin`` dates) for a half-open window.

    Windows are whole Moscow days, so ``till`` is the last day inside the window.
    """
    start_local, end_local = to_moscow_naive(start), to_moscow_naive(end)
    if start_local.time() != dt.time(0) or end_local.time() != dt.time(0):
        raise ValueError(f"window {start}..{end} is not made of whole Moscow days")
    if end_local <= start_local:
        raise ValueError(f"empty window {start}..{end}")
    return start_local.date(), (end_local - dt.timedelta(days=1)).date()


def to_moscow_naive(value: dt.datetime) -> dt.datetime:
    """A datetime as naive Moscow wall-clock time (the way ISS writes ``begin``)."""
    if value.tzinfo is None:
        return value
    return value.astimezone(MOSCOW).replace(tzinfo=None)
