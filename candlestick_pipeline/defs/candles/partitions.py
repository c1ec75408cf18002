"""Partitions of the candle assets: security (dynamic) x time window (Europe/Moscow).

Dagster allows two dimensions, so the timeframe lives in the asset key (one asset per timeframe) and
each asset is partitioned by security x window, the window's length being the timeframe's grain
(see :mod:`candlestick_pipeline.lib.timeframes` for why). Dimension names sort ``date`` before
``security``, so a key reads ``2025-06-02|SBER.TQBR``.

Every time dimension has ``end_offset=1``: the period that is still open (today, this month, this
year) is a partition too, so intraday data can be loaded; it is re-loaded once the period closes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import dagster as dg

from candlestick_pipeline.config import partitions_start
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import MOSCOW, Grain, Timeframe, to_moscow_naive

SECURITY_DIMENSION = "security"
DATE_DIMENSION = "date"
DATE_FORMAT = "%Y-%m-%d"

SECURITIES_PARTITIONS = "securities"
security_partition = dg.DynamicPartitionsDefinition(name=SECURITIES_PARTITIONS)

_CRON_BY_GRAIN = {
    Grain.DAY: "0 0 * * *",
    Grain.MONTH: "0 0 1 * *",
    Grain.YEAR: "0 0 1 1 *",
}


def _time_partition(grain: Grain) -> dg.TimeWindowPartitionsDefinition:
    return dg.TimeWindowPartitionsDefinition(
        start=partitions_start(),
        fmt=DATE_FORMAT,
        cron_schedule=_CRON_BY_GRAIN[grain],
        timezone=MOSCOW.key,
        end_offset=1,
    )


candles_daily_partition = _time_partition(Grain.DAY)
candles_monthly_partition = _time_partition(Grain.MONTH)
candles_yearly_partition = _time_partition(Grain.YEAR)

_TIME_PARTITION_BY_GRAIN = {
    Grain.DAY: candles_daily_partition,
    Grain.MONTH: candles_monthly_partition,
    Grain.YEAR: candles_yearly_partition,
}

_MULTI_BY_GRAIN = {
    grain: dg.MultiPartitionsDefinition({SECURITY_DIMENSION: security_partition, DATE_DIMENSION: time_def})
    for grain, time_def in _TIME_PARTITION_BY_GRAIN.items()
}
security_x_daily_partition = _MULTI_BY_GRAIN[Grain.DAY]
security_x_monthly_partition = _MULTI_BY_GRAIN[Grain.MONTH]
security_x_yearly_partition = _MULTI_BY_GRAIN[Grain.YEAR]


def partitions_for(timeframe: Timeframe) -> dg.MultiPartitionsDefinition:
    """The security x window partitions definition of a timeframe's asset."""
    return _MULTI_BY_GRAIN[timeframe.grain]


def time_partition_for(timeframe: Timeframe) -> dg.TimeWindowPartitionsDefinition:
    """The time dimension alone (for date arithmetic on keys)."""
    return _TIME_PARTITION_BY_GRAIN[timeframe.grain]


class InvalidPartitionKeyError(ValueError):
    """A candle partition key that does not read as ``DATE|SECID.BOARD``."""


@dataclass(frozen=True)
class CandlePartition:
    """One candle partition: a security and a half-open Moscow-time window ``[start, end)``."""

    key: str
    security: SecurityKey
    date_key: str
    start: dt.datetime
    end: dt.datetime

    @property
    def start_naive(self) -> dt.datetime:
        return to_moscow_naive(self.start)

    @property
    def end_naive(self) -> dt.datetime:
        return to_moscow_naive(self.end)


def multi_key(security: SecurityKey, date_key: str) -> dg.MultiPartitionKey:
    """Build a multi-partition key the way Dagster orders it (never by string formatting)."""
    return dg.MultiPartitionKey({SECURITY_DIMENSION: security.partition_key, DATE_DIMENSION: date_key})


def parse_candle_partition(timeframe: Timeframe, key: str) -> CandlePartition:
    """Read a candle partition key (``2025-06-02|SBER.TQBR``) into security and window."""
    if isinstance(key, dg.MultiPartitionKey):
        by_dim = key.keys_by_dimension
        date_key, security_key = by_dim.get(DATE_DIMENSION, ""), by_dim.get(SECURITY_DIMENSION, "")
    else:
        date_key, sep, security_key = key.partition("|")
        if not sep:
            raise InvalidPartitionKeyError(
                f"invalid candle partition key {key!r}: expected DATE|SECID.BOARD, e.g. 2025-06-02|SBER.TQBR"
            )
    security = SecurityKey.parse(security_key)
    time_def = time_partition_for(timeframe)
    try:
        window = time_def.time_window_for_partition_key(date_key)
    except Exception as exc:  # Dagster raises several types for a bad date string
        raise InvalidPartitionKeyError(
            f"invalid date {date_key!r} in partition key {key!r} for {timeframe.asset_name}: {exc}"
        ) from exc
    if window.start.strftime(DATE_FORMAT) != date_key:
        raise InvalidPartitionKeyError(
            f"{date_key!r} is not the start of a {timeframe.grain.value} partition of {timeframe.asset_name}"
        )
    return CandlePartition(str(key), security, date_key, window.start, window.end)


def _grain_start(grain: Grain, day: dt.date) -> dt.date:
    if grain is Grain.DAY:
        return day
    if grain is Grain.MONTH:
        return day.replace(day=1)
    return day.replace(month=1, day=1)


def _next_grain_start(grain: Grain, day: dt.date) -> dt.date:
    if grain is Grain.DAY:
        return day + dt.timedelta(days=1)
    if grain is Grain.MONTH:
        return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return day.replace(year=day.year + 1, month=1, day=1)


def date_keys_between(timeframe: Timeframe, first: dt.date, last: dt.date) -> list[str]:
    """Date keys of the partitions whose window overlaps the days ``first``..``last`` (inclusive).

    Days before the partitions' start are clipped; so are periods that do not exist yet.
    """
    if last < first:
        raise ValueError(f"from {first} is after till {last}")
    grain = timeframe.grain
    earliest = dt.date.fromisoformat(partitions_start())
    latest = _grain_start(grain, dt.datetime.now(MOSCOW).date())
    day = max(_grain_start(grain, first), earliest)
    keys: list[str] = []
    while day <= last and day <= latest:
        keys.append(day.strftime(DATE_FORMAT))
        day = _next_grain_start(grain, day)
    return keys
