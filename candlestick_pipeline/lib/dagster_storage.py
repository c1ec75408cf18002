"""Dagster's PostgreSQL storage, holding its connections open: ``storage: custom`` in
``deploy/postgres/dagster.yaml``.

Outside the webserver, dagster-postgres opens a new connection for every storage call
(``NullPool``): a run of 30 one-minute partitions opened 274 sessions, and every one costs a
PostgreSQL backend start. This storage is Dagster's own, with what the webserver does to it
(``optimize_for_webserver``) done in every process that opens the instance: the daemon, the code
server, each run worker, the ``candlestick`` CLI. Each storage then keeps one connection (more only
while several threads use it at once); the same run opened 60 sessions and took 3.4-3.7 s instead of
4.6-5.8 s (docs/benchmarks.md, session 4).

A process that forks must not use such an instance on both sides of the fork: parent and child
would share its connections. The forked workers of ``candlestick load`` open their own instance and
never touch the parent's.
"""

from dagster._core.storage.config import PostgresStorageConfig
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config


class PooledPostgresStorage(DagsterPostgresStorage):
    """Dagster's PostgreSQL storage (runs, events, schedules) with one connection held per storage.

    Configured exactly as ``storage: postgres`` (``postgres_url`` or the ``postgres_db`` fields).
    No statement timeout is set; the webserver sets its own, as it does for ``storage: postgres``.
    """

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: PostgresStorageConfig
    ) -> "PooledPostgresStorage":
        storage = cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=bool(config_value.get("should_autocreate_tables", True)),
            token_provider=get_token_provider_from_config(config_value),
        )
        for part in (storage.run_storage, storage.event_log_storage, storage.schedule_storage):
            part.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=10)
        return storage
