"""ISSClient against httpx.MockTransport: paging, de-duplication, retries, backoff, concurrency."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import random
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from candlestick_pipeline.config import ISSSettings
from candlestick_pipeline.defs.iss.client import (
    USER_AGENT,
    VALID_INTERVALS,
    ClientStats,
    ISSClient,
    _bars_left,
    shared_ssl_context,
)
from candlestick_pipeline.defs.iss.errors import (
    ISSResponseError,
    ISSUnavailableError,
    UnknownSecurityError,
    WrongBoardError,
)
from candlestick_pipeline.lib.securities import InvalidSecurityKeyError, SecurityInfo, SecurityKey
from candlestick_pipeline_tests.factories import security_info

BASE = "https://iss.test"
D = dt.date
T = dt.datetime
COLUMNS = ["open", "close", "high", "low", "value", "volume", "begin", "end"]
CANDLES_PATH = "/iss/engines/stock/markets/shares/boards/TQBR/securities/SBER/candles.json"
Handler = Callable[[httpx.Request], httpx.Response]

SBER = security_info(
    SecurityKey("SBER", "TQBR"),
    "Сбербанк",
    currency="RUB",
    name=None,
    listed_from=None,
    history_from=None,
    security_type=None,
    security_group=None,
)


def _bars(day: D, count: int, *, start_minute: int = 0, close: float = 100.0) -> list[list[Any]]:
    """``count`` one-minute ISS rows of ``day`` from 10:00 + ``start_minute``."""
    rows = []
    for i in range(start_minute, start_minute + count):
        begin = T.combine(day, dt.time(10)) + dt.timedelta(minutes=i)
        end = begin + dt.timedelta(seconds=59)
        rows.append(
            [
                100,
                close,
                101.5,
                99,
                1000.5 + i,
                10 + i,
                f"{begin:%Y-%m-%d %H:%M:%S}",
                f"{end:%Y-%m-%d %H:%M:%S}",
            ]
        )
    return rows


def _page(rows: list[list[Any]]) -> httpx.Response:
    return httpx.Response(200, json={"candles": {"columns": COLUMNS, "data": rows}})


class _PagedISS:
    """Serves ``rows`` in pages of ``page_size`` by ``start``, like ISS; records every request."""

    def __init__(self, rows: list[list[Any]], page_size: int = 500) -> None:
        self.rows = rows
        self.page_size = page_size
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        start = int(request.url.params.get("start", "0"))
        return _page(self.rows[start : start + self.page_size])


class _Script:
    """Answers requests from a script (responses or exceptions); then delegates to ``then``."""

    def __init__(self, steps: list[httpx.Response | Exception], then: Handler) -> None:
        self.steps = list(steps)
        self.then = then
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.steps:
            step = self.steps.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        return self.then(request)


class _UpperBoundRng(random.Random):
    """Always draws the top of the jitter range, to make the backoff bound visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _client(handler: Handler, delays: list[float] | None = None, **kwargs: Any) -> ISSClient:
    sleeps = delays if delays is not None else []
    kwargs.setdefault("rng", random.Random(7))
    return ISSClient(BASE, transport=httpx.MockTransport(handler), sleep=sleeps.append, **kwargs)


DAY = D(2024, 3, 1)


def _day_fetch(client: ISSClient, day: D = DAY) -> Any:
    return client.get_candles(SBER, 1, day, day)


# --------------------------------------------------------------------------------------------------
# Paging and de-duplication


def test_pages_until_an_empty_page_and_always_sends_interval() -> None:
    day = D(2024, 3, 1)
    iss = _PagedISS(_bars(day, 800), page_size=300)
    with _client(iss) as client:
        fetch = client.get_candles(SBER, 1, day, day)
    assert [int(r.url.params["start"]) for r in iss.requests] == [0, 300, 600, 800]
    assert (fetch.pages, fetch.requests, fetch.retries) == (4, 4, 0)
    assert (fetch.duplicates_dropped, fetch.rows_outside_window) == (0, 0)
    assert fetch.frame.height == 800
    assert fetch.frame["begin"].is_sorted() and fetch.frame["begin"][0] == T(2024, 3, 1, 10, 0)
    assert fetch.frame.row(0, named=True)["open"] == 100.0
    for request in iss.requests:
        assert request.url.path == CANDLES_PATH
        params = request.url.params
        assert (params["from"], params["till"], params["interval"]) == ("2024-03-01", "2024-03-01", "1")
        assert (params["iss.meta"], params["iss.only"]) == ("off", "candles")
        assert request.headers["User-Agent"] == USER_AGENT
        assert "candlestick-pipeline" in USER_AGENT


