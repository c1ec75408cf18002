"""Fault injection as an HTTP client sees it, the counters, and the control endpoints."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from candlestick_pipeline.standin.server import FAULT_KINDS, ISSStandIn

NOW = dt.datetime(2025, 6, 2, 15, 0, 30)
CANDLES = "/iss/engines/stock/markets/shares/boards/TQBR/securities/SBER/candles.json"
PARAMS: dict[str, str | int] = {"from": "2025-05-30", "till": "2025-05-30", "interval": 60}
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def iss(standin: ISSStandIn) -> Iterator[httpx.Client]:
    standin.set_now(NOW)
    with httpx.Client(base_url=standin.base_url, timeout=5) as client:
        yield client


def _raw_get(base_url: str, path: str) -> tuple[bytes, bytes]:
    """One HTTP/1.1 GET on a raw socket: (header bytes, every body byte received until close)."""
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body


def test_5xx(iss: httpx.Client, standin: ISSStandIn) -> None:
    standin.set_faults(fail_next=["5xx"] * 6)
    statuses = {iss.get(CANDLES, params=PARAMS).status_code for _ in range(6)}
    assert statuses <= {500, 503} and statuses
    assert iss.get(CANDLES, params=PARAMS).status_code == 200


def test_429_has_retry_after(iss: httpx.Client, standin: ISSStandIn) -> None:
    standin.set_faults(p_429=1.0, retry_after_seconds=0.5)
    response = iss.get(CANDLES, params=PARAMS)
    assert response.status_code == 429 and response.headers["retry-after"] == "0.5"


def test_html_502(iss: httpx.Client, standin: ISSStandIn) -> None:
    standin.set_faults(fail_next=["html_502"])
    response = iss.get(CANDLES, params=PARAMS)
    assert response.status_code == 502
    assert response.headers["content-type"] == "text/html" and "502 Bad Gateway" in response.text


def test_error_inside_a_200(iss: httpx.Client, standin: ISSStandIn) -> None:
    standin.set_faults(fail_next=["error_200", "error_200"])
    response = iss.get(CANDLES, params=PARAMS)
    assert response.status_code == 200
    assert response.json() == {"candles": {"error": "Error while acquiring data."}}
    assert iss.get("/iss/securities/SBER.json").json() == {
        "description": {"error": "Error while acquiring data."}
    }


def test_truncated_body(iss: httpx.Client, standin: ISSStandIn) -> None:
    standin.set_faults(fail_next=["truncated"])
    with pytest.raises(httpx.RemoteProtocolError):
        iss.get(CANDLES, params=PARAMS)
    standin.set_faults(fail_next=["truncated"])
    head, body = _raw_get(standin.base_url, f"{CANDLES}?from=2025-05-30&till=2025-05-30&interval=60")
    declared = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    assert 0 < len(body) < declared
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    assert iss.get(CANDLES, params=PARAMS).status_code == 200


def test_connection_reset(iss: httpx.Client, standin: ISSStandIn) -> None:
    standin.set_faults(fail_next=["reset"])
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        iss.get(CANDLES, params=PARAMS)
    assert iss.get(CANDLES, params=PARAMS).status_code == 200


def test_slow_answer_times_out(standin: ISSStandIn) -> None:
    standin.set_now(NOW)
    standin.set_faults(fail_next=["slow"], slow_seconds=2.0)
    with httpx.Client(base_url=standin.base_url, timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
        client.get(CANDLES, params=PARAMS)


def test_down_and_refuse(iss: httpx.Client, standin: ISSStandIn) -> None:
    standin.set_faults(down=True)
    assert iss.get("/iss/securities/SBER.json").status_code == 503
    assert iss.get(CANDLES, params=PARAMS).status_code == 503
    assert iss.get("/_standin/stats").status_code == 200  # control endpoints are never faulted
    standin.set_faults(down_mode="refuse")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        iss.get(CANDLES, params=PARAMS)
    standin.set_faults(down=False)
    assert iss.get(CANDLES, params=PARAMS).status_code == 200
    assert standin.stats.faults_injected == {"down": 2, "refuse": 1}


def test_latency(iss: httpx.Client, standin: ISSStandIn) -> None:
    standin.set_faults(latency_ms=150)
    started = time.perf_counter()
    iss.get(CANDLES, params=PARAMS)
    assert time.perf_counter() - started >= 0.15
    started = time.perf_counter()
    iss.get("/_standin/stats")
    assert time.perf_counter() - started < 0.15


def test_time_in_flight_gives_the_average_concurrency(standin: ISSStandIn) -> None:
    standin.set_now(NOW)
    standin.set_faults(latency_ms=200)

    def get(_: int) -> None:
        with httpx.Client(base_url=standin.base_url, timeout=5) as client:
            client.get(CANDLES, params=PARAMS)

    standin.reset_stats()
    with ThreadPoolExecutor(max_workers=3) as pool:  # three at once, then one alone
        list(pool.map(get, range(3)))
    get(3)
    snapshot = standin.stats.snapshot()
    window, in_flight = snapshot["busy_window_seconds"], snapshot["in_flight_seconds"]
    assert 0.4 <= window < 0.8  # about 2 x 200 ms
    assert 0.8 <= in_flight < 1.2  # about 4 x 200 ms
    assert 1.5 < in_flight / window < 2.5  # 3 in flight for half the time, 1 for the other half
    standin.reset_stats()
    assert (
        standin.stats.snapshot()["in_flight_seconds"] == standin.stats.snapshot()["busy_window_seconds"] == 0
    )


def test_only_paths_limits_faults_to_candles(iss: httpx.Client, standin: ISSStandIn) -> None:
    standin.set_faults(p_5xx=1.0, only_paths=["candles"])
    assert iss.get("/iss/securities/SBER.json").status_code == 200
    assert iss.get(f"{CANDLES.removesuffix('candles.json')}candleborders.json").status_code == 200
    assert iss.get(CANDLES, params=PARAMS).status_code in (500, 503)


def test_probabilities_are_seeded_and_reproducible() -> None:
    def statuses(seed: int) -> list[int]:
        with ISSStandIn(now=NOW) as server, httpx.Client(base_url=server.base_url) as client:
            server.set_faults(p_5xx=0.3, p_429=0.3, retry_after_seconds=0, seed=seed)
            return [client.get("/iss/securities/GAZP.json").status_code for _ in range(30)]

    first, again, other = statuses(1), statuses(1), statuses(2)
    assert first == again != other
    assert {200, 429} <= set(first) and set(first) & {500, 503}


def test_every_fault_kind_is_counted(iss: httpx.Client, standin: ISSStandIn) -> None:
    standin.set_faults(fail_next=list(FAULT_KINDS), slow_seconds=0.01)
    for _ in FAULT_KINDS:
        with contextlib.suppress(httpx.TransportError):
            iss.get(CANDLES, params=PARAMS)
    assert standin.stats.faults_injected == dict.fromkeys(FAULT_KINDS, 1)
    assert standin.candle_requests("SBER", "TQBR", 60) == len(FAULT_KINDS)
    assert standin.faults.fail_next == []


def test_bad_fault_settings_are_refused(standin: ISSStandIn) -> None:
    with pytest.raises(ValueError):
        standin.set_faults(p_5xx=2.0)
    with pytest.raises(ValueError):
        standin.set_faults(fail_next=["meteor"])
    with pytest.raises(ValueError):
        standin.set_faults(no_such_setting=1)
    assert standin.faults.p_5xx == 0.0


def test_counters(iss: httpx.Client, standin: ISSStandIn) -> None:
    iss.get("/iss/securities/SBER.json")
    iss.get(CANDLES, params=PARAMS)
    iss.get("/iss/engines/stock/markets/shares/securities/SBER/candles.json", params={"start": 500})
    iss.get("/iss/engines/stock/markets/shares/boards/TQBR/securities/SBER/candleborders.json")
    snapshot = standin.stats.snapshot()
    json.dumps(snapshot)
    assert snapshot["total_requests"] == 4
    assert snapshot["by_endpoint"] == {"securities": 1, "candles": 2, "candleborders": 1, "other": 0}
    first, second = snapshot["candle_requests_log"]
    assert {
        k: first[k] for k in ("secid", "board", "engine", "market", "interval", "from", "till", "start")
    } == {
        "secid": "SBER",
        "board": "TQBR",
        "engine": "stock",
        "market": "shares",
        "interval": 60,
        "from": "2025-05-30",
        "till": "2025-05-30",
        "start": 0,
    }
    assert (second["board"], second["interval"], second["start"], second["form"]) == (
        "TQBR",
        10,
        500,
        "market",
    )
    assert standin.candle_requests() == 2 and standin.candle_requests(interval=60) == 1
    assert standin.candle_requests(board="SMAL") == 0
    standin.reset_stats()
    assert standin.stats.total_requests == 0 and standin.candle_requests() == 0


def test_control_endpoints(iss: httpx.Client, standin: ISSStandIn) -> None:
    iss.get(CANDLES, params=PARAMS)
    assert iss.get("/_standin/stats").json()["by_endpoint"]["candles"] == 1
    assert iss.post("/_standin/reset").json() == {"ok": True}
    assert iss.get("/_standin/stats").json()["total_requests"] == 0

    assert iss.post("/_standin/clock", json={"now": "2025-06-02 16:00:00"}).status_code == 200
    assert standin.now == dt.datetime(2025, 6, 2, 16, 0)
    assert iss.post("/_standin/clock", json={"now": None}).json()["fixed"] is False
    assert standin.fixed_now is None
    assert iss.post("/_standin/clock", json={"now": "soon"}).status_code == 400
    standin.set_now(NOW)

    faults = iss.post("/_standin/faults", json={"p_429": 1.0, "only_paths": ["candles"]}).json()
    assert faults["p_429"] == 1.0 and standin.faults.only_paths == ["candles"]
    assert iss.get(CANDLES, params=PARAMS).status_code == 429
    assert iss.post("/_standin/faults", json={"p_429": "often"}).status_code == 400
    iss.post("/_standin/faults", json={"p_429": 0.0})

    before = iss.get(CANDLES, params=PARAMS).json()["candles"]["data"]
    assert iss.post("/_standin/revision", json={"revision": 1}).json() == {"revision": 1}
    assert iss.get(CANDLES, params=PARAMS).json()["candles"]["data"] != before
    iss.post("/_standin/revision", json={"revision": 0})
    assert iss.get(CANDLES, params=PARAMS).json()["candles"]["data"] == before

    first_minute = standin.market.minute_bars("SBER", "TQBR", dt.date(2025, 5, 30), NOW)[0].begin
    broken = {"secid": "SBER", "board": "TQBR", "begin": first_minute.isoformat(" ")}
    assert iss.post("/_standin/break", json=broken).status_code == 200
    assert iss.post("/_standin/break", json={**broken, "begin": "2025-05-30 03:00:00"}).status_code == 400
    assert iss.post("/_standin/nothing").status_code == 404
    assert iss.post("/_standin/faults", content=b"{not json").status_code == 400
    assert standin.stats.internal_errors == 0


def test_runs_as_a_module_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "candlestick_pipeline.standin", "--port", "0", "--now", "2025-06-02 15:00:00"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=base_url, timeout=5) as client:
            assert client.get("/_standin/clock").json()["now"] == "2025-06-02 15:00:00"
            assert client.get("/iss/securities/GAZP.json").status_code == 200
            assert client.get("/_standin/stats").json()["total_requests"] == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
