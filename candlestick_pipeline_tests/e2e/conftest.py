"""End-to-end helpers: a project environment for real processes (CLI, Dagster CLI, daemon)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from candlestick_pipeline.standin.server import ISSStandIn
from candlestick_pipeline_tests.conftest import REPO_ROOT, pg_url

BIN = Path(sys.executable).parent


@dataclass
class Project:
    """A DAGSTER_HOME, a warehouse and an ISS stand-in, as a user would configure them."""

    home: Path
    warehouse_dsn: str
    standin: ISSStandIn
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CANDLESTICK_", "DAGSTER_", "ISS_"))}
        env.update(
            DAGSTER_HOME=str(self.home),
            CANDLESTICK_WAREHOUSE_DSN=self.warehouse_dsn,
            CANDLESTICK_DATA_DIR=str(self.home / "data"),
            ISS_BASE_URL=self.standin.base_url,
            ISS_BACKOFF_BASE_SECONDS="0.05",
            CANDLESTICK_RUN_RETRY_DELAY_SECONDS="0.1",
            PYTHONWARNINGS="ignore",
            **self.extra_env,
        )
        return env

    def run(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a console script of this environment (``candlestick``, ``dagster``) from the repo root."""
        command = [str(BIN / args[0]), *args[1:]]
        proc = subprocess.run(
            command, cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture
def sqlite_project(tmp_path: Path, standin: ISSStandIn) -> Project:
    """The embedded default: the repo's dagster.yaml (SQLite storage) and a SQLite warehouse."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return Project(home, f"sqlite:///{home / 'data' / 'warehouse.db'}", standin)


@pytest.fixture
def postgres_project(tmp_path: Path, standin: ISSStandIn, make_pg_database) -> Project:  # type: ignore[no-untyped-def]
    """Production shape: deploy/postgres/dagster.yaml and a PostgreSQL warehouse (two databases)."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "deploy" / "postgres" / "dagster.yaml", home / "dagster.yaml")
    dagster_db, warehouse_db = make_pg_database(), make_pg_database()
    return Project(
        home,
        pg_url(warehouse_db),
        standin,
        extra_env={"DAGSTER_PG_URL": pg_url(dagster_db, "psycopg2")},
    )
