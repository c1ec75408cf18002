"""Asset checks on candle partitions, evaluated on what the warehouse holds after a run.

One multi-check op per timeframe evaluates: OHLC sanity, no duplicate ``begin``, every candle
inside its partition's window, ``begin`` on the timeframe's grid, and (a warning) trading days with
far fewer candles than the days around them.

The warehouse counts, per day, the candles and those that break a check (one aggregate query for
the run and a week on either side, :func:`warehouse.summarize_days`): reading every candle back
into Python cost more than loading them (0.7 s of CPU for 120 days of minutes). Only a partition
with a suspect day is read back, to name its first offending candles.

Dagster records a check result per partition in single-partition runs; in a range run it records
one result for the run (DAGSTER-DATASETTE-FACTS G10), whose metadata names the failing partitions.
"""

import datetime as dt
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import dagster as dg
import polars as pl

from candlestick_pipeline.defs.candles.partitions import (
    CandlePartition,
    parse_candle_partition,
    partitions_for,
)
from candlestick_pipeline.defs.warehouse.resource import WarehouseResource
from candlestick_pipeline.lib.timeframes import TIMEFRAMES, Timeframe
from candlestick_pipeline.lib.warehouse import DaySummary

CHECK_OHLC = "ohlc_sanity"
CHECK_UNIQUE = "unique_begin"
CHECK_INSIDE = "inside_partition"
CHECK_ALIGNED = "aligned_to_timeframe"
CHECK_SPARSE = "no_sparse_trading_days"

_DESCRIPTIONS = {
    CHECK_OHLC: "low <= min(open, close), high >= max(open, close), low <= high, volume >= 0.",
    CHECK_UNIQUE: "No two candles of the partition share a `begin`.",
    CHECK_INSIDE: "Every candle's `begin` lies inside its partition's window (Moscow time).",
    CHECK_ALIGNED: "Every `begin` sits on the timeframe's grid (minute, :x0, :00, midnight, Monday, 1st...).",
    CHECK_SPARSE: (
        "Warning: a trading day with far fewer intraday candles (< 25%) than the median of the "
        "trading days around it (partial loads, ISS outages)."
    ),
}
_SPARSE_FRACTION = 0.25
_SPARSE_NEIGHBOUR_DAYS = 7


@dataclass
class CheckFindings:
    """Failing partitions (date keys) and examples, per check."""

    failures: dict[str, list[str]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, check: str, date_key: str, example: str) -> None:
        keys = self.failures.setdefault(check, [])
        if date_key not in keys:
            keys.append(date_key)
        samples = self.examples.setdefault(check, [])
        if len(samples) < 5:
            samples.append(f"{date_key}: {example}")


def _fmt(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, dt.datetime) else str(value)


