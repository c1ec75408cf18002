"""``publication_sensor``: republish exactly the candle partitions that were (re)materialized.

Why a sensor and not an automation condition: ``eager()`` only targets the latest time window
(FACTS G8), so a backfill of history or a corrected old day would never reach the publication.
The sensor reads the ``candles_<tf>`` materializations recorded since its cursor (one storage id
per asset), and requests runs of ``published_candles_<tf>`` for exactly those partition keys,
one run per contiguous range of windows of one security (range tags, so a backfill of a year is
one run, not 365). A partition whose published copy was materialized after the candle
materialization (someone republished it by hand) is skipped. ``securities`` materializations
request ``published_securities``.

It runs by default every 30 s. On its first tick (no cursor) it goes through the whole history,
so enabling it on an existing deployment publishes everything that is loaded; at most
``MAX_RECORDS_PER_TICK`` events per asset are read per tick, and the cursor remembers the rest.
Run keys contain the newest storage id, so a tick that is retried never launches a run twice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg
from dagster import DagsterEventType

from candlestick_pipeline.defs.candles.partitions import (
    DATE_DIMENSION,
    SECURITY_DIMENSION,
    multi_key,
    time_partition_for,
)
from candlestick_pipeline.defs.publish.assets import (
    PUBLISH_SECURITIES_JOB,
    SECURITIES_ASSET_KEY,
    publish_job_name,
    publish_jobs,
    published_asset_key,
)
from candlestick_pipeline.lib.securities import InvalidSecurityKeyError, SecurityKey
from candlestick_pipeline.lib.timeframes import TIMEFRAMES, Timeframe

SENSOR_NAME = "publication_sensor"
MINIMUM_INTERVAL_SECONDS = 30
MAX_RECORDS_PER_TICK = 5000
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass(frozen=True)
class PartitionRange:
    """Contiguous windows of one security: the first and last date keys (inclusive)."""

    security: SecurityKey
    first: str
    last: str
    count: int

    def keys(self) -> tuple[str, str]:
        return str(multi_key(self.security, self.first)), str(multi_key(self.security, self.last))


def _split_key(key: str) -> tuple[SecurityKey, str] | None:
    by_dim = key.keys_by_dimension if isinstance(key, dg.MultiPartitionKey) else None
    if by_dim is None:
        date_key, sep, security = key.partition("|")
        if not sep:
            return None
    else:
        date_key, security = by_dim.get(DATE_DIMENSION, ""), by_dim.get(SECURITY_DIMENSION, "")
    try:
        return SecurityKey.parse(security), date_key
    except InvalidSecurityKeyError:
        return None


def contiguous_ranges(timeframe: Timeframe, partition_keys: Iterable[str]) -> list[PartitionRange]:
    """Group ``DATE|SECID.BOARD`` keys into runs of adjacent windows of one security."""
    time_def = time_partition_for(timeframe)
    by_security: dict[SecurityKey, set[str]] = defaultdict(set)
    for key in partition_keys:
        split = _split_key(key)
        if split is not None:
            by_security[split[0]].add(split[1])
    ranges: list[PartitionRange] = []
    for security in sorted(by_security):
        windows = sorted(
            (time_def.time_window_for_partition_key(date), date) for date in by_security[security]
        )
        first = last = windows[0][1]
        end = windows[0][0].end
        count = 1
        for window, date in windows[1:]:
            if window.start == end:
                last, end, count = date, window.end, count + 1
                continue
            ranges.append(PartitionRange(security, first, last, count))
            first = last = date
            end, count = window.end, 1
        ranges.append(PartitionRange(security, first, last, count))
    return ranges


def _new_materializations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, after: int | None
) -> tuple[dict[str, int], int | None]:
    """Partition -> newest storage id of its materializations after ``after``, and the newest id read."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, after_storage_id=after),
        limit=MAX_RECORDS_PER_TICK,
        ascending=True,
    )
    latest: dict[str, int] = {}
    newest = None
    for record in result.records:
        newest = record.storage_id
        if record.partition_key:
            latest[record.partition_key] = record.storage_id
    return latest, newest


def _already_published(
    instance: dg.DagsterInstance, timeframe: Timeframe, materialized: dict[str, int]
) -> set[str]:
    published = instance.get_latest_storage_id_by_partition(
        published_asset_key(timeframe),
        DagsterEventType.ASSET_MATERIALIZATION,
        partitions=set(materialized),
    )
    return {key for key, storage_id in materialized.items() if published.get(key, -1) > storage_id}


def requests_for(timeframe: Timeframe, ranges: list[PartitionRange], newest: int) -> list[dg.RunRequest]:
    """One run per range: a single partition by key, a longer range by the range tags."""
    job_name = publish_job_name(timeframe)
    requests: list[dg.RunRequest] = []
    for part_range in ranges:
        start, end = part_range.keys()
        run_key = f"{job_name}:{start}...{end}@{newest}"
        tags = {"timeframe": timeframe.name, "publication/trigger": SENSOR_NAME}
        if start == end:
            requests.append(dg.RunRequest(run_key=run_key, job_name=job_name, partition_key=start, tags=tags))
        else:
            tags.update({RANGE_START_TAG: start, RANGE_END_TAG: end})
            requests.append(dg.RunRequest(run_key=run_key, job_name=job_name, tags=tags))
    return requests


def evaluate(instance: dg.DagsterInstance, cursor: str | None) -> tuple[list[dg.RunRequest], str]:
    """The sensor's logic without the decorator: the run requests and the new cursor."""
    state: dict[str, int] = json.loads(cursor) if cursor else {}
    run_requests: list[dg.RunRequest] = []
    for timeframe in TIMEFRAMES.values():
        name = timeframe.asset_name
        materialized, newest = _new_materializations(instance, dg.AssetKey(name), state.get(name))
        if newest is None:
            continue
        state[name] = newest
        stale = dict(materialized)
        for key in _already_published(instance, timeframe, materialized):
            stale.pop(key)
        if stale:
            run_requests += requests_for(timeframe, contiguous_ranges(timeframe, stale), newest)
    securities_key = SECURITIES_ASSET_KEY.to_user_string()
    _, newest = _new_materializations(instance, SECURITIES_ASSET_KEY, state.get(securities_key))
    if newest is not None:
        state[securities_key] = newest
        run_requests.append(
            dg.RunRequest(
                run_key=f"{PUBLISH_SECURITIES_JOB}@{newest}",
                job_name=PUBLISH_SECURITIES_JOB,
                tags={"publication/trigger": SENSOR_NAME},
            )
        )
    return run_requests, json.dumps(state, sort_keys=True)


@dg.sensor(
    name=SENSOR_NAME,
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    jobs=publish_jobs,
    description=(
        "Republishes exactly the candle partitions (and securities) materialized since the last "
        "tick, one run per contiguous range of one security."
    ),
)
def publication_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    run_requests, cursor = evaluate(context.instance, context.cursor)
    if not run_requests:
        return dg.SensorResult(skip_reason="nothing new was materialized", cursor=cursor)
    return dg.SensorResult(run_requests=run_requests, cursor=cursor)
