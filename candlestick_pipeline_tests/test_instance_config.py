"""The shipped dagster.yaml files load as Dagster instances (SQLite default and PostgreSQL)."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from candlestick_pipeline_tests.conftest import REPO_ROOT


def test_embedded_default_instance_loads(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        instance.add_dynamic_partitions("securities", ["SBER.TQBR"])
        assert instance.get_dynamic_partitions("securities") == ["SBER.TQBR"]


def test_postgres_instance_loads(pg_database: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_PG_URL", pg_dsn.replace("+psycopg:", "+psycopg2:"))
    with dg.DagsterInstance.from_config(str(REPO_ROOT / "deploy" / "postgres")) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.add_dynamic_partitions("securities", ["SBER.TQBR"])
        assert instance.get_dynamic_partitions("securities") == ["SBER.TQBR"]