@pytest.mark.parametrize("interval", VALID_INTERVALS)
def test_interval_is_always_in_the_query(interval: int) -> None:
    iss = _PagedISS([])
    with _client(iss) as client:
        fetch = client.get_candles(SBER, interval, D(2024, 1, 1), D(2024, 12, 31))
    assert fetch.frame.is_empty() and fetch.pages == 1
    assert [r.url.params["interval"] for r in iss.requests] == [str(interval)]


def test_duplicates_across_pages_are_dropped_keeping_the_last_seen() -> None:
    day = D(2024, 3, 1)
    first = _bars(day, 5, close=100.0)
    # The offset shifted between pages: the second page repeats two bars, with newer values.
    second = _bars(day, 2, start_minute=3, close=111.0) + _bars(day, 3, start_minute=5, close=111.0)
    pages = [first, second, []]

    def handler(request: httpx.Request) -> httpx.Response:
        return _page(pages.pop(0))

    with _client(handler) as client:
        fetch = _day_fetch(client, day)
    assert fetch.duplicates_dropped == 2 and fetch.pages == 3
    assert fetch.frame.height == 8 and fetch.frame["begin"].is_unique().all()
    assert fetch.frame["begin"].is_sorted()
    assert fetch.frame["close"].to_list() == [100.0] * 3 + [111.0] * 5


def test_rows_outside_the_window_are_counted_and_the_offset_still_advances() -> None:
    rows = _bars(D(2024, 2, 29), 2) + _bars(D(2024, 3, 1), 3) + _bars(D(2024, 3, 2), 1)
    iss = _PagedISS(rows, page_size=4)
    with _client(iss) as client:
        fetch = _day_fetch(client)
    assert [int(r.url.params["start"]) for r in iss.requests] == [0, 4, 6]
    assert (fetch.frame.height, fetch.rows_outside_window) == (3, 3)


def test_a_server_that_ignores_start_is_an_error_not_a_loop() -> None:
    rows = _bars(D(2024, 3, 1), 3)
    with (
        _client(lambda request: _page(rows)) as client,
        pytest.raises(ISSResponseError, match="ignores 'start'"),
    ):
        _day_fetch(client)


def test_a_malformed_page_names_the_url_and_is_not_retried() -> None:
    iss = _Script(
        [], lambda request: httpx.Response(200, json={"candles": {"columns": ["x"], "data": [[1]]}})
    )
    with _client(iss) as client, pytest.raises(ISSResponseError) as caught:
        _day_fetch(client)
    assert CANDLES_PATH in str(caught.value) and "interval=1" in str(caught.value)
    assert iss.calls == 1


# --------------------------------------------------------------------------------------------------
# Retries


def _ok(request: httpx.Request) -> httpx.Response:
    start = int(request.url.params.get("start", "0"))
    return _page(_bars(D(2024, 3, 1), 2) if start == 0 else [])


def test_429_retry_after_seconds_is_honoured() -> None:
    delays: list[float] = []
    iss = _Script([httpx.Response(429, headers={"Retry-After": "7"}, text="Too Many Requests")], _ok)
    with _client(iss, delays) as client:
        fetch = _day_fetch(client)
    assert fetch.frame.height == 2 and (fetch.requests, fetch.retries, fetch.pages) == (3, 1, 2)
    assert len(delays) == 1 and delays[0] >= 7


def test_429_retry_after_http_date_is_honoured() -> None:
    delays: list[float] = []
    when = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20), usegmt=True)
    iss = _Script([httpx.Response(429, headers={"Retry-After": when})], _ok)
    with _client(iss, delays) as client:
        _day_fetch(client)
    assert len(delays) == 1 and 17 <= delays[0] <= 20


def test_retry_after_is_capped() -> None:
    delays: list[float] = []
    iss = _Script([httpx.Response(503, headers={"Retry-After": "86400"})], _ok)
    with _client(iss, delays, retry_after_max_seconds=90) as client:
        _day_fetch(client)
    assert delays == [90]


