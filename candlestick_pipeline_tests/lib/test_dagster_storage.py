"""The storages of lib/dagster_storage.py leave exactly the rows Dagster's own storages leave.

The same runs (a single-run backfill of a partitioned asset with partitioned checks, one that
succeeds and one that fails) go into Dagster's storage and into ours, with Dagster's event batching
on; then every table that a run's asset events touch is compared row by row, run ids, storage ids
and times left out. Dagster's own read APIs must agree
too: materialized partitions and the partitions a failed run leaves failed.
"""

import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetEventTagsTable,
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._serdes import deserialize_value

from candlestick_pipeline_tests.conftest import REPO_ROOT, pg_url

_DAYS = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_date="2025-02-01")
_FIRST, _LAST = "2025-01-01", "2025-01-12"


def _definitions(fail: bool) -> list[Any]:
    @dg.asset(partitions_def=_DAYS, backfill_policy=dg.BackfillPolicy.single_run())
    def prices(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """A partitioned asset materialized as one run over a range."""
        if fail:
            raise RuntimeError("ISS went away")
        return dg.MaterializeResult(metadata={"partitions": len(context.partition_keys)})

    specs = [dg.AssetCheckSpec(name, asset="prices", partitions_def=_DAYS) for name in ("sane", "unique")]

    @dg.multi_asset_check(specs=specs, can_subset=False)
    def prices_checks(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        for spec in specs:
            yield dg.AssetCheckResult(asset_key="prices", check_name=spec.name, passed=True)

    return [prices, prices_checks]


def _run(instance: dg.DagsterInstance, fail: bool) -> None:
    dg.materialize(
        _definitions(fail),
        instance=instance,
        tags={"dagster/asset_partition_range_start": _FIRST, "dagster/asset_partition_range_end": _LAST},
        raise_on_error=False,
    )


def _sorted(rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(rows, key=repr)  # partitions may be None


def _event_type(serialized: str | None) -> str | None:
    return deserialize_value(serialized).dagster_event_type.value if serialized else None


def _stable(key: str, value: str) -> str:
    # A data version is a hash that differs from run to run (it includes the run's id).
    return "<hash>" if key == "dagster/data_version" else value


def _event_rows(conn: sa.Connection) -> list[tuple[Any, ...]]:
    table = SqlEventLogStorageTable
    rows = conn.execute(
        sa.select(table.c.dagster_event_type, table.c.asset_key, table.c.partition, table.c.event).where(
            table.c.asset_key.is_not(None)
        )
    )
    return _sorted(
        (kind, key, partition, deserialize_value(event).dagster_event.step_key)
        for kind, key, partition, event in rows
    )


def _last_materialization(conn: sa.Connection, serialized: str | None) -> tuple[str | None, bool]:
    """The partition of the asset's last materialization, and whether its storage id is that event."""
    if serialized is None:
        return None, False
    record = deserialize_value(serialized)
    events = SqlEventLogStorageTable
    stored = conn.execute(
        sa.select(events.c.partition).where(events.c.id == record.storage_id)
    ).scalar_one_or_none()
    return record.partition_key, stored == record.partition_key


def _stored_check_event(conn: sa.Connection, storage_id: int | None) -> tuple[str, str] | None:
    """The type and check name of the event a check execution row points at, so that a row that
    points at another event shows."""
    if storage_id is None:
        return None
    events = SqlEventLogStorageTable
    serialized = conn.execute(sa.select(events.c.event).where(events.c.id == storage_id)).scalar_one()
    event = deserialize_value(serialized).dagster_event
    return event.event_type_value, event.event_specific_data.check_name


def _index_rows(conn: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
    checks = AssetCheckExecutionsTable
    tags = AssetEventTagsTable
    keys = AssetKeyTable
    events = SqlEventLogStorageTable
    return {
        "event_logs": _event_rows(conn),
        "asset_check_executions": _sorted(
            (
                row.asset_key,
                row.check_name,
                row.partition,
                row.execution_status,
                _event_type(row.evaluation_event),
                _stored_check_event(conn, row.evaluation_event_storage_id),
            )
            for row in conn.execute(sa.select(checks))
        ),
        # Joined to the event each tag names, so that a tag on the wrong event shows.
        "asset_event_tags": _sorted(
            (row.asset_key, row.key, _stable(row.key, row.value), row.dagster_event_type, row.partition)
            for row in conn.execute(
                sa.select(
                    tags.c.asset_key,
                    tags.c.key,
                    tags.c.value,
                    events.c.dagster_event_type,
                    events.c.partition,
                ).join(events, events.c.id == tags.c.event_id)
            )
        ),
        "asset_keys": _sorted(
            (
                row.asset_key,
                row.last_run_id is not None,
                *_last_materialization(conn, row.last_materialization),
            )
            for row in conn.execute(sa.select(keys))
        ),
    }


def _snapshot(instance: dg.DagsterInstance) -> dict[str, Any]:
    storage = instance.event_log_storage
    with storage.index_connection() as conn:  # type: ignore[attr-defined]
        rows = _index_rows(conn)
    key = dg.AssetKey("prices")
    runs = instance.get_run_records()
    for record in runs:  # SQLite keeps each run's events in the run's own file as well
        with storage.run_connection(record.dagster_run.run_id) as conn:  # type: ignore[attr-defined]
            rows[f"run {record.dagster_run.status.value}"] = _event_rows(conn)
    rows["materialized"] = sorted(instance.get_materialized_partitions(key))
    rows["statuses"] = sorted(r.dagster_run.status.value for r in runs)
    # Planned and never materialized since: what Dagster shows as failed (the run failed) or in progress.
    attempts = storage.get_latest_asset_partition_materialization_attempts_without_materializations(key)
    failed_runs = {r.dagster_run.run_id for r in runs if r.dagster_run.status == dg.DagsterRunStatus.FAILURE}
    rows["failed"] = sorted(partition for partition, (run_id, _) in attempts.items() if run_id in failed_runs)
    return rows


@contextmanager
def _instance(
    home: Path, storage: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": storage, "telemetry": {"enabled": False}}))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _sqlite_storages(tmp_path: Path, make_db: Callable[[], str]) -> tuple[dict[str, Any], dict[str, Any]]:
    theirs = {"sqlite": {"base_dir": str(tmp_path / "theirs")}}
    ours = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())["storage"]
    return theirs, ours


def _postgres_storages(tmp_path: Path, make_db: Callable[[], str]) -> tuple[dict[str, Any], dict[str, Any]]:
    theirs = {"postgres": {"postgres_url": pg_url(make_db(), "psycopg2")}}
    ours = yaml.safe_load((REPO_ROOT / "deploy" / "postgres" / "dagster.yaml").read_text())["storage"]
    ours["custom"]["config"] = {"postgres_url": pg_url(make_db(), "psycopg2")}
    return theirs, ours


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_batched_storages_write_what_dagster_writes(
    backend: str,
    tmp_path: Path,
    make_pg_database: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    storages = _sqlite_storages if backend == "sqlite" else _postgres_storages
    theirs, ours = storages(tmp_path, make_pg_database)
    snapshots = []
    for name, storage in (("theirs", theirs), ("ours", ours)):
        with _instance(tmp_path / f"home_{name}", storage, monkeypatch) as instance:
            event_log = type(instance.event_log_storage).__name__
            assert event_log.startswith("_Batched") == (name == "ours"), event_log
            _run(instance, fail=False)
            _run(instance, fail=True)
            snapshots.append(_snapshot(instance))
        shutil.rmtree(tmp_path / f"home_{name}")
    dagsters, ours_seen = snapshots
    # What the runs must have left, so that equal snapshots mean something.
    days = [f"2025-01-{day:02d}" for day in range(1, 13)]
    assert dagsters["materialized"] == days
    planned = [row for row in dagsters["event_logs"] if row[0] == "ASSET_MATERIALIZATION_PLANNED"]
    assert len(planned) == 2 * 12  # one per partition, in each run
    check_planned = [row for row in dagsters["asset_check_executions"] if row[3] == "PLANNED"]
    assert len(check_planned) == 2 * 2 * 12  # two checks x two runs x 12 partitions
    assert dagsters["statuses"] == ["FAILURE", "SUCCESS"]
    assert dagsters["asset_keys"] == [('["prices"]', True, "2025-01-12", True)]
    assert dagsters["failed"] == days  # the failed run marks every partition of its range failed
    assert ours_seen == dagsters


def test_dagster_migration_scripts_are_read_once_a_process_and_no_one_elses() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from dagster._core.storage.runs.sqlite import sqlite_run_storage
    from dagster._core.storage.sql import get_alembic_config

    from candlestick_pipeline.lib import dagster_storage
    from candlestick_pipeline.lib.warehouse.engine import MIGRATIONS_DIR

    dagster_storage.memoize_dagster_migration_scripts()  # loading the module did it; twice is harmless
    dagsters = get_alembic_config(sqlite_run_storage.__file__)
    first, again = ScriptDirectory.from_config(dagsters), ScriptDirectory.from_config(dagsters)
    assert first is again
    assert first.as_revision_number("head") == first.get_current_head() is not None
    # A config of its own (another Config object, same scripts): still the one directory.
    copy = Config()
    copy.set_main_option("script_location", dagsters.get_main_option("script_location") or "")
    assert ScriptDirectory.from_config(copy) is first
    ours = Config()
    ours.set_main_option("script_location", str(MIGRATIONS_DIR))
    ours.set_main_option("path_separator", "os")
    assert ScriptDirectory.from_config(ours) is not ScriptDirectory.from_config(ours)


def test_a_table_is_looked_up_until_it_exists_then_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    from candlestick_pipeline.lib.dagster_storage import BatchedSqliteStorage

    asked: list[str] = []
    real = SqliteEventLogStorage.has_table

    def counted(self: SqliteEventLogStorage, table_name: str) -> bool:
        asked.append(table_name)
        return real(self, table_name)

    monkeypatch.setattr(SqliteEventLogStorage, "has_table", counted)
    event_log = BatchedSqliteStorage(str(tmp_path)).event_log_storage
    assert [event_log.has_table("dynamic_partitions") for _ in range(3)] == [True] * 3
    assert [event_log.has_table("no_such_table") for _ in range(2)] == [False] * 2
    assert asked == ["dynamic_partitions", "no_such_table", "no_such_table"]
