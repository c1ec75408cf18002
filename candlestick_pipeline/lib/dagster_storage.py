"""Dagster's own storages, with what a backfill of many partitions costs in them cut down.

``storage: custom`` names them: ``BatchedSqliteStorage`` in the repo's ``dagster.yaml`` (the
embedded default) and ``PooledPostgresStorage`` in ``deploy/postgres/dagster.yaml``. Both are
Dagster's classes, writing the same rows; what changes is how many statements and connections the
rows take. The figures are in docs/benchmarks.md (sessions 4 and 5).

* **A run's planned events in one statement.** A run of N partitions starts with N
  ``ASSET_MATERIALIZATION_PLANNED`` events, one per partition. Dagster hands them over as one batch
  (``DAGSTER_EVENT_BATCH_SIZE``), but its storages write them one at a time: on PostgreSQL an
  INSERT, a NOTIFY and an insert-or-update of the asset's row each; on SQLite the same through two
  new SQLAlchemy engines each (the run's file and the cross-run index). Here they are one INSERT,
  and the asset's row is written once, from the batch's last event, as dagster-postgres already
  does for a batch of materializations. Every partition keeps its own planned event, so a failed
  run still marks each of its partitions failed.
* **A batch of materializations in one statement on SQLite too** (dagster-postgres has that, the
  SQLite storage does not): 120 materializations took 1.0 s, 240 engines.
* **A run's planned checks in one transaction on SQLite.** ``store_event`` takes three connections
  and commits for each planned check (the run's file, the index, ``asset_check_executions``): 25 ms
  a check on a slow core, five checks on a run's way to its first step. A batch of them goes in
  one executemany into the run's file and one transaction in the index.
* **Batches as an executemany of the one-row INSERT.** SQLAlchemy compiles it once and batches the
  rows itself; the INSERT of N VALUES that Dagster builds was compiled anew for every file.
* **A table known to exist is not looked up again.** Dagster asks whether a table exists before
  many calls (each dynamic partition lookup, each check event); on SQLite that is a connection of
  its own each time.
* **A partitioned check's planned rows serialized once.** A check planned over N partitions gets N
  rows in ``asset_check_executions``; Dagster serializes the same event (with its N-key partition
  subset) again for every row: 5 checks x 120 partitions took 0.3 s.
* **PostgreSQL connections held.** Outside the webserver, dagster-postgres opens a new connection
  for every storage call (``NullPool``): a run of 30 one-minute partitions opened 274 sessions, each
  a PostgreSQL backend start. ``PooledPostgresStorage`` does to every process what the webserver
  does (``optimize_for_webserver``): the daemon, the code server, each run worker, the CLI. Each
  storage then keeps one connection (more only while several threads use it at once).

* **Dagster's migration scripts read once a process.** Every storage checks its schema revision
  when it opens (SQLite: the runs, schedules and event-log index files, then every run's own event
  file as the run creates it; PostgreSQL: each storage) and every check read the ~70 migration
  scripts of ``dagster:_core/storage/alembic`` anew: 20-35 ms each, four or five times on a run's
  way to its first ISS request. They are Dagster's installed files, the same for the life of the
  process, so :func:`memoize_dagster_migration_scripts` keeps the one ``ScriptDirectory`` that
  reads them. Loading this module applies it (``dagster.yaml`` names the storages here).

A process that forks must not use a PostgreSQL instance on both sides of the fork: parent and child
would share its connections. The forked workers of ``candlestick load`` open their own instance and
never touch the parent's.

The overridden methods are Dagster 1.13's (pinned in ``uv.lock``);
``candlestick_pipeline_tests/lib/test_dagster_storage.py`` checks that these storages leave exactly
the rows Dagster's own leave.
"""

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from alembic.config import Config
from alembic.script import ScriptDirectory
from dagster import DagsterEventType, EventLogEntry
from dagster import _check as check
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.config import PostgresStorageConfig
from dagster._core.storage.event_log import SqlEventLogStorage, SqlEventLogStorageTable
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import ALEMBIC_SCRIPTS_LOCATION
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    SqliteStorageConfig,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData, serialize_value
from dagster._utils import mkdir_p
from dagster_postgres import DagsterPostgresStorage, PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

if TYPE_CHECKING:
    from dagster._core.events import AssetCheckEvaluationPlanned
    from dagster_postgres.auth import PgTokenProvider

_PLANNED = DagsterEventType.ASSET_MATERIALIZATION_PLANNED
_CHECK_PLANNED = DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED
# Events whose whole effect is their row in event_logs (mirrored into the index on SQLite), their
# asset tags and the asset's row, which the batch's last event of each asset decides.
_ASSET_ROW_EVENTS = frozenset(
    {_PLANNED, DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_OBSERVATION}
)


