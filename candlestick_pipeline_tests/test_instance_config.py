"""The shipped dagster.yaml files load as Dagster instances (SQLite default and PostgreSQL)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from candlestick_pipeline.defs.iss.resource import ISS_POOL, ensure_iss_pool
from candlestick_pipeline_tests.conftest import REPO_ROOT, pg_sessions_opened


def test_embedded_default_instance_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        instance.add_dynamic_partitions("securities", ["SBER.TQBR"])
        assert instance.get_dynamic_partitions("securities") == ["SBER.TQBR"]
    assert (tmp_path / "history" / "runs.db").exists()  # the storage lives in $DAGSTER_HOME


def test_embedded_default_instance_names_dagster_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(REPO_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with pytest.raises(dg.DagsterInvalidConfigError, match="DAGSTER_HOME"):
        dg.DagsterInstance.from_config(str(tmp_path))


def test_postgres_instance_loads(pg_database: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_PG_URL", pg_dsn.replace("+psycopg:", "+psycopg2:"))
    with dg.DagsterInstance.from_config(str(REPO_ROOT / "deploy" / "postgres")) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.add_dynamic_partitions("securities", ["SBER.TQBR"])
        assert instance.get_dynamic_partitions("securities") == ["SBER.TQBR"]


def test_postgres_instance_holds_its_connections(
    pg_database: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dagster-postgres alone opens a connection per storage call; deploy/postgres keeps one per storage."""
    monkeypatch.setenv("DAGSTER_PG_URL", pg_dsn.replace("+psycopg:", "+psycopg2:"))
    with dg.DagsterInstance.from_config(str(REPO_ROOT / "deploy" / "postgres")) as instance:
        before = pg_sessions_opened(pg_database)
        for number in range(30):
            instance.add_dynamic_partitions("securities", [f"S{number}.TQBR"])  # run storage
            instance.get_latest_materialization_event(dg.AssetKey("candles_1m"))  # event log storage
            instance.all_instigator_state()  # schedule storage
        assert len(instance.get_dynamic_partitions("securities")) == 30
        assert pg_sessions_opened(pg_database) - before <= 3  # 303 with storage: postgres


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_iss_pool_gets_its_default_limit_once_and_again_without_error(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "sqlite":
        shutil.copy(REPO_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
        home = tmp_path
    else:
        monkeypatch.setenv(
            "DAGSTER_PG_URL", request.getfixturevalue("pg_dsn").replace("+psycopg:", "+psycopg2:")
        )
        home = REPO_ROOT / "deploy" / "postgres"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert ISS_POOL not in storage.get_concurrency_keys()
        ensure_iss_pool(instance)
        assert storage.get_concurrency_info(ISS_POOL).slot_count == 4  # dagster.yaml's default_limit
        # A second `candlestick load` on the same instance: Dagster's own call raises here on PostgreSQL.
        ensure_iss_pool(instance)
        assert storage.get_concurrency_info(ISS_POOL).slot_count == 4
        # A limit someone set by hand is theirs: it is not reset to the default.
        storage.set_concurrency_slots(ISS_POOL, 2)
        ensure_iss_pool(instance)
        assert storage.get_concurrency_info(ISS_POOL).slot_count == 2


@pytest.mark.parametrize(("given", "seen"), [(None, "1000"), ("0", "0"), ("50", "50")])
def test_runs_write_their_events_in_batches_unless_the_user_says_otherwise(
    given: str | None, seen: str
) -> None:
    """Every process of this code location imports the package, which sets Dagster's switch."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_EVENT_BATCH_SIZE"}
    if given is not None:
        env["DAGSTER_EVENT_BATCH_SIZE"] = given
    code = "import os, candlestick_pipeline; print(os.environ['DAGSTER_EVENT_BATCH_SIZE'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == seen
