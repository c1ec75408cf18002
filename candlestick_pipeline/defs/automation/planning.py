"""What automation should load: pure planning over partition status, turned into run requests.

Every plan is "one security, one timeframe, a contiguous range of windows": exactly what one run
can do under ``BackfillPolicy.single_run()``. Long ranges are split so a run stays a few minutes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

from candlestick_pipeline import config
from candlestick_pipeline.defs.automation.jobs import job_name
from candlestick_pipeline.defs.candles.partitions import date_keys_between, multi_key
from candlestick_pipeline.defs.candles.status import LoadState, contiguous_runs, partition_states_many
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import MOSCOW, Grain, Timeframe

# At most this many partitions per run: ~3 months of minutes, 3 years of 10m/1h, 10 years of the rest.
MAX_PARTITIONS_PER_RUN = {Grain.DAY: 92, Grain.MONTH: 36, Grain.YEAR: 10}

# How far back the closed-periods pass looks for periods that are missing or not final.
LOOKBACK_PERIODS = {Grain.DAY: 7, Grain.MONTH: 2, Grain.YEAR: 2}

# Moscow trading hours (morning session to the end of the evening session), weekends included.
_TRADING_FROM = dt.time(6, 45)


@dataclass(frozen=True)
class RunPlan:
    """One run to launch: a security's contiguous range of partitions of one timeframe."""

    timeframe: Timeframe
    security: SecurityKey
    date_keys: tuple[str, ...]
    reason: str

    def run_request(self, run_key_suffix: str) -> dg.RunRequest:
        first, last = self.date_keys[0], self.date_keys[-1]
        return dg.RunRequest(
            run_key=f"{self.reason}:{self.timeframe.name}:{self.security}:{first}:{last}:{run_key_suffix}",
            job_name=job_name(self.timeframe),
            tags={
                "dagster/asset_partition_range_start": str(multi_key(self.security, first)),
                "dagster/asset_partition_range_end": str(multi_key(self.security, last)),
                "candlestick/reason": self.reason,
                "candlestick/security": str(self.security),
            },
        )


def chunked(timeframe: Timeframe, keys: Sequence[str]) -> list[tuple[str, ...]]:
    size = MAX_PARTITIONS_PER_RUN[timeframe.grain]
    return [tuple(keys[i : i + size]) for i in range(0, len(keys), size)]


def plans_for_states(
    timeframe: Timeframe,
    security: SecurityKey,
    all_keys: Sequence[str],
    wanted: Iterable[str],
    reason: str,
) -> list[RunPlan]:
    """Contiguous, size-capped runs covering ``wanted`` (a subset of the ordered ``all_keys``)."""
    plans: list[RunPlan] = []
    for run in contiguous_runs(list(wanted), all_keys):
        plans.extend(RunPlan(timeframe, security, chunk, reason) for chunk in chunked(timeframe, run))
    return plans


def plan_history(
    instance: dg.DagsterInstance,
    timeframe: Timeframe,
    security: SecurityKey,
    first_day: dt.date,
    now: dt.datetime,
) -> list[RunPlan]:
    """Runs that load every partition from ``first_day`` to today that is not final yet."""
    today = now.astimezone(MOSCOW).date()
    if first_day > today:
        return []
    all_keys = date_keys_between(timeframe, first_day, today)
    states = partition_states_many(instance, timeframe, [security], all_keys, now=now)[security]
    wanted = [s.date_key for s in states if s.state is not LoadState.FINAL]
    return plans_for_states(timeframe, security, all_keys, wanted, "history")


def history_start(borders: dict[int, tuple[dt.datetime, dt.datetime]], interval: int) -> dt.date:
    """Where a security's history of ``interval`` starts: ISS's first candle, not before
    ``CANDLESTICK_EARLIEST_DATE`` (``borders`` as ``ISSClient.get_candle_borders`` gives them)."""
    earliest = config.earliest_date()
    first = borders.get(interval)
    return max(earliest, first[0].date()) if first else earliest


def plan_update(
    instance: dg.DagsterInstance,
    timeframe: Timeframe,
    starts: Mapping[SecurityKey, dt.date],
    now: dt.datetime,
) -> list[RunPlan]:
    """Runs that load, for each security from its own start (``history_start``) to today, every
    partition that is not final: ``plan_history`` for many securities, with one status query."""
    today = now.astimezone(MOSCOW).date()
    starts = {key: start for key, start in starts.items() if start <= today}
    if not starts:
        return []
    all_keys = date_keys_between(timeframe, min(starts.values()), today)
    states = partition_states_many(instance, timeframe, list(starts), all_keys, now=now)
    plans: list[RunPlan] = []
    for security, start in starts.items():
        own = set(date_keys_between(timeframe, start, today))
        wanted = [
            s.date_key for s in states[security] if s.date_key in own and s.state is not LoadState.FINAL
        ]
        plans.extend(plans_for_states(timeframe, security, all_keys, wanted, "update"))
    return plans


def _period_start(timeframe: Timeframe, day: dt.date) -> dt.date:
    if timeframe.grain is Grain.DAY:
        return day
    if timeframe.grain is Grain.MONTH:
        return day.replace(day=1)
    return day.replace(month=1, day=1)


def _lookback_start(timeframe: Timeframe, today: dt.date) -> dt.date:
    periods = LOOKBACK_PERIODS[timeframe.grain]
    if timeframe.grain is Grain.DAY:
        return today - dt.timedelta(days=periods)
    if timeframe.grain is Grain.MONTH:
        month = today.month - periods
        return dt.date(today.year + (month - 1) // 12, (month - 1) % 12 + 1, 1)
    return dt.date(today.year - periods, 1, 1)


def plan_recent(
    instance: dg.DagsterInstance,
    timeframe: Timeframe,
    securities: Sequence[SecurityKey],
    now: dt.datetime,
    *,
    include_open: bool,
) -> list[RunPlan]:
    """Runs for recent periods that closed but are missing or not final; and, with
    ``include_open``, the period that is still open (intraday freshness)."""
    if not securities:
        return []
    today = now.astimezone(MOSCOW).date()
    all_keys = date_keys_between(timeframe, _lookback_start(timeframe, today), today)
    open_key = _period_start(timeframe, today).isoformat()
    states = partition_states_many(instance, timeframe, securities, all_keys, now=now)
    plans: list[RunPlan] = []
    for security in securities:
        closed = [
            s.date_key for s in states[security] if s.date_key != open_key and s.state is not LoadState.FINAL
        ]
        plans.extend(plans_for_states(timeframe, security, all_keys, closed, "closed"))
        if include_open and open_key in all_keys:
            plans.append(RunPlan(timeframe, security, (open_key,), "fresh"))
    return plans


def is_trading_time(now: dt.datetime) -> bool:
    """Between the morning session's start and midnight, Moscow time (weekends trade since 2025)."""
    return now.astimezone(MOSCOW).time() >= _TRADING_FROM
