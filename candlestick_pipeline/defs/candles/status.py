"""What is loaded, read from Dagster's partition status (there is no table of loaded spans).

A partition counts as loaded when its latest materialization is final, i.e. it was loaded after its
period closed (see ``loading.is_final``). A partition loaded while its period was still open is
"stale" once the period closes, and is fetched again.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.event_log import SqlEventLogStorage, SqlEventLogStorageTable
from dagster._serdes import deserialize_value

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


def _metadata_final(materialization: dg.AssetMaterialization | None) -> bool:
    if materialization is None:
        return False
    value = materialization.metadata.get("final")
    raw = getattr(value, "value", value)
    return bool(raw)


def _final_from_serialized(text: str) -> bool:
    """``final`` of a stored materialization event, read from its JSON.

    Dagster's own deserialization rebuilds every metadata value of the event (about 200 us a
    record: 20 s for B6's 98,640 materializations); the one flag needs only ``json.loads``. A flag
    that is not a plain bool, or a layout this does not know, goes Dagster's way, so both agree.
    """
    try:
        event = json.loads(text)
        entries = event["dagster_event"]["event_specific_data"]["materialization"]["metadata_entries"]
        for entry in entries:
            if entry["label"] == "final":
                data = entry["entry_data"]
                if data["__class__"] == "BoolMetadataEntryData" and isinstance(data["value"], bool):
                    return data["value"]
                break
        else:
            return False
    except (KeyError, TypeError, ValueError):
        pass
    record = deserialize_value(text, dg.EventLogEntry)
    return _metadata_final(record.asset_materialization)


def _chunks(values: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for first in range(0, len(values), size):
        yield values[first : first + size]


def _final_by_storage_id(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, storage_ids: Sequence[int]
) -> dict[int, bool]:
    """Whether each materialization (by storage id) was final."""
    storage: Any = instance.event_log_storage
    final: dict[int, bool] = {}
    if isinstance(storage, SqlEventLogStorage):
        # Dagster's SQL storages (SQLite, PostgreSQL) keep every materialization's event in
        # event_logs (on SQLite, in the cross-run index): read the JSON and parse only the flag.
        table = SqlEventLogStorageTable
        with storage.index_connection() as conn:
            for chunk in _chunks(storage_ids, _MAX_RECORDS_PER_FETCH):
                rows = conn.execute(sa.select(table.c.id, table.c.event).where(table.c.id.in_(chunk)))
                final.update((int(row[0]), _final_from_serialized(row[1])) for row in rows)
        return final
    # Dagster refuses to fetch more than 10,000 records at a time (300 securities x 3 years of
    # days loaded at 30% is ~100,000).
    for chunk in _chunks(storage_ids, _MAX_RECORDS_PER_FETCH):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(chunk)), limit=len(chunk)
        ).records
        final.update((record.storage_id, _metadata_final(record.asset_materialization)) for record in records)
    return final


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
    final_by_storage_id = _final_by_storage_id(instance, asset_key, list(latest.values()))
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
