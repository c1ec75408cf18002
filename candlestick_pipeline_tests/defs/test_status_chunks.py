"""partition_states_many reads the ``final`` flags in chunks (Dagster fetches <= 10,000 records at once),
and its JSON shortcut reads exactly what Dagster's deserialization reads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import yaml

from candlestick_pipeline.defs.candles import status
from candlestick_pipeline.defs.candles.partitions import SECURITIES_PARTITIONS, multi_key
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import MOSCOW, TIMEFRAMES
from candlestick_pipeline_tests.conftest import REPO_ROOT, pg_url

SECURITIES = [SecurityKey("SBER", "TQBR"), SecurityKey("GAZP", "TQBR")]
DAYS = ["2025-06-02", "2025-06-03", "2025-06-04", "2025-06-05"]
NOW = dt.datetime(2025, 6, 10, 12, tzinfo=MOSCOW)


def test_final_flags_read_in_chunks_give_the_same_states(monkeypatch: pytest.MonkeyPatch) -> None:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SECURITIES_PARTITIONS, [s.partition_key for s in SECURITIES])
        for number, (security, day) in enumerate((s, d) for s in SECURITIES for d in DAYS[:3]):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    "candles_1m", partition=str(multi_key(security, day)), metadata={"final": number % 2 == 0}
                )
            )
        whole = status.partition_states_many(instance, TIMEFRAMES["1m"], SECURITIES, DAYS, now=NOW)
        monkeypatch.setattr(status, "_MAX_RECORDS_PER_FETCH", 2)
        chunked = status.partition_states_many(instance, TIMEFRAMES["1m"], SECURITIES, DAYS, now=NOW)
    assert chunked == whole
    assert [s.state for s in whole[SECURITIES[0]]] == [
        status.LoadState.FINAL,
        status.LoadState.STALE,
        status.LoadState.FINAL,
        status.LoadState.MISSING,
    ]
    assert [s.state for s in whole[SECURITIES[1]]][:3] == [
        status.LoadState.STALE,
        status.LoadState.FINAL,
        status.LoadState.STALE,
    ]


# Every shape a "final" flag can take, and none at all.
FLAGS: list[object] = [True, False, dg.MetadataValue.bool(True), 1, 0, "yes", "", None, 2.5]


@contextmanager
def _instance(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dg.DagsterInstance]:
    if backend == "sqlite":
        with dg.instance_for_test() as instance:
            yield instance
        return
    storage = yaml.safe_load((REPO_ROOT / "deploy" / "postgres" / "dagster.yaml").read_text())["storage"]
    storage["custom"]["config"] = {"postgres_url": pg_url(request.getfixturevalue("pg_database"), "psycopg2")}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({"storage": storage}))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        yield instance


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_json_shortcut_reads_the_flag_as_dagster_does(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    security = SECURITIES[0]
    days = [f"2025-05-{day:02d}" for day in range(1, len(FLAGS) + 1)]
    with _instance(backend, tmp_path, request) as instance:
        instance.add_dynamic_partitions(SECURITIES_PARTITIONS, [security.partition_key])
        for day, flag in zip(days, FLAGS, strict=True):
            metadata = {"rows": 10} if flag is None else {"rows": 10, "final": flag}
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    "candles_1m", partition=str(multi_key(security, day)), metadata=metadata
                )
            )
        asset_key = dg.AssetKey("candles_1m")
        latest = instance.get_latest_storage_id_by_partition(
            asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION
        )
        ids = [latest[str(multi_key(security, day))] for day in days]
        fast = status._final_by_storage_id(instance, asset_key, ids)
        monkeypatch.setattr(status, "SqlEventLogStorage", type("NotThisOne", (), {}))  # Dagster's way
        slow = status._final_by_storage_id(instance, asset_key, ids)
    assert fast == slow
    assert [fast[i] for i in ids] == [True, False, True, True, False, True, False, False, True]
