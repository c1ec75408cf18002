"""Shared fixtures: throw-away PostgreSQL databases, SQLite files, the ISS stand-in, samples.

PostgreSQL is mandatory: a test that asks for ``pg_dsn`` fails (never skips) when the server in
``CANDLESTICK_TEST_PG_ADMIN_DSN`` cannot be reached. CI and every developer machine have one.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

# Step retries keep their shape in tests but not their 30-second delays.
os.environ.setdefault("CANDLESTICK_RUN_RETRY_DELAY_SECONDS", "0.1")

ADMIN_DSN = os.environ.get("CANDLESTICK_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO_ROOT = Path(__file__).resolve().parents[1]
ISS_SAMPLES = Path(os.environ.get("CANDLESTICK_ISS_SAMPLES", REPO_ROOT.parent / "shared" / "iss-samples"))


def stop_process(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """Terminate a server a test started and wait for it; kill it if it outlasts ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _admin_connect() -> psycopg.Connection:
    try:
        return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - a broken machine, not a test
        pytest.fail(f"PostgreSQL is required for the tests and is not reachable at {ADMIN_DSN}: {exc}")


def _pg_url(dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    user = info.get("user", "postgres")
    host = info.get("host", "127.0.0.1")
    port = info.get("port", "5432")
    return f"postgresql+psycopg://{user}@{host}:{port}/{dbname}"


@pytest.fixture
def make_pg_database() -> Iterator[Callable[[], str]]:
    """Creates fresh, empty PostgreSQL databases on demand; drops them all afterwards."""
    created: list[str] = []

    def _make() -> str:
        name = f"cp_test_{uuid.uuid4().hex[:12]}"
        with _admin_connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return name

    try:
        yield _make
    finally:
        with _admin_connect() as conn:
            for name in created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_database(make_pg_database: Callable[[], str]) -> str:
    """A fresh, empty PostgreSQL database (its name), dropped after the test."""
    return make_pg_database()


def pg_url(dbname: str, driver: str = "psycopg") -> str:
    """SQLAlchemy URL of a test database (``psycopg2`` for Dagster's own storage)."""
    return _pg_url(dbname).replace("+psycopg:", f"+{driver}:")


def pg_sessions_opened(dbname: str) -> int:
    """How many sessions have connected to ``dbname`` since it was created (PostgreSQL's statistics).

    Backends report when they exit, a moment after the client has gone: this waits for that.
    """
    time.sleep(1.0)
    with _admin_connect() as conn:
        row = conn.execute("select sessions from pg_stat_database where datname = %s", (dbname,)).fetchone()
    assert row is not None, f"no statistics for database {dbname}"
    return int(row[0])


@pytest.fixture
def pg_dsn(pg_database: str) -> str:
    """SQLAlchemy DSN (psycopg 3) of a fresh PostgreSQL database."""
    return _pg_url(pg_database)


@pytest.fixture
def sqlite_dsn(tmp_path: Path) -> str:
    """SQLAlchemy DSN of a SQLite file in the test's temporary folder."""
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each warehouse backend in turn: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.db'}"
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture(scope="session")
def iss_samples() -> Path:
    """The folder of real recorded ISS responses (``../shared/iss-samples`` beside the repo)."""
    if not ISS_SAMPLES.is_dir():
        pytest.fail(f"ISS samples not found at {ISS_SAMPLES}; set CANDLESTICK_ISS_SAMPLES")
    return ISS_SAMPLES


@pytest.fixture
def standin() -> Iterator[ISSStandIn]:  # noqa: F821 - imported lazily below
    """A fresh ISS stand-in on 127.0.0.1 (ephemeral port), stopped after the test."""
    from candlestick_pipeline.standin.server import ISSStandIn

    server = ISSStandIn()
    server.start()
    try:
        yield server
    finally:
        server.stop()
