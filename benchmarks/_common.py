"""Helpers shared by the backfill, memory and Dagster-scale benchmarks (not a benchmark itself).

* :class:`StandInProcess`: the ISS stand-in in its own process (so its CPU and GIL are not ours),
  with its control endpoints (latency, stats, reset).
* :func:`project_home`: a throw-away ``DAGSTER_HOME`` holding the repo's ``dagster.yaml`` (SQLite
  storage) or ``deploy/postgres/dagster.yaml`` with a throw-away PostgreSQL database, plus a
  throw-away warehouse (SQLite file or PostgreSQL database).
* :func:`register_securities`: what ``candlestick create-security`` does, in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
# The stand-in's frozen clock: a Tuesday afternoon, so "yesterday" and everything before is closed.
DEFAULT_NOW = "2025-06-10 15:00:00"


class StandInProcess:
    """``python -m candlestick_pipeline.standin`` on a free port, stopped on exit."""

    def __init__(self, now: str = DEFAULT_NOW, latency_ms: float = 0.0) -> None:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "candlestick_pipeline.standin",
                "--port",
                "0",
                "--now",
                now,
                "--latency-ms",
                str(latency_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(f"the ISS stand-in did not start: {line!r}")
        self.base_url = line

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base_url + path, data=data, method="POST" if data is not None else "GET"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def set_latency(self, latency_ms: float) -> None:
        self._call("/_standin/faults", {"latency_ms": latency_ms})

    def reset_stats(self) -> None:
        self._call("/_standin/reset", {})

    def candle_requests(self) -> int | None:
        return int(self._call("/_standin/stats")["candle_requests"])

    def utilisation(self) -> tuple[float, float] | None:
        """(requests in flight on average, seconds from the first request to the last answer)."""
        stats = self._call("/_standin/stats")
        window = float(stats["busy_window_seconds"])
        return (float(stats["in_flight_seconds"]) / window if window else 0.0), window

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> StandInProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ExternalISS:
    """An ISS (stand-in) that somebody else runs, at ``base_url``: no control endpoints.

    Its latency is whatever it was started with (pass the same ``--latency-ms`` to the script);
    requests are counted on our side (run metadata, the B2 loop), not by the server.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def set_latency(self, latency_ms: float) -> None:
        pass

    def reset_stats(self) -> None:
        pass

    def candle_requests(self) -> int | None:
        return None

    def utilisation(self) -> tuple[float, float] | None:
        return None

    def __enter__(self) -> ExternalISS:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


@contextmanager
def pg_database(admin_dsn: str, driver: str = "psycopg") -> Iterator[str]:
    """A fresh PostgreSQL database (SQLAlchemy URL with ``driver``), dropped afterwards."""
    name = f"cp_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(admin_dsn).set(drivername=f"postgresql+{driver}", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class ProjectHome:
    """A DAGSTER_HOME and a warehouse, and the environment that points a process at them."""

    home: Path
    warehouse_dsn: str
    storage: str
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CANDLESTICK_", "DAGSTER_", "ISS_"))}
        env.update(
            DAGSTER_HOME=str(self.home),
            CANDLESTICK_WAREHOUSE_DSN=self.warehouse_dsn,
            CANDLESTICK_DATA_DIR=str(self.home / "data"),
            PYTHONWARNINGS="ignore",
            **self.extra_env,
        )
        env.update(overrides)
        return env

    def apply(self, **overrides: str) -> None:
        """Point this process at the project (environment variables)."""
        for key in [k for k in os.environ if k.startswith(("CANDLESTICK_", "DAGSTER_", "ISS_"))]:
            del os.environ[key]
        os.environ.update(self.env(**overrides))


@contextmanager
def project_home(
    storage: str = "sqlite", warehouse: str = "sqlite", pg_admin_dsn: str = DEFAULT_PG_ADMIN_DSN
) -> Iterator[ProjectHome]:
    """A throw-away project: Dagster storage ``sqlite`` (repo dagster.yaml) or ``postgres``
    (deploy/postgres/dagster.yaml + a throw-away database); warehouse ``sqlite`` or ``postgres``."""
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cp_bench_home_")))
        extra: dict[str, str] = {}
        if storage == "postgres":
            shutil.copy(REPO_ROOT / "deploy" / "postgres" / "dagster.yaml", home / "dagster.yaml")
            extra["DAGSTER_PG_URL"] = stack.enter_context(pg_database(pg_admin_dsn, "psycopg2"))
        elif storage == "sqlite":
            shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
        else:
            raise ValueError(f"unknown storage {storage!r}")
        if warehouse == "postgres":
            dsn = stack.enter_context(pg_database(pg_admin_dsn))
        elif warehouse == "sqlite":
            dsn = f"sqlite:///{home / 'data' / 'warehouse.db'}"
        else:
            raise ValueError(f"unknown warehouse {warehouse!r}")
        yield ProjectHome(home, dsn, storage, extra)


def register_securities(base_url: str, keys: Sequence[str]) -> None:
    """``candlestick create-security`` for each ``SECID.BOARD``, in this process (the environment
    must point at the project, see :meth:`ProjectHome.apply`)."""
    import dagster as dg

    from candlestick_pipeline import config
    from candlestick_pipeline.defs.candles.partitions import SECURITIES_PARTITIONS
    from candlestick_pipeline.defs.iss.client import ISSClient
    from candlestick_pipeline.defs.iss.resource import ensure_iss_pool
    from candlestick_pipeline.lib import warehouse
    from candlestick_pipeline.lib.securities import SecurityKey

    engine = warehouse.create_warehouse_engine(config.warehouse_dsn())
    try:
        warehouse.migrate(engine)
        with ISSClient(base_url) as client:
            for raw in keys:
                key = SecurityKey.parse(raw)
                warehouse.upsert_security(engine, client.get_security(key.secid, key.board))
    finally:
        engine.dispose()
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(SECURITIES_PARTITIONS, list(keys))
        ensure_iss_pool(instance)  # as `candlestick load` does; the layouts that launch runs need it too


def bytecode_state() -> str:
    """Whether this environment's packages have their .pyc files: without them (PYTHONDONTWRITEBYTECODE
    set and the venv installed without compiling), every process compiles Dagster & co. from source,
    about 2.6 s of start-up each. pyproject.toml has uv compile them at install time."""
    import importlib.util

    import dagster

    compiled = Path(importlib.util.cache_from_source(dagster.__file__)).exists()
    if compiled:
        return "installed packages precompiled (.pyc)"
    return "NO .pyc for installed packages: every process compiles its imports (+2.6 s each); run `uv sync`"


def timed(command: Sequence[str], env: dict[str, str], log: Path | None = None) -> tuple[float, int]:
    """Run ``command`` from the repo root; (seconds, exit code). Output goes to ``log`` (or nowhere)."""
    started = time.perf_counter()
    with open(log, "ab") if log else open(os.devnull, "wb") as out:
        code = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=out, check=False).returncode
    return time.perf_counter() - started, code
