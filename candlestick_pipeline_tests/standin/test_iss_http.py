"""The stand-in's ISS endpoints over HTTP, compared with the real recorded responses."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from candlestick_pipeline.standin.market import Bar
from candlestick_pipeline.standin.server import ISSStandIn

NOW = dt.datetime(2025, 6, 2, 15, 0, 30)
SBER_TQBR = "/iss/engines/stock/markets/shares/boards/TQBR/securities/SBER"


@pytest.fixture
def iss(standin: ISSStandIn) -> Iterator[httpx.Client]:
    standin.set_now(NOW)
    with httpx.Client(base_url=standin.base_url, timeout=10) as client:
        yield client


def _sample(folder: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / name).read_text(encoding="utf-8"))
    return data


def _rows(bars: list[Bar]) -> list[list[Any]]:
    return [
        [b.open, b.close, b.high, b.low, b.value, b.volume, b.begin.isoformat(" "), b.end.isoformat(" ")]
        for b in bars
    ]


def _all_pages(client: httpx.Client, path: str, params: dict[str, str | int]) -> tuple[list[list[Any]], int]:
    rows: list[list[Any]] = []
    pages = 0
    while True:
        response = client.get(path, params={**params, "start": len(rows)})
        assert response.status_code == 200
        data = response.json()["candles"]["data"]
        pages += 1
        if not data:
            return rows, pages
        assert len(data) <= 500
        rows.extend(data)


def test_security_has_the_iss_shape(iss: httpx.Client, iss_samples: Path) -> None:
    response = iss.get("/iss/securities/SBER.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["server"] == "nginx" and response.headers["cache-control"] == "max-age=5"
    assert response.headers["x-request-id"]
    body = response.json()
    real = _sample(iss_samples, "securities_SBER_rec2025-12-11_reformatted-iss-meta-off.json")
    assert list(body) == list(real) == ["description", "boards"]
    for block in ("description", "boards"):
        assert body[block]["columns"] == real[block]["columns"]
        assert list(body[block]["metadata"]) == body[block]["columns"]
    gazp = _sample(iss_samples, "securities_GAZP_rec2023-05-18.json")
    assert [c for c in body["boards"]["columns"] if c != "unit"] == gazp["boards"]["columns"]
    description = {row[0]: row for row in body["description"]["data"]}
    for name in (
        "SECID",
        "NAME",
        "SHORTNAME",
        "ISIN",
        "REGNUMBER",
        "FACEVALUE",
        "FACEUNIT",
        "ISSUEDATE",
        "LATNAME",
        "TYPENAME",
        "GROUP",
        "TYPE",
        "GROUPNAME",
    ):
        assert isinstance(description[name][2], str)
    boards = [dict(zip(body["boards"]["columns"], row, strict=True)) for row in body["boards"]["data"]]
    assert {(b["boardid"], b["is_primary"]) for b in boards} == {("TQBR", 1), ("SMAL", 0)}
    assert all(b["decimals"] == 2 and b["engine"] == "stock" and b["market"] == "shares" for b in boards)


def test_security_lookup_falls_back_to_case_insensitive(iss: httpx.Client) -> None:
    body = iss.get("/iss/securities/siz5.json").json()
    (board,) = body["boards"]["data"]
    assert board[0] == "SiZ5" and board[1] == "RFUD" and board[13] == "2025-06-02"
    bond = iss.get("/iss/securities/SU26238RMFS4.json").json()
    assert bond["boards"]["data"][0][9] == 4  # decimals


def test_unknown_secid_is_200_with_empty_blocks(iss: httpx.Client, iss_samples: Path) -> None:
    response = iss.get("/iss/securities/XXXX.json")
    assert response.status_code == 200
    body = response.json()
    real = _sample(iss_samples, "securities_XXXX_unknown-secid_empty_rec2021-01-23.json")
    assert list(body) == list(real)
    assert body["description"]["columns"] == real["description"]["columns"]
    assert [c for c in body["boards"]["columns"] if c != "unit"] == real["boards"]["columns"]
    assert body["description"]["data"] == [] and body["boards"]["data"] == []


def test_candles_shape_matches_the_sample(iss: httpx.Client, iss_samples: Path) -> None:
    body = iss.get(f"{SBER_TQBR}/candles.json", params={"from": "2025-05-30", "till": "2025-05-30"}).json()
    real = _sample(iss_samples, "candles_GAZP_TQBR_i10_no-params-first-page-500rows_rec2023-05.json")
    assert list(body) == ["candles"]
    assert body["candles"]["columns"] == real["candles"]["columns"]
    assert body["candles"]["metadata"] == real["candles"]["metadata"]
    assert "candles.cursor" not in body


def test_candleborders_shape_matches_the_sample(iss: httpx.Client, iss_samples: Path) -> None:
    body = iss.get(f"{SBER_TQBR}/candleborders.json").json()
    real = _sample(iss_samples, "candleborders_GAZP_TQBR_board_rec2023-05-18.json")
    assert list(body) == ["borders", "durations"]
    assert body["borders"]["columns"] == real["borders"]["columns"]
    assert body["durations"] == real["durations"]
    assert [row[2] for row in body["borders"]["data"]] == [row[2] for row in real["borders"]["data"]]
    borders = {row[2]: row for row in body["borders"]["data"]}
    assert borders[1][0] == "2023-01-03 09:50:00" and borders[24][1] == "2025-06-02 15:00:30"
    market_form = iss.get("/iss/engines/stock/markets/shares/securities/SBER/candleborders.json").json()
    real_market = _sample(iss_samples, "candleborders_GAZP_market-shares_rec2023-05-18.json")
    assert market_form["borders"]["columns"] == real_market["borders"]["columns"]


def test_paging_with_start_reconstructs_the_source(iss: httpx.Client, standin: ISSStandIn) -> None:
    params: dict[str, str | int] = {
        "from": "2025-05-29",
        "till": "2025-06-02",
        "interval": 1,
        "iss.meta": "off",
        "iss.only": "candles",
    }
    rows, pages = _all_pages(iss, f"{SBER_TQBR}/candles.json", params)
    truth = standin.market.candles("SBER", "TQBR", 1, dt.datetime(2025, 5, 29), dt.datetime(2025, 6, 3), NOW)
    assert rows == _rows(truth)
    assert pages == len(truth) // 500 + 2 - (len(truth) % 500 == 0)
    assert standin.candle_requests("SBER", "TQBR", 1) == pages


def test_default_interval_is_10(iss: httpx.Client) -> None:
    params: dict[str, str | int] = {"from": "2025-05-30", "till": "2025-05-30"}
    default = iss.get(f"{SBER_TQBR}/candles.json", params=params).json()["candles"]["data"]
    ten = iss.get(f"{SBER_TQBR}/candles.json", params={**params, "interval": 10}).json()["candles"]["data"]
    assert (
        default == ten and default[0][6] == "2025-05-30 06:50:00" and default[1][6] == "2025-05-30 07:00:00"
    )


def test_from_till_are_inclusive_on_begin(iss: httpx.Client) -> None:
    day = iss.get(
        f"{SBER_TQBR}/candles.json", params={"from": "2025-05-30", "till": "2025-05-30", "interval": 60}
    ).json()["candles"]["data"]
    assert day[0][6].startswith("2025-05-30 06:00") and day[-1][6] == "2025-05-30 23:00:00"
    monthly = iss.get(
        f"{SBER_TQBR}/candles.json", params={"from": "2025-01-01", "till": "2025-05-01", "interval": 31}
    ).json()["candles"]["data"]
    assert [row[6][:10] for row in monthly] == [
        "2025-01-01",
        "2025-02-01",
        "2025-03-01",
        "2025-04-01",
        "2025-05-01",
    ]
    window = iss.get(
        f"{SBER_TQBR}/candles.json",
        params={"from": "2025-05-30 10:00:00", "till": "2025-05-30 10:05:00", "interval": 1},
    ).json()["candles"]["data"]
    begins = [row[6] for row in window]
    assert begins and begins[0] >= "2025-05-30 10:00:00" and begins[-1] <= "2025-05-30 10:05:00"
    assert len(begins) >= 5


def test_numbers_are_ints_when_integral(iss: httpx.Client) -> None:
    text = iss.get(
        "/iss/engines/futures/markets/forts/boards/RFUD/securities/SiZ5/candles.json",
        params={"from": "2025-05-30", "till": "2025-05-30", "interval": 1},
    ).text
    row = json.loads(text)["candles"]["data"][0]
    assert all(isinstance(value, int) for value in row[:6])  # decimals 0 and value 0
    assert ".0," not in text


def test_extended_json_columns_and_reverse(iss: httpx.Client) -> None:
    params: dict[str, str | int] = {"from": "2025-05-30", "till": "2025-05-30", "interval": 24}
    body = iss.get(
        f"{SBER_TQBR}/candles.json", params={**params, "iss.json": "extended", "iss.meta": "off"}
    ).json()
    assert isinstance(body, list) and body[0] == {"charsetinfo": {"name": "utf-8"}}
    (row,) = body[1]["candles"]
    assert list(row) == ["open", "close", "high", "low", "value", "volume", "begin", "end"]
    subset = iss.get(
        f"{SBER_TQBR}/candles.json",
        params={**params, "candles.columns": "end,begin,close", "iss.meta": "off"},
    ).json()
    assert subset["candles"]["columns"] == ["close", "begin", "end"] and "metadata" not in subset["candles"]
    week: dict[str, str | int] = {"from": "2025-05-26", "till": "2025-05-30", "interval": 1}
    forward = _all_pages(iss, f"{SBER_TQBR}/candles.json", week)[0]
    backward = _all_pages(iss, f"{SBER_TQBR}/candles.json", {**week, "iss.reverse": "true"})[0]
    assert backward == forward[::-1]


def test_market_form_is_the_primary_board(iss: httpx.Client) -> None:
    params: dict[str, str | int] = {"from": "2025-05-30", "till": "2025-05-30", "interval": 60}
    board = iss.get(f"{SBER_TQBR}/candles.json", params=params).content
    market = iss.get("/iss/engines/stock/markets/shares/securities/SBER/candles.json", params=params).content
    smal = iss.get(
        "/iss/engines/stock/markets/shares/boards/SMAL/securities/SBER/candles.json", params=params
    )
    assert board == market != smal.content and smal.json()["candles"]["data"]


@pytest.mark.parametrize(
    "path",
    [
        "/iss/engines/stock/markets/shares/boards/TQBR/securities/XXXX/candles.json",
        "/iss/engines/stock/markets/shares/boards/TQOB/securities/SBER/candles.json",
        "/iss/engines/stock/markets/bonds/boards/TQBR/securities/SBER/candles.json",
        # the secid of candle endpoints is case-sensitive
        "/iss/engines/futures/markets/forts/boards/RFUD/securities/SIZ5/candles.json",
        "/iss/engines/currency/markets/selt/securities/SBER/candles.json",
    ],
)
def test_combinations_that_do_not_exist_are_empty(iss: httpx.Client, path: str) -> None:
    response = iss.get(path, params={"from": "2025-05-30", "till": "2025-05-30"})
    assert response.status_code == 200 and response.json()["candles"]["data"] == []


def test_bad_parameters(iss: httpx.Client) -> None:
    invalid_interval = iss.get(f"{SBER_TQBR}/candles.json", params={"interval": 5, "from": "2025-05-30"})
    assert invalid_interval.status_code == 200 and invalid_interval.json()["candles"]["data"] == []
    for params in ({"from": "30.05.2025"}, {"till": "2025-02-30"}, {"start": "x"}, {"start": -1}):
        response = iss.get(f"{SBER_TQBR}/candles.json", params=params)
        assert response.status_code == 400 and "error" in response.json()
    beyond = iss.get(
        f"{SBER_TQBR}/candles.json", params={"from": "2025-05-30", "till": "2025-05-30", "start": 10**6}
    )
    assert beyond.json()["candles"]["data"] == []


def test_other_paths_are_nginx_404(iss: httpx.Client, standin: ISSStandIn) -> None:
    for path in ("/iss/securities1.json", f"{SBER_TQBR}/candles.xml", "/nothing"):
        response = iss.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"] == "text/html" and "nginx" in response.text
    assert standin.stats.by_endpoint["other"] == 3


def test_the_clock_moves_the_partial_bar(iss: httpx.Client, standin: ISSStandIn) -> None:
    params: dict[str, str | int] = {"from": "2025-06-02", "till": "2025-06-02", "interval": 24}
    standin.set_now(NOW.replace(second=5))
    before = iss.get(f"{SBER_TQBR}/candles.json", params=params).json()["candles"]["data"][-1]
    standin.set_now(NOW.replace(minute=40))
    after = iss.get(f"{SBER_TQBR}/candles.json", params=params).json()["candles"]["data"][-1]
    assert before[6] == after[6] == "2025-06-02 00:00:00"
    assert after[5] > before[5] and before[7] == "2025-06-02 15:00:05" and after[7] == "2025-06-02 15:40:30"


def test_revision_and_broken_candle_show_over_http(iss: httpx.Client, standin: ISSStandIn) -> None:
    params: dict[str, str | int] = {
        "from": "2025-05-30 12:00:00",
        "till": "2025-05-30 12:30:00",
        "interval": 1,
    }
    original = iss.get(f"{SBER_TQBR}/candles.json", params=params).json()["candles"]["data"]
    standin.set_revision(2)
    revised = iss.get(f"{SBER_TQBR}/candles.json", params=params).json()["candles"]["data"]
    assert all(a[0] != b[0] and a[5] == b[5] for a, b in zip(original, revised, strict=True))
    standin.set_revision(0)
    target = dt.datetime.fromisoformat(original[3][6])
    standin.break_candle("SBER", "TQBR", target)
    broken = iss.get(f"{SBER_TQBR}/candles.json", params=params).json()["candles"]["data"]
    assert broken[3][2] < broken[3][3]  # high < low
    assert broken[:3] == original[:3] and broken[4:] == original[4:]


_PAGE_PARAMS: list[dict[str, str | int]] = [
    {"from": "2025-05-26", "till": "2025-06-02", "interval": 1},  # finished days, then today's part
    {"from": "2025-05-26", "till": "2025-06-02", "interval": 1, "start": 1500},
    {"from": "2025-05-29 12:00:01", "till": "2025-05-30 10:59:59", "interval": 1, "start": 7},
    {"from": "2025-05-20", "till": "2025-06-02", "interval": 10, "start": 500},
    {"from": "2025-03-01", "till": "2025-06-02", "interval": 60, "iss.reverse": "true"},
    {"from": "2025-05-26", "till": "2025-05-30", "interval": 1, "iss.reverse": "true", "start": 600},
    {"from": "2025-05-26", "till": "2025-05-30", "interval": 1, "iss.meta": "off", "iss.only": "candles"},
    {"from": "2025-05-26", "till": "2025-05-30", "interval": 1, "candles.columns": "begin,close"},
    {"from": "2025-05-26", "till": "2025-05-30", "interval": 1, "iss.json": "extended"},
    {"from": "2025-01-01", "till": "2025-06-02", "interval": 24},
]


@pytest.mark.parametrize(
    "params", _PAGE_PARAMS, ids=lambda params: "&".join(f"{k}={v}" for k, v in params.items())
)
def test_candle_pages_are_byte_for_byte_the_bars_rendered(
    iss: httpx.Client, standin: ISSStandIn, params: dict[str, str | int]
) -> None:
    """Finished days are served from encoded rows cached by the market; a page must be exactly
    what rendering its bars one by one gives, on the first request and the cached ones, and
    after the data changed (revision, broken candle, delay)."""
    from candlestick_pipeline.standin import server

    def rendered_bars() -> bytes:
        start, end = server._range({k: str(v) for k, v in params.items()})
        bars = standin.market.page(
            "SBER",
            "TQBR",
            int(params["interval"]),
            start,
            end,
            standin.now,
            offset=int(params.get("start", 0)),
            limit=server.PAGE_SIZE,
            reverse=params.get("iss.reverse") == "true",
            delay_minutes=standin.faults.delay_minutes,
        )
        rows = [server._candle_row(bar) for bar in bars]
        assert rows, "a page of nothing would not test the encoding"
        block = server._Block("candles", server._CANDLE_METADATA, rows)
        return server._render([block], {k: str(v) for k, v in params.items()})

    def served() -> bytes:
        response = iss.get(f"{SBER_TQBR}/candles.json", params=params)
        assert response.status_code == 200
        return response.content

    first = served()
    assert first == rendered_bars() and served() == first
    standin.set_revision(3)
    revised = served()
    assert revised != first and revised == rendered_bars()
    standin.set_revision(0)
    assert served() == first
    target = dt.datetime(2025, 5, 29, 12, 30) if params["interval"] == 1 else dt.datetime(2025, 5, 29, 11, 0)
    standin.break_candle("SBER", "TQBR", target)
    assert served() == rendered_bars()
    standin.market.clear_breaks()
    standin.set_faults(delay_minutes=15)
    assert served() == rendered_bars()