_script_directories: dict[str, ScriptDirectory] = {}
_script_directories_lock = threading.Lock()


def memoize_dagster_migration_scripts() -> None:
    """From now on, ``ScriptDirectory.from_config`` gives the same object (revision map read once)
    for Dagster's own migration scripts, in this process and those it forks; other script locations
    (the warehouse's, anyone's) are read as before. Idempotent."""
    if getattr(ScriptDirectory.from_config, "_candlestick_memo", False):
        return
    original = ScriptDirectory.from_config.__func__  # type: ignore[attr-defined]

    def from_config(cls: type[ScriptDirectory], config: Config) -> ScriptDirectory:
        location = config.get_alembic_option("script_location")
        if cls is not ScriptDirectory or location != ALEMBIC_SCRIPTS_LOCATION:
            return original(cls, config)
        with _script_directories_lock:
            script = _script_directories.get(location)
            if script is None:
                script = _script_directories[location] = original(cls, config)
                script.revision_map.heads  # read the scripts now, under the lock  # noqa: B018
            return script

    from_config._candlestick_memo = True  # type: ignore[attr-defined]
    ScriptDirectory.from_config = classmethod(from_config)  # type: ignore[method-assign,assignment]


memoize_dagster_migration_scripts()


def _by_run(events: Iterable[EventLogEntry]) -> list[list[EventLogEntry]]:
    """``events`` grouped by run, each group in the events' order."""
    by_run: dict[str, list[EventLogEntry]] = {}
    for event in events:
        by_run.setdefault(event.run_id, []).append(event)
    return list(by_run.values())


def _split(
    events: Sequence[EventLogEntry], kinds: Iterable[DagsterEventType]
) -> tuple[list[EventLogEntry], list[EventLogEntry]]:
    wanted = frozenset(kinds)
    chosen = [event for event in events if event.dagster_event_type in wanted]
    rest = [event for event in events if event.dagster_event_type not in wanted]
    return chosen, rest


