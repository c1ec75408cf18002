"""The README's main command (``candlestick dev``: webserver + daemon) doing the work by itself.

Dagster's storage and the warehouse are in PostgreSQL. A security added with the CLI fills itself in
through the sensor and the daemon; a backfill launched like the UI does (GraphQL) runs as one run.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline_tests.conftest import REPO_ROOT
from candlestick_pipeline_tests.e2e.conftest import BIN, Project

pytestmark = pytest.mark.e2e
NOW = dt.datetime(2025, 6, 10, 15, 0)
LAUNCH_BACKFILL = """
mutation($p: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $p) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
BACKFILL_STATUS = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status numPartitions runs(limit: 50) { runId status } } } }"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def dagster_dev(postgres_project: Project) -> Iterator[tuple[Project, str]]:
    project = postgres_project
    project.standin.set_now(NOW)
    project.extra_env.update(
        CANDLESTICK_TIMEFRAMES="1h,1d",
        CANDLESTICK_EARLIEST_DATE="2025-04-01",
        CANDLESTICK_FRESH_TIMEFRAMES="",
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(project.home / "dagster-dev.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "candlestick"), "dev", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT,
        env=project.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: _up(url), 120, "the Dagster webserver")
        yield project, url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/server_info", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _count(project: Project, key: SecurityKey, timeframe: str, start: dt.datetime, end: dt.datetime) -> int:
    engine = warehouse.create_warehouse_engine(project.warehouse_dsn)
    try:
        return warehouse.read_candles(engine, key, timeframe, start, end).height
    finally:
        engine.dispose()


def _graphql(url: str, query: str, variables: dict[str, object]) -> dict[str, object]:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]  # type: ignore[no-any-return]


def test_sensor_fills_a_new_security_and_a_ui_backfill_is_one_run(dagster_dev: tuple[Project, str]) -> None:
    project, url = dagster_dev
    market = project.standin.market
    project.run("candlestick", "create-security", "GAZP")
    gazp = SecurityKey("GAZP", "TQBR")

    # No click anywhere: the sensor plans the history, the daemon runs it.
    april_june = (dt.datetime(2025, 4, 1), dt.datetime(2025, 7, 1))
    expected = market.candles_frame("GAZP", "TQBR", 60, *april_june, NOW).height
    _wait_for(lambda: _count(project, gazp, "1h", *april_june) == expected, 240, "GAZP 1h history")
    year = (dt.datetime(2025, 1, 1), dt.datetime(2026, 1, 1))
    expected_days = market.candles_frame("GAZP", "TQBR", 24, *year, NOW).height
    _wait_for(lambda: _count(project, gazp, "1d", *year) == expected_days, 120, "GAZP 1d history")

    # A month of minutes as the UI launches it: one backfill, one run.
    params = {
        "partitionsByAssets": [
            {
                "assetKey": {"path": ["candles_1m"]},
                "partitions": {"ranges": [{"start": "2025-05-01|GAZP.TQBR", "end": "2025-05-31|GAZP.TQBR"}]},
            }
        ]
    }
    launched = _graphql(url, LAUNCH_BACKFILL, {"p": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched  # type: ignore[index]
    backfill_id = launched["backfillId"]  # type: ignore[index]

    def _done() -> bool:
        status = _graphql(url, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        return status["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED")  # type: ignore[index]

    _wait_for(_done, 240, "the backfill")
    status = _graphql(url, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    assert status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), status  # type: ignore[index]
    assert status["numPartitions"] == 31 and len(status["runs"]) == 1  # type: ignore[index]
    may = (dt.datetime(2025, 5, 1), dt.datetime(2025, 6, 1))
    assert _count(project, gazp, "1m", *may) == market.candles_frame("GAZP", "TQBR", 1, *may, NOW).height