_TRUNCATED = json.dumps({"candles": {"columns": COLUMNS, "data": _bars(D(2024, 3, 1), 2)}}).encode()[:-30]
_JSON = {"Content-Type": "application/json; charset=utf-8"}
FAILURES: dict[str, Callable[[], httpx.Response | Exception]] = {
    "500": lambda: httpx.Response(500),
    "503": lambda: httpx.Response(503, text="Service Unavailable"),
    "502-html": lambda: httpx.Response(
        502, headers={"Content-Type": "text/html"}, text="<html><body><h1>502 Bad Gateway</h1></body></html>"
    ),
    "200-html": lambda: httpx.Response(
        200, headers={"Content-Type": "text/html; charset=utf-8"}, text="<html>maintenance</html>"
    ),
    "200-error-block": lambda: httpx.Response(
        200, json={"candles": {"error": "Error while acquiring data."}}
    ),
    "truncated-json": lambda: httpx.Response(200, headers=_JSON, content=_TRUNCATED),
    "empty-body": lambda: httpx.Response(200, headers=_JSON, content=b""),
    "connect-error": lambda: httpx.ConnectError("connection refused"),
    "read-timeout": lambda: httpx.ReadTimeout("timed out"),
    "remote-protocol-error": lambda: httpx.RemoteProtocolError(
        "peer closed connection without sending complete message body"
    ),
    "read-error": lambda: httpx.ReadError("connection reset by peer"),
    "pool-timeout": lambda: httpx.PoolTimeout("pool"),
    "broken-gzip": lambda: httpx.DecodingError("Error -3 while decompressing data"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_transient_failures_are_retried_and_the_data_is_exact(failure: str) -> None:
    delays: list[float] = []
    iss = _Script([FAILURES[failure](), FAILURES[failure]()], _ok)
    with _client(iss, delays) as client:
        fetch = _day_fetch(client)
    assert (fetch.requests, fetch.retries, fetch.pages) == (4, 2, 2)
    assert len(delays) == 2
    with _client(_ok) as clean:
        expected = _day_fetch(clean).frame
    assert fetch.frame.equals(expected) and fetch.frame.height == 2


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_other_4xx_are_not_retried(status: int) -> None:
    delays: list[float] = []
    iss = _Script([], lambda request: httpx.Response(status, text="nope"))
    with _client(iss, delays) as client, pytest.raises(ISSResponseError) as caught:
        _day_fetch(client)
    assert iss.calls == 1 and delays == []
    assert caught.value.status == status
    assert f"HTTP {status}" in str(caught.value) and CANDLES_PATH in str(caught.value)


def test_redirects_are_followed_but_a_loop_is_an_error() -> None:
    def moved(request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "http":
            return httpx.Response(301, headers={"Location": str(request.url.copy_with(scheme="https"))})
        return _ok(request)

    with ISSClient("http://iss.test", transport=httpx.MockTransport(moved)) as client:
        assert _day_fetch(client).frame.height == 2

    def loop(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": str(request.url)})

    with _client(loop) as client, pytest.raises(ISSResponseError, match="TooManyRedirects"):
        _day_fetch(client)


def test_attempts_are_bounded_and_the_final_error_names_the_url() -> None:
    delays: list[float] = []
    iss = _Script([], lambda request: httpx.Response(503))
    with _client(iss, delays, max_attempts=4) as client, pytest.raises(ISSUnavailableError) as caught:
        _day_fetch(client)
    assert iss.calls == 4 and len(delays) == 3
    error = caught.value
    assert error.attempts == 4 and "HTTP 503" in error.last_error
    assert error.url.startswith(BASE + CANDLES_PATH) and "start=0" in error.url
    assert "ISS" in str(error) and error.url in str(error) and "HTTP 503" in str(error)
    assert client.stats == ClientStats(requests=4, retries=3, pages=0)


def test_final_error_for_an_exception_names_it() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    iss = _Script([], refuse)
    with _client(iss, max_attempts=2) as client, pytest.raises(ISSUnavailableError) as caught:
        _day_fetch(client)
    assert caught.value.last_error == "ConnectError: connection refused"


def test_backoff_grows_exponentially_and_is_capped() -> None:
    delays: list[float] = []
    iss = _Script([], lambda request: httpx.Response(500))
    client = _client(
        iss, delays, max_attempts=8, backoff_base_seconds=0.5, backoff_max_seconds=10, rng=_UpperBoundRng()
    )
    with client, pytest.raises(ISSUnavailableError):
        _day_fetch(client)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_is_fully_jittered() -> None:
    bounds = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    runs = []
    for seed in (1, 2):
        delays: list[float] = []
        client = _client(
            lambda request: httpx.Response(500),
            delays,
            max_attempts=8,
            backoff_base_seconds=0.5,
            backoff_max_seconds=10,
            rng=random.Random(seed),
        )
        with client, pytest.raises(ISSUnavailableError):
            _day_fetch(client)
        assert all(0 <= delay <= bound for delay, bound in zip(delays, bounds, strict=True))
        assert delays != bounds
        runs.append(delays)
    assert runs[0] != runs[1]


def test_many_attempts_do_not_overflow_the_backoff() -> None:
    delays: list[float] = []
    client = _client(lambda request: httpx.Response(500), delays, max_attempts=1100, rng=_UpperBoundRng())
    with client, pytest.raises(ISSUnavailableError):
        _day_fetch(client)
    assert max(delays) == 30


# --------------------------------------------------------------------------------------------------
# Securities and borders


def _sample_server(folder: Path, seen: list[str]) -> Handler:
    files = {
        "SBER": "securities_SBER_rec2021-01-23T19-09Z.json",
        "FXGD": "securities_FXGD_rec2021-01-23.json",
        "GAZP": "securities_GAZP_rec2023-05-18.json",
    }
    unknown = "securities_XXXX_unknown-secid_empty_rec2021-01-23.json"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        assert request.url.params["iss.meta"] == "off"
        if request.url.path.endswith("/candleborders.json"):
            name = "candleborders_GAZP_TQBR_board_rec2023-05-18.json"
        else:
            secid = request.url.path.removeprefix("/iss/securities/").removesuffix(".json")
            name = files.get(secid, unknown)
        return httpx.Response(
            200,
            headers={"Content-Type": "application/json; charset=utf-8"},
            content=(folder / name).read_bytes(),
        )

    return handler


def test_get_security_resolves_the_primary_board(iss_samples: Path) -> None:
    seen: list[str] = []
    with _client(_sample_server(iss_samples, seen)) as client:
        info = client.get_security(" SBER ")
    assert (info.secid, info.board, info.engine, info.market, info.decimals) == (
        "SBER",
        "TQBR",
        "stock",
        "shares",
        2,
    )
    assert seen == ["/iss/securities/SBER.json"]


def test_get_security_on_a_named_board(iss_samples: Path) -> None:
    with _client(_sample_server(iss_samples, [])) as client:
        info = client.get_security("FXGD", "tqtd")
        assert (info.board, info.currency, info.is_primary) == ("TQTD", "USD", False)
        with pytest.raises(WrongBoardError) as caught:
            client.get_security("FXGD", "TQBR")
    assert caught.value.secid == "FXGD" and "TQTF" in caught.value.boards


def test_get_security_retries_once_in_upper_case(iss_samples: Path) -> None:
    seen: list[str] = []
    with _client(_sample_server(iss_samples, seen)) as client:
        info = client.get_security("sber")
    assert info.secid == "SBER"
    assert seen == ["/iss/securities/sber.json", "/iss/securities/SBER.json"]


def test_unknown_security(iss_samples: Path) -> None:
    seen: list[str] = []
    with _client(_sample_server(iss_samples, seen)) as client:
        with pytest.raises(UnknownSecurityError, match="ISS has no security 'XXXX'"):
            client.get_security("XXXX")
        assert seen == ["/iss/securities/XXXX.json"]
        with pytest.raises(UnknownSecurityError, match="ISS has no security 'SiZ9'"):
            client.get_security("SiZ9")
    assert seen[1:] == ["/iss/securities/SiZ9.json", "/iss/securities/SIZ9.json"]


def test_invalid_secid_or_board_sends_nothing() -> None:
    iss = _Script([], _ok)
    with _client(iss) as client:
        with pytest.raises(InvalidSecurityKeyError):
            client.get_security("SB ER")
        with pytest.raises(InvalidSecurityKeyError):
            client.get_security("SBER", "TQ.BR")
    assert iss.calls == 0


def test_get_candle_borders(iss_samples: Path) -> None:
    seen: list[str] = []
    with _client(_sample_server(iss_samples, seen)) as client:
        borders = client.get_candle_borders(SBER)
    assert seen == ["/iss/engines/stock/markets/shares/boards/TQBR/securities/SBER/candleborders.json"]
    assert borders[1] == (T(2014, 6, 9, 10, 0), T(2023, 5, 18, 18, 59, 59))
    assert sorted(borders) == [1, 4, 7, 10, 24, 31, 60]


# --------------------------------------------------------------------------------------------------
# Input validation


@pytest.mark.parametrize(
    ("interval", "date_from", "date_till", "message"),
    [
        (5, D(2024, 1, 1), D(2024, 1, 2), "interval must be one of 1, 10, 60, 24, 7, 31, 4"),
        (True, D(2024, 1, 1), D(2024, 1, 2), "interval must be one of"),
        (24, D(2024, 1, 2), D(2024, 1, 1), "date_from 2024-01-02 is after date_till 2024-01-01"),
        (24, T(2024, 1, 1, 12), D(2024, 1, 2), "date_from must be a datetime.date"),
        (24, D(2024, 1, 1), "2024-01-02", "date_till must be a datetime.date"),
    ],
)
def test_bad_inputs_are_value_errors(interval: Any, date_from: Any, date_till: Any, message: str) -> None:
    iss = _Script([], _ok)
    with _client(iss) as client:
        with pytest.raises(ValueError, match=message):
            client.get_candles(SBER, interval, date_from, date_till)
        with pytest.raises(ValueError, match=message):
            client.get_candles_many(
                [(SBER, 1, D(2024, 1, 1), D(2024, 1, 1)), (SBER, interval, date_from, date_till)]
            )
    assert iss.calls == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_url": "iss.moex.com"}, "http:// or https://"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"backoff_base_seconds": -1}, "backoff_base_seconds"),
    ],
)
def test_bad_client_settings(kwargs: dict[str, Any], message: str) -> None:
    base_url = kwargs.pop("base_url", BASE)
    with pytest.raises(ValueError, match=message):
        ISSClient(base_url, **kwargs)


def test_clients_share_one_verifying_tls_context() -> None:
    # Built per client, the context (the CA bundle loaded) took 20-30 ms of every run's start-up.
    with ISSClient("https://iss.test") as first, ISSClient("https://iss.test") as second:
        pools = [client._http._transport._pool for client in (first, second)]  # type: ignore[attr-defined]
        used = [pool._ssl_context for pool in pools]
    context = shared_ssl_context()
    assert used[0] is context and used[1] is context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.get_ca_certs() or context.cert_store_stats()["x509_ca"] > 0


def test_from_settings_timeout_and_close() -> None:
    settings = ISSSettings(
        base_url="https://iss.test/",
        timeout_seconds=12.5,
        max_concurrency=2,
        max_attempts=3,
        backoff_base_seconds=0.1,
        backoff_max_seconds=1.0,
    )
    iss = _PagedISS([])
    client = ISSClient.from_settings(settings, transport=httpx.MockTransport(iss), sleep=lambda s: None)
    with client:
        assert (client.base_url, client.max_concurrency, client.max_attempts) == ("https://iss.test", 2, 3)
        _day_fetch(client)
        assert not client.closed
    assert client.closed
    timeout = iss.requests[0].extensions["timeout"]
    assert timeout["read"] == 12.5 and timeout["connect"] == 10.0
    assert str(iss.requests[0].url).startswith("https://iss.test/iss/engines/")


# --------------------------------------------------------------------------------------------------
# Concurrency


class _SlowISS:
    """Answers after a short sleep and records the most requests it ever had in flight."""

    def __init__(self, delay: float = 0.02, pages_per_window: int = 2) -> None:
        self.delay = delay
        self.pages_per_window = pages_per_window
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.windows: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.in_flight += 1
            self.calls += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.windows.append(request.url.params["from"])
        try:
            time.sleep(self.delay)
            day = D.fromisoformat(request.url.params["from"])
            start = int(request.url.params["start"])
            page = start // 2
            return _page(_bars(day, 2, start_minute=start) if page < self.pages_per_window - 1 else [])
        finally:
            with self.lock:
                self.in_flight -= 1


def _windows(count: int) -> list[tuple[SecurityInfo, int, D, D]]:
    return [
        (SBER, 1, D(2024, 3, 1) + dt.timedelta(days=i), D(2024, 3, 1) + dt.timedelta(days=i))
        for i in range(count)
    ]


def test_get_candles_many_is_concurrent_bounded_and_in_input_order() -> None:
    iss = _SlowISS()
    windows = _windows(9)
    with _client(iss, max_concurrency=3) as client:
        fetches = client.get_candles_many(windows)
        stats = client.stats
    assert 1 < iss.max_in_flight <= 3
    assert [f.frame["begin"][0].date() for f in fetches] == [w[2] for w in windows]
    assert all(f.frame.height == 2 and f.pages == 2 and f.requests == 2 for f in fetches)
    assert stats == ClientStats(requests=iss.calls, retries=0, pages=iss.calls) and iss.calls == 18


def test_the_semaphore_bounds_requests_across_callers() -> None:
    iss = _SlowISS()
    errors: list[BaseException] = []
    with _client(iss, max_concurrency=3) as client:

        def run() -> None:
            try:
                client.get_candles_many(_windows(6))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert 1 < iss.max_in_flight <= 3 and iss.calls == 36


def test_get_candles_many_first_error_cancels_the_rest() -> None:
    slow = _SlowISS(delay=0.05, pages_per_window=4)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["from"] == "2024-03-01":
            return httpx.Response(404, text="no such thing")
        return slow(request)

    with _client(handler, max_concurrency=1) as client, pytest.raises(ISSResponseError, match="HTTP 404"):
        client.get_candles_many(_windows(5))
    # Window 2 may have slipped in before the failure was noticed; it stops at its next page.
    assert set(slow.windows) <= {"2024-03-02"} and len(slow.windows) < 4


def test_get_candles_many_of_nothing() -> None:
    with _client(_ok) as client:
        assert client.get_candles_many([]) == []


# --------------------------------------------------------------------------------------------------
# Streams: pages at interleaved offsets, handed out in order


class _ConcurrentPagedISS(_PagedISS):
    """``_PagedISS`` that answers slowly, in any order, and records the most requests in flight."""

    def __init__(self, rows: list[list[Any]], page_size: int = 500, delay: float = 0.02) -> None:
        super().__init__(rows, page_size)
        self.delay = delay
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.rng = random.Random(3)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            pause = self.delay * self.rng.random()
        time.sleep(pause)
        try:
            return super().__call__(request)
        finally:
            with self.lock:
                self.in_flight -= 1


def _days_of_bars(first: D, days: int, per_day: int) -> list[list[Any]]:
    return [row for i in range(days) for row in _bars(first + dt.timedelta(days=i), per_day)]


@pytest.mark.parametrize("page_size", [500, 120, 700])
def test_a_stream_pages_side_by_side_and_hands_the_rows_out_in_order(page_size: int) -> None:
    rows = _days_of_bars(D(2024, 3, 1), 10, 300)  # 3,000 rows
    iss = _ConcurrentPagedISS(rows, page_size=page_size)
    with _client(iss, max_concurrency=4) as client:
        stream = client.stream_candles(SBER, 1, D(2024, 3, 1), D(2024, 3, 10))
        frames = list(stream)
        stats = client.stats
    begins = [b for frame in frames for b in frame["begin"].to_list()]
    assert len(begins) == len(set(begins)) == 3000 and begins == sorted(begins)
    assert 1 < iss.max_in_flight <= 4
    assert stream.pages == stream.requests == stats.requests == len(iss.requests)
    if page_size == 500:
        # The data's 6 pages at 0, 500, ... 2500, the empty one at 3000, and those sent past the end
        # before it showed (at most the other 3 in flight and the 4 waiting beside them).
        starts = sorted(int(r.url.params["start"]) for r in iss.requests)
        assert starts[:7] == [500 * i for i in range(7)] and len(starts) <= 7 + 2 * 4 - 1


def test_a_stream_keeps_at_most_its_width_in_flight_with_as_many_again_ready() -> None:
    iss = _ConcurrentPagedISS(_days_of_bars(D(2024, 3, 1), 10, 300), page_size=100)
    with _client(iss, max_concurrency=8) as client:
        stream = client.stream_candles(SBER, 1, D(2024, 3, 1), D(2024, 3, 10), width=2)
        assert sum(frame.height for frame in stream) == 3000
    assert iss.max_in_flight == 2
    # 30 pages of data and the empty one; at most 2 x 2 - 1 sent past the end before it showed.
    assert 31 <= len(iss.requests) <= 31 + 2 * 2 - 1


def test_a_stream_sends_nothing_that_the_last_bar_of_a_page_shows_the_query_cannot_hold() -> None:
    # Ten days asked for (so the width is not cut to 1), 1,400 bars on the last one, from 00:00.
    last = D(2024, 3, 10)
    iss = _PagedISS(_bars(last, 1400, start_minute=-600))

    def slow_end(request: httpx.Request) -> httpx.Response:
        if int(request.url.params["start"]) >= 1000:  # the short page and beyond come last
            time.sleep(0.1)
        return iss(request)

    with _client(slow_end, max_concurrency=4) as client:
        stream = client.stream_candles(SBER, 1, D(2024, 3, 1), last)
        assert sum(frame.height for frame in stream) == 1400
    # The first four are submitted before any answer (1500 may still be dropped before it is sent).
    # Page 0's last bar (08:19 on the last day) leaves room for 941 more rows, so nothing goes to
    # 2000, 2500...: only the empty page that ends the query.
    starts = {int(r.url.params["start"]) for r in iss.requests}
    assert {0, 500, 1000, 1400} <= starts <= {0, 500, 1000, 1400, 1500}
    assert len(iss.requests) == len(starts)


@pytest.mark.parametrize(
    ("interval", "last_begin", "left"),
    [
        (1, T(2024, 3, 10, 23, 59), 1),
        (1, T(2024, 3, 10, 8, 19), 941),
        (1, T(2024, 3, 9, 23, 59, 30), 1441),  # unaligned: rounded up, never under
        (10, T(2024, 3, 10, 18, 40), 32),
        (60, T(2024, 3, 8, 23, 0), 49),
        (1, T(2024, 3, 11, 0, 0), 0),  # past the window: nothing more
        (24, T(2024, 3, 10), None),
        (31, T(2024, 3, 1), None),
    ],
)
def test_the_bars_a_page_leaves_room_for(interval: int, last_begin: T, left: int | None) -> None:
    assert _bars_left(interval, last_begin, D(2024, 3, 10)) == left


def test_a_failed_page_ends_the_stream_and_sends_nothing_more() -> None:
    rows = _days_of_bars(D(2024, 3, 1), 10, 300)
    paged = _ConcurrentPagedISS(rows)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["start"] == "1000":
            return httpx.Response(404, text="gone")
        return paged(request)

    with _client(handler, max_concurrency=2) as client:
        with pytest.raises(ISSResponseError, match="HTTP 404"):
            for _ in client.stream_candles(SBER, 1, D(2024, 3, 1), D(2024, 3, 10)):
                pass
        sent = client.stats.requests
        time.sleep(0.1)
        assert client.stats.requests == sent
    # Besides 1000, only pages already submitted beside it (2 in flight, 2 more ready) went out.
    assert {0, 500} <= {int(r.url.params["start"]) for r in paged.requests} <= {0, 500, 1500, 2000, 2500}


def test_leaving_a_stream_early_sends_nothing_more() -> None:
    iss = _ConcurrentPagedISS(_days_of_bars(D(2024, 3, 1), 10, 300))
    with _client(iss, max_concurrency=2) as client:
        stream = client.stream_candles(SBER, 1, D(2024, 3, 1), D(2024, 3, 10))
        for _ in stream:
            break
        sent = len(iss.requests)
        # Pages 0 and 500, then the three submitted when page 0 came (four in flight at most).
        assert sent <= 5
        time.sleep(0.1)
        assert len(iss.requests) == sent


def test_a_stream_is_iterated_once_and_checks_its_arguments() -> None:
    with _client(_PagedISS([])) as client:
        stream = client.stream_candles(SBER, 1, D(2024, 3, 1), D(2024, 3, 1))
        assert list(stream) == [] and stream.pages == 1
        with pytest.raises(RuntimeError, match="only once"):
            list(stream)
        with pytest.raises(ValueError, match="width"):
            client.stream_candles(SBER, 1, D(2024, 3, 1), D(2024, 3, 1), width=0)
        with pytest.raises(ValueError, match="interval"):
            client.stream_candles(SBER, 2, D(2024, 3, 1), D(2024, 3, 1))
