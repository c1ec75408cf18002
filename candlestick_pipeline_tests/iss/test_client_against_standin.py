"""ISSClient over real HTTP against the ISS stand-in: resolution, exact candles, faults."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from candlestick_pipeline.defs.iss.client import ISSClient
from candlestick_pipeline.defs.iss.errors import ISSUnavailableError, UnknownSecurityError, WrongBoardError
from candlestick_pipeline.lib.securities import SecurityInfo
from candlestick_pipeline.standin.server import ISSStandIn

NOW = dt.datetime(2025, 6, 10, 12, 0)  # naive Moscow time; every day below is complete by then
DAY = dt.date(2025, 6, 2)  # a Monday: morning, main and evening sessions, > 500 one-minute bars


def _client(standin: ISSStandIn, delays: list[float] | None = None, **kwargs: Any) -> ISSClient:
    sleeps = delays if delays is not None else []
    kwargs.setdefault("max_attempts", 6)
    return ISSClient(standin.base_url, sleep=sleeps.append, rng=random.Random(1), **kwargs)


def _truth(standin: ISSStandIn, info: SecurityInfo, interval: int, first: dt.date, last: dt.date) -> Any:
    start = dt.datetime.combine(first, dt.time())
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time())
    return standin.market.candles_frame(info.secid, info.board, interval, start, end, standin.now)


def test_resolves_securities(standin: ISSStandIn) -> None:
    standin.set_now(NOW)
    with _client(standin) as client:
        sber = client.get_security("SBER")
        assert (sber.secid, sber.board, sber.engine, sber.market) == ("SBER", "TQBR", "stock", "shares")
        assert sber.is_primary and "SMAL" in sber.other_boards and sber.decimals == 2
        ofz = client.get_security("SU26238RMFS4", "TQOB")
        assert (ofz.board, ofz.engine, ofz.market, ofz.is_primary) == ("TQOB", "stock", "bonds", True)
        assert ofz.isin == "RU000A1038V6"
        future = client.get_security("siz5")
        assert (future.secid, future.board, future.engine, future.market) == (
            "SiZ5",
            "RFUD",
            "futures",
            "forts",
        )
        smal = client.get_security("sber", "smal")
        assert (smal.secid, smal.board, smal.is_primary) == ("SBER", "SMAL", False)
        with pytest.raises(UnknownSecurityError, match="ISS has no security 'XXXX'"):
            client.get_security("XXXX")
        with pytest.raises(WrongBoardError) as caught:
            client.get_security("SBER", "TQOB")
    assert caught.value.board == "TQOB" and set(caught.value.boards) == {"TQBR", "SMAL"}


def test_a_day_of_minute_candles_is_exactly_what_the_standin_serves(standin: ISSStandIn) -> None:
    standin.set_now(NOW)
    with _client(standin) as client:
        sber = client.get_security("SBER")
        fetch = client.get_candles(sber, 1, DAY, DAY)
    expected = _truth(standin, sber, 1, DAY, DAY)
    assert expected.height > 500  # so that paging is exercised
    assert fetch.frame.equals(expected)
    assert fetch.pages == expected.height // 500 + 2 - (expected.height % 500 == 0)
    assert fetch.requests == fetch.pages and fetch.retries == 0
    assert (fetch.duplicates_dropped, fetch.rows_outside_window) == (0, 0)
    assert standin.candle_requests(secid="SBER", board="TQBR", interval=1) == fetch.requests


def test_candle_borders(standin: ISSStandIn) -> None:
    standin.set_now(NOW)
    with _client(standin) as client:
        sber = client.get_security("SBER")
        borders = client.get_candle_borders(sber)
    expected = standin.market.borders("SBER", "TQBR", standin.now)
    assert borders == {interval: (begin, end) for begin, end, interval in expected}


def test_faults_still_give_the_exact_data(standin: ISSStandIn) -> None:
    standin.set_now(NOW)
    with _client(standin) as client:
        sber = client.get_security("SBER")
        ofz = client.get_security("SU26238RMFS4")
    windows = [
        (sber, 1, DAY, DAY),
        (sber, 10, dt.date(2025, 5, 1), dt.date(2025, 5, 31)),
        (sber, 24, dt.date(2024, 1, 1), dt.date(2024, 12, 31)),
        (ofz, 1, DAY, DAY),
        (ofz, 60, dt.date(2025, 5, 1), dt.date(2025, 5, 31)),
    ]
    standin.set_faults(
        p_5xx=0.15,
        p_429=0.1,
        p_html_502=0.1,
        p_error_200=0.1,
        p_truncated=0.1,
        p_reset=0.1,
        retry_after_seconds=1,
        seed=11,
    )
    delays: list[float] = []
    with _client(standin, delays, max_attempts=40, max_concurrency=3) as client:
        fetches = client.get_candles_many(windows)
        stats = client.stats
    for fetch, (info, interval, first, last) in zip(fetches, windows, strict=True):
        assert fetch.frame.equals(_truth(standin, info, interval, first, last)), (info.secid, interval)
    assert stats.retries > 0 and sum(f.retries for f in fetches) == stats.retries
    assert len(delays) == stats.retries
    injected = standin.stats.snapshot()["faults_injected"]
    assert {"5xx", "429", "truncated", "reset"} <= set(injected)
    # Every 429 carried Retry-After: 1, and it was honoured.
    assert sum(1 for delay in delays if delay >= 1) >= injected["429"]


def test_a_slow_answer_times_out_and_is_retried(standin: ISSStandIn) -> None:
    standin.set_now(NOW)
    standin.set_faults(fail_next=["slow"], slow_seconds=3)
    with _client(standin, timeout_seconds=0.5) as client:
        sber = client.get_security("SBER")
        fetch = client.get_candles(sber, 24, dt.date(2025, 5, 1), dt.date(2025, 5, 31))
    assert fetch.frame.equals(_truth(standin, sber, 24, dt.date(2025, 5, 1), dt.date(2025, 5, 31)))
    assert standin.stats.snapshot()["faults_injected"] == {"slow": 1}


def test_a_server_that_stays_down_gives_iss_unavailable(standin: ISSStandIn) -> None:
    standin.set_faults(down=True, down_mode="refuse")
    with _client(standin, max_attempts=3) as client, pytest.raises(ISSUnavailableError) as caught:
        client.get_security("SBER")
    assert caught.value.attempts == 3
    assert caught.value.url == f"{standin.base_url}/iss/securities/SBER.json?iss.meta=off"
    assert caught.value.url in str(caught.value)
