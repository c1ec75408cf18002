"""Security checks: no secret in Dagster's logs, metadata or storage; ports bound to localhost by
default; dependencies pinned by the lock file (and installed as locked).
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from candlestick_pipeline.defs.candles.partitions import multi_key
from candlestick_pipeline.defs.resources import build_resources
from candlestick_pipeline.standin.server import ISSStandIn
from candlestick_pipeline_tests.conftest import REPO_ROOT, pg_url
from candlestick_pipeline_tests.reliability.conftest import ASSETS, NOW, SBER, register, stored

PASSWORD = "Pw-7f3a9c-never-logged"


def _leaks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Where the password shows up for this run: event log entries, the run record, stored files."""
    found = []
    for entry in instance.all_logs(run_id):
        if PASSWORD in dg.serialize_value(entry):
            found.append(f"event {entry.dagster_event_type or entry.user_message[:80]}")
    run = instance.get_run_by_id(run_id)
    if run is not None and PASSWORD in dg.serialize_value(run):
        found.append("run record (config or tags)")
    for path in Path(instance.root_directory).rglob("*"):
        if path.is_file() and PASSWORD.encode() in path.read_bytes():
            found.append(f"file {path}")
    return found


def test_a_warehouse_password_appears_in_no_log_metadata_or_storage_of_a_run(
    instance: dg.DagsterInstance,
    standin: ISSStandIn,
    make_pg_database: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server trusts 127.0.0.1, so the password is accepted and unused: a real connection.
    dsn = sa.make_url(pg_url(make_pg_database())).set(password=PASSWORD).render_as_string(hide_password=False)
    standin.set_now(NOW)
    key = register(instance, standin, dsn)
    standin.set_faults(fail_next=["5xx", "reset"])  # warnings with URLs in the log, too
    monkeypatch.setenv("CANDLESTICK_WAREHOUSE_DSN", dsn)
    monkeypatch.setenv("ISS_BASE_URL", standin.base_url)
    monkeypatch.setenv("ISS_BACKOFF_BASE_SECONDS", "0.01")
    # The production resources: the DSN reaches Dagster as dg.EnvVar, never as a value.
    ok = dg.materialize(
        [ASSETS["candles_1m"]],
        instance=instance,
        resources=build_resources(),
        partition_key=str(multi_key(key, "2025-06-02")),
    )
    assert ok.success
    assert stored(dsn, key, "1m", NOW.replace(day=2, hour=0), NOW.replace(day=3, hour=0)).height > 0
    assert _leaks(instance, ok.run_id) == []

    # A warehouse that does not answer: the failure names it, with the password redacted.
    monkeypatch.setenv("CANDLESTICK_WAREHOUSE_DSN", f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:1/x")
    monkeypatch.setenv("CANDLESTICK_RUN_RETRIES", "0")
    failed = dg.materialize(
        [ASSETS["candles_1m"]],
        instance=instance,
        resources=build_resources(),
        partition_key=str(multi_key(SBER, "2025-06-03")),
        raise_on_error=False,
    )
    assert not failed.success
    assert "postgres:***@127.0.0.1:1/x" in dg.serialize_value(list(instance.all_logs(failed.run_id)))
    assert _leaks(instance, failed.run_id) == []

    # The scan itself works: a password that does get logged is found.
    run = instance.get_run_by_id(failed.run_id)
    assert run is not None
    instance.report_engine_event(f"oops: {PASSWORD}", run)
    assert _leaks(instance, failed.run_id) != []


def _compose() -> dict[str, object]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def _with_defaults(text: str) -> str:
    """A compose value with each ``${VAR:-default}`` replaced by its default (unset environment)."""
    return _VARIABLE.sub(lambda m: m["default"] or "", text)


def test_docker_compose_publishes_ports_on_localhost_only_and_holds_no_password() -> None:
    services = _compose()["services"]
    assert isinstance(services, dict)
    published = 0
    for name, service in services.items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports", []):
            # The short syntax must name the address; the long one would need host_ip.
            assert isinstance(port, str), (name, port)
            host_ip, host_port, container_port = _with_defaults(port).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond localhost by default"
            assert host_port.isdigit() and container_port.isdigit()
            published += 1
    assert published >= 3  # PostgreSQL, the Dagster UI, Datasette
    # The PostgreSQL password has no default: it must come from the environment.
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text
    for match in re.finditer(r"://[^:/\s]+:([^@\s]+)@", text):
        assert match.group(1).startswith("${POSTGRES_PASSWORD:?"), match.group(0)


def _pinned(specifier: str) -> str:
    return ",".join(sorted(part.strip() for part in specifier.split(",") if part.strip()))


def test_every_dependency_is_pinned_by_the_lock_and_installed_as_locked() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    lock_path = REPO_ROOT / "uv.lock"
    assert lock_path.is_file(), "uv.lock is missing: run `uv lock` and commit it"
    lock = tomllib.loads(lock_path.read_text())
    locked = {canonicalize_name(p["name"]): p for p in lock["package"]}
    runtime = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    requirements = list(runtime)
    for group in pyproject.get("dependency-groups", {}).values():
        requirements += [Requirement(r) for r in group if isinstance(r, str)]
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is in pyproject.toml but not in uv.lock"
        version = Version(locked[name]["version"])
        assert req.specifier.contains(version, prereleases=True), (
            f"uv.lock has {req.name} {version}, not {req}"
        )
        installed = Version(importlib.metadata.version(req.name))
        assert installed == version, f"{req.name} {installed} is installed, uv.lock says {version}"
    # The lock was made from this pyproject (otherwise `uv sync --frozen` installs a stale set).
    root = locked[canonicalize_name(pyproject["project"]["name"])]
    in_lock = {
        (canonicalize_name(d["name"]), _pinned(d.get("specifier", "")))
        for d in root["metadata"]["requires-dist"]
    }
    assert in_lock == {(canonicalize_name(r.name), _pinned(str(r.specifier))) for r in runtime}