class _EventLogShortcuts(SqlEventLogStorage):
    """What both event logs here do alike."""

    def has_table(self, table_name: str) -> bool:
        """Whether the table exists, asked of the database until it does, then remembered.

        Dagster asks before many calls (a dynamic partition's lookup, each check event): on SQLite a
        new connection and a PRAGMA each time, 5-10 ms on a slow core. Tables come with migrations
        and Dagster never drops them while it runs.
        """
        known: set[str] = self.__dict__.setdefault("_tables_known", set())
        if table_name in known:
            return True
        # The concrete storage (SQLite, PostgreSQL) follows in the MRO and implements it.
        exists = super().has_table(table_name)  # type: ignore[safe-super]
        if exists:
            known.add(table_name)
        return exists

    def _store_asset_rows(self, conn: Any, events: Sequence[EventLogEntry], event_ids: Sequence[int]) -> None:
        """Asset tags of every event; the asset's row from the last event of each asset."""
        self._store_asset_event_tags(conn, events, event_ids)
        last: dict[object, tuple[EventLogEntry, int]] = {}
        for event, event_id in zip(events, event_ids, strict=True):
            last[event.get_dagster_event().asset_key] = (event, event_id)
        for event, event_id in last.values():
            self._store_asset_event(conn, event, event_id)

    def _insert_event_rows(self, conn: Any, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert event rows (``_event_to_row``); their ids, in the rows' order.

        Dagster's ``prepare_insert_event_batch`` as an executemany of the one-row INSERT: SQLAlchemy
        compiles that once and batches the rows itself, where the INSERT of N VALUES was compiled
        anew every time (30 ms for 120 events on a slow core, at a run's start and at its end).
        """
        returning = SqlEventLogStorageTable.insert().returning(
            SqlEventLogStorageTable.c.id, sort_by_parameter_order=True
        )
        return [int(row[0]) for row in conn.execute(returning, rows)]

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        """Dagster's rows, one per partition, with the event serialized once instead of per row."""
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert(), self._check_planned_rows(event, event_id))

    def _check_planned_rows(self, event: EventLogEntry, event_id: int | None) -> list[dict[str, Any]]:
        """The ``asset_check_executions`` rows of a check's planned event: one per partition."""
        planned = cast("AssetCheckEvaluationPlanned", event.get_dagster_event().event_specific_data)
        keys: list[str | None] = (
            list(planned.partitions_subset.get_partition_keys()) if planned.partitions_subset else [None]
        )
        serialized = serialize_value(event)
        timestamp = self._event_insert_timestamp(event)
        return [
            {
                "asset_key": planned.asset_key.to_string(),
                "check_name": planned.check_name,
                "partition": key,
                "run_id": event.run_id,
                "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
                "evaluation_event": serialized,
                "evaluation_event_timestamp": timestamp,
                "evaluation_event_storage_id": event_id,
            }
            for key in keys
        ]


class _BatchedPostgresEventLogStorage(_EventLogShortcuts, PostgresEventLogStorage):
    """dagster-postgres's event log; a batch's planned events in one INSERT (see the module)."""

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        planned, rest = _split(events, [_PLANNED])
        if len(planned) > 1:
            with self._connect() as conn:
                event_ids = self._insert_event_rows(conn, [self._event_to_row(event) for event in planned])
            with self.index_transaction() as conn:
                self._store_asset_rows(conn, planned, event_ids)
        else:
            rest = [*planned, *rest]
        if len(rest) > 1:
            super().store_event_batch(rest)
        elif rest:
            self.store_event(rest[0])


class _BatchedSqliteEventLogStorage(_EventLogShortcuts, SqliteEventLogStorage):
    """Dagster's SQLite event log; a batch's planned events and materializations in one INSERT into
    the run's file and one into the cross-run index, as ``store_event`` mirrors them one by one."""

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        batched, rest = _split(events, _ASSET_ROW_EVENTS)
        checks, rest = _split(rest, [_CHECK_PLANNED])
        for run_events in _by_run(batched):
            if len(run_events) == 1:
                self.store_event(run_events[0])
                continue
            with self._inserted(run_events) as (conn, event_ids):
                self._store_asset_rows(conn, run_events, event_ids)
        for run_events in _by_run(checks):
            if len(run_events) == 1:
                self.store_event(run_events[0])
                continue
            check.invariant(
                self.supports_asset_checks,
                "Asset checks require a database schema migration. Run `dagster instance migrate`.",
            )
            # A run's checks planned together: store_event took three connections and commits
            # for each (its file, the index, the executions table), 25 ms a check on a run's way
            # to its first step.
            with self._inserted(run_events) as (conn, event_ids):
                rows = [
                    row
                    for event, event_id in zip(run_events, event_ids, strict=True)
                    for row in self._check_planned_rows(event, event_id)
                ]
                conn.execute(AssetCheckExecutionsTable.insert(), rows)
        for event in rest:
            self.store_event(event)

    @contextmanager
    def _inserted(self, run_events: Sequence[EventLogEntry]) -> Iterator[tuple[Any, list[int]]]:
        """Insert one run's events into its file and into the index, as ``store_event`` does one by
        one; yields the index transaction and the events' ids in the index, in order."""
        rows = [self._event_to_row(event) for event in run_events]
        with self.run_connection(run_events[0].run_id) as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)
        with self.index_transaction() as conn:
            yield conn, self._insert_event_rows(conn, rows)


class BatchedSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage (``storage: sqlite``), writing batches of asset events at once.

    Configured as ``storage: sqlite``: ``base_dir`` (``env: DAGSTER_HOME`` in the repo's
    ``dagster.yaml``). Same files, same rows.
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        # DagsterSqliteStorage.__init__ with our event log; building Dagster's first would start a
        # file watcher for nothing.
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = _BatchedSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: SqliteStorageConfig
    ) -> "BatchedSqliteStorage":
        mkdir_p(config_value["base_dir"])
        return cls(config_value["base_dir"], inst_data=inst_data)


class PooledPostgresStorage(DagsterPostgresStorage):
    """Dagster's PostgreSQL storage (runs, events, schedules) with one connection held per storage,
    and a run's planned events written in one statement.

    Configured exactly as ``storage: postgres`` (``postgres_url`` or the ``postgres_db`` fields).
    No statement timeout is set; the webserver sets its own, as it does for ``storage: postgres``.
    """

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: "PgTokenProvider | None" = None,
    ) -> None:
        # DagsterPostgresStorage.__init__ with our event log (Dagster's would open a connection for
        # nothing).
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self._run_storage = PostgresRunStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._event_log_storage = _BatchedPostgresEventLogStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._schedule_storage = PostgresScheduleStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        super(DagsterPostgresStorage, self).__init__()
        for part in (self._run_storage, self._event_log_storage, self._schedule_storage):
            part.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=10)

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: PostgresStorageConfig
    ) -> "PooledPostgresStorage":
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=bool(config_value.get("should_autocreate_tables", True)),
            token_provider=get_token_provider_from_config(config_value),
        )
