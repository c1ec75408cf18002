"""docker-compose.yml is a valid Compose file and keeps its services on localhost by default."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from candlestick_pipeline_tests.conftest import REPO_ROOT


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.fail(
        "neither `docker compose` nor `docker-compose` is installed (.ci/run installs docker-compose)"
    )


def test_docker_compose_config_is_valid() -> None:
    env = {**os.environ, "POSTGRES_PASSWORD": "only-for-validation"}
    proc = subprocess.run(
        [*_compose_command(), "config"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert {"postgres", "code", "webserver", "daemon", "datasette"} <= set(services)


def test_compose_refuses_to_start_without_a_password() -> None:
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    proc = subprocess.run(
        [*_compose_command(), "config"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0 and "POSTGRES_PASSWORD" in proc.stderr


def test_published_ports_are_localhost_by_default() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)