def check_ohlc(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows that break OHLC sanity."""
    return frame.filter(
        (pl.col("low") > pl.min_horizontal("open", "close"))
        | (pl.col("high") < pl.max_horizontal("open", "close"))
        | (pl.col("low") > pl.col("high"))
        | (pl.col("volume") < 0)
    )


def check_unique(frame: pl.DataFrame) -> list[dt.datetime]:
    """``begin`` values that occur more than once."""
    dupes = frame.group_by("begin").len().filter(pl.col("len") > 1)
    return sorted(dupes.get_column("begin").to_list())


def check_inside(frame: pl.DataFrame, start: dt.datetime, end: dt.datetime) -> pl.DataFrame:
    """Rows whose ``begin`` is outside ``[start, end)`` (naive Moscow time)."""
    return frame.filter((pl.col("begin") < start) | (pl.col("begin") >= end))


def check_aligned(frame: pl.DataFrame, timeframe: Timeframe) -> list[dt.datetime]:
    """``begin`` values off the timeframe's grid."""
    return [begin for begin in frame.get_column("begin").to_list() if not timeframe.is_aligned(begin)]


def sparse_days(counts: dict[dt.date, int], days: Iterable[dt.date]) -> list[tuple[dt.date, int, float]]:
    """Days among ``days`` whose candle count is under a quarter of their neighbours' median.

    Days with no candles are non-trading days (weekends, holidays), not sparse ones.
    """
    found: list[tuple[dt.date, int, float]] = []
    for day in days:
        count = counts.get(day, 0)
        if count == 0:
            continue
        neighbours = [
            counts[other]
            for offset in range(1, _SPARSE_NEIGHBOUR_DAYS + 1)
            for other in (day - dt.timedelta(days=offset), day + dt.timedelta(days=offset))
            if counts.get(other, 0) > 0
        ]
        if len(neighbours) < 2:
            continue
        median = statistics.median(neighbours)
        if count < _SPARSE_FRACTION * median:
            found.append((day, count, median))
    return found


def evaluate_partition(
    findings: CheckFindings, timeframe: Timeframe, part: CandlePartition, frame: pl.DataFrame
) -> None:
    """Run the per-partition checks on one partition's stored candles."""
    bad = check_ohlc(frame)
    if bad.height:
        row = bad.row(0, named=True)
        findings.add(CHECK_OHLC, part.date_key, f"{bad.height} bad candle(s), first at {_fmt(row['begin'])}")
    dupes = check_unique(frame)
    if dupes:
        findings.add(CHECK_UNIQUE, part.date_key, f"{len(dupes)} duplicate begin(s), first {_fmt(dupes[0])}")
    outside = check_inside(frame, part.start_naive, part.end_naive)
    if outside.height:
        first = outside.get_column("begin").min()
        findings.add(CHECK_INSIDE, part.date_key, f"{outside.height} candle(s) outside, first {_fmt(first)}")
    off_grid = check_aligned(frame, timeframe)
    if off_grid:
        findings.add(
            CHECK_ALIGNED, part.date_key, f"{len(off_grid)} off-grid begin(s), first {_fmt(off_grid[0])}"
        )


def _results(findings: CheckFindings, checked: int, asset_key: dg.AssetKey) -> list[dg.AssetCheckResult]:
    results = []
    for name in (CHECK_OHLC, CHECK_UNIQUE, CHECK_INSIDE, CHECK_ALIGNED, CHECK_SPARSE):
        failing = findings.failures.get(name, [])
        results.append(
            dg.AssetCheckResult(
                asset_key=asset_key,
                check_name=name,
                passed=not failing,
                severity=dg.AssetCheckSeverity.WARN if name == CHECK_SPARSE else dg.AssetCheckSeverity.ERROR,
                metadata={
                    "partitions_checked": checked,
                    "failing_partitions": ", ".join(failing[:50]) or "none",
                    "examples": "\n".join(findings.examples.get(name, [])) or "none",
                },
            )
        )
    return results


def _run_parts(context: dg.AssetCheckExecutionContext, timeframe: Timeframe) -> list[CandlePartition]:
    return sorted(
        (parse_candle_partition(timeframe, key) for key in context.partition_keys), key=lambda p: p.start
    )


def build_candle_checks(timeframe: Timeframe) -> dg.AssetChecksDefinition:
    """The multi-check of one timeframe's candle asset."""
    asset_key = dg.AssetKey(timeframe.asset_name)
    partitions_def = partitions_for(timeframe)
    specs = [
        dg.AssetCheckSpec(name, asset=asset_key, description=text, partitions_def=partitions_def)
        for name, text in _DESCRIPTIONS.items()
        if name != CHECK_SPARSE or timeframe.iss_interval in (1, 10, 60)
    ]

    @dg.multi_asset_check(specs=specs, name=f"{timeframe.asset_name}_checks", can_subset=False)
    def _checks(
        context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> Iterable[dg.AssetCheckResult]:
        parts = _run_parts(context, timeframe)
        sparse = any(spec.name == CHECK_SPARSE for spec in specs)
        findings = evaluate_run(warehouse, timeframe, parts, sparse=sparse)
        wanted = {spec.name for spec in specs}
        yield from (
            result for result in _results(findings, len(parts), asset_key) if result.check_name in wanted
        )

    return _checks


def evaluate_run(
    warehouse: WarehouseResource, timeframe: Timeframe, parts: Sequence[CandlePartition], *, sparse: bool
) -> CheckFindings:
    """Every check of a run's partitions (one security, sorted by start) on what the warehouse holds."""
    findings = CheckFindings()
    if not parts:
        return findings
    # The week on either side too: a run's first and last days are judged by their neighbours.
    margin = dt.timedelta(days=_SPARSE_NEIGHBOUR_DAYS)
    days = warehouse.summarize_days(
        parts[0].security, timeframe, parts[0].start_naive - margin, parts[-1].end_naive + margin
    )
    evaluate_stored(findings, warehouse, timeframe, parts, days)
    if sparse:
        evaluate_sparse(findings, parts, {summary.day: summary.candles for summary in days})
    return findings


def _days_of(part: CandlePartition) -> list[dt.date]:
    first, end = part.start_naive.date(), part.end_naive.date()
    return [first + dt.timedelta(days=n) for n in range((end - first).days)]


def evaluate_stored(
    findings: CheckFindings,
    warehouse: WarehouseResource,
    timeframe: Timeframe,
    parts: Sequence[CandlePartition],
    days: Sequence[DaySummary],
) -> None:
    """The per-partition checks, from the stored days' counts; a partition with a suspect day is
    read back and checked candle by candle (:func:`evaluate_partition`), for its examples. The
    warehouse's counts decide: a kind it counted fails the partition even without an example."""
    suspect = {summary.day: summary for summary in days if summary.suspect}
    for part in parts:
        found = [suspect[day] for day in _days_of(part) if day in suspect]
        if not found:
            continue
        frame = warehouse.read_candles(part.security, timeframe.name, part.start_naive, part.end_naive)
        evaluate_partition(findings, timeframe, part, frame)
        counted = {
            CHECK_OHLC: sum(summary.bad_ohlc for summary in found),
            CHECK_UNIQUE: sum(summary.duplicate_begins for summary in found),
            CHECK_ALIGNED: sum(summary.off_grid for summary in found),
        }
        for check, count in counted.items():
            if count and part.date_key not in findings.failures.get(check, []):
                findings.add(check, part.date_key, f"{count} candle(s), as counted by the warehouse")


def evaluate_sparse(
    findings: CheckFindings, parts: Sequence[CandlePartition], counts: dict[dt.date, int]
) -> None:
    """The sparse-day warning of each partition; ``counts`` must cover the week around the run."""
    for part in parts:
        for sparse_day, count, median in sparse_days(counts, _days_of(part)):
            findings.add(CHECK_SPARSE, part.date_key, f"{sparse_day}: {count} candles vs median {median:g}")


candle_checks: list[dg.AssetChecksDefinition] = [build_candle_checks(tf) for tf in TIMEFRAMES.values()]
