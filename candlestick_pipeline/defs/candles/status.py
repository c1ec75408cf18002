"""What is loaded, read from Dagster's partition status (there is no table of loaded spans).

A partition counts as loaded when its latest materialization is final, i.e. it was loaded after its
period closed (see ``loading.is_final``). A partition loaded while its period was still open is
"stale" once the period closes, and is fetched again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import dagster as dg

from candlestick_pipeline.defs.candles.partitions import multi_key, parse_candle_partition
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import MOSCOW, Timeframe


class LoadState(StrEnum):
    """Where one partition stands."""

    MISSING = "missing"  # never materialized
    FINAL = "final"  # loaded after its period closed: never fetched again unless refreshed
    OPEN = "open"  # loaded while its period is still open: re-fetched for freshness
    STALE = "stale"  # loaded before its period closed, and the period has closed since


@dataclass(frozen=True)
class PartitionState:
    date_key: str
    state: LoadState
    storage_id: int | None

    @property
    def needs_load(self) -> bool:
        return self.state is not LoadState.FINAL


_MAX_RECORDS_PER_FETCH = 10_000


def _metadata_final(record: dg.EventLogRecord) -> bool:
    materialization = record.asset_materialization
    if materialization is None:
        return False
    value = materialization.metadata.get("final")
    raw = getattr(value, "value", value)
    return bool(raw)


def partition_states(
    instance: dg.DagsterInstance,
    timeframe: Timeframe,
    security: SecurityKey,
    date_keys: Sequence[str],
    *,
    now: dt.datetime | None = None,
) -> list[PartitionState]:
    """The load state of one security's partitions, in the order of ``date_keys``."""
    return partition_states_many(instance, timeframe, [security], date_keys, now=now)[security]


def partition_states_many(
    instance: dg.DagsterInstance,
    timeframe: Timeframe,
    securities: Sequence[SecurityKey],
    date_keys: Sequence[str],
    *,
    now: dt.datetime | None = None,
) -> dict[SecurityKey, list[PartitionState]]:
    """Load states of many securities' partitions with two storage queries in all.

    ``now`` (aware) decides whether a not-final partition's period has closed; automation passes
    ISS's clock so that a source whose clock differs from ours is judged by its own time.
    """
    asset_key = dg.AssetKey(timeframe.asset_name)
    keys = {
        (security, date_key): str(multi_key(security, date_key))
        for security in securities
        for date_key in date_keys
    }
    latest = instance.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(keys.values())
    )
    final_by_storage_id: dict[int, bool] = {}
    storage_ids = list(latest.values())
    # Dagster refuses to fetch more than 10,000 records at a time (300 securities x 3 years of
    # days loaded at 30% is ~100,000).
    for first in range(0, len(storage_ids), _MAX_RECORDS_PER_FETCH):
        chunk = storage_ids[first : first + _MAX_RECORDS_PER_FETCH]
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=chunk), limit=len(chunk)
        ).records
        final_by_storage_id.update((record.storage_id, _metadata_final(record)) for record in records)
    moment = now or dt.datetime.now(MOSCOW)
    window_ends = (
        {
            date_key: parse_candle_partition(timeframe, keys[(securities[0], date_key)]).end
            for date_key in date_keys
        }
        if securities
        else {}
    )
    states: dict[SecurityKey, list[PartitionState]] = {security: [] for security in securities}
    for (security, date_key), key in keys.items():
        storage_id = latest.get(key)
        if storage_id is None:
            state = LoadState.MISSING
        elif final_by_storage_id.get(storage_id, False):
            state = LoadState.FINAL
        elif window_ends[date_key] <= moment:
            state = LoadState.STALE
        else:
            state = LoadState.OPEN
        states[security].append(PartitionState(date_key, state, storage_id))
    return states


def contiguous_runs(date_keys: Sequence[str], all_keys: Sequence[str]) -> list[list[str]]:
    """Split ``date_keys`` into runs that are contiguous within the ordered ``all_keys``."""
    position = {key: index for index, key in enumerate(all_keys)}
    runs: list[list[str]] = []
    for key in sorted(date_keys, key=position.__getitem__):
        if runs and position[key] == position[runs[-1][-1]] + 1:
            runs[-1].append(key)
        else:
            runs.append([key])
    return runs
