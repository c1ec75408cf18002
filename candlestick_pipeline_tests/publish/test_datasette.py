"""End to end: Datasette as a real process over a publication built from a warehouse of known candles."""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import apimoex
import httpx
import pytest
import requests
import sqlalchemy as sa

from candlestick_pipeline.lib import publication, warehouse
from candlestick_pipeline_tests.publish.helpers import (
    DAY,
    GAZP,
    SBER,
    USD,
    DatasetteProcess,
    chromium_executable,
    day_window,
    fill_known,
    png_pixels,
    run_datasette,
    warehouse_rows,
    year_window,
)

pytestmark = pytest.mark.e2e

ISS_SBER = "/iss/engines/stock/markets/shares/boards/TQBR/securities/SBER/candles.json"


class ISSRedirect(requests.Session):
    """A requests.Session that sends apimoex's hard-coded https://iss.moex.com URLs to another base.

    apimoex 1.4.0 builds every URL from the literal ``https://iss.moex.com`` (apimoex/requests.py)
    and only lets the caller choose the Session, so the Session rewrites the scheme and host.
    """

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.urls: list[str] = []

    def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        if url.startswith("https://iss.moex.com/"):
            url = self.base_url + url[len("https://iss.moex.com") :]
        response = super().request(method, url, *args, **kwargs)
        self.urls.append(response.url)
        return response


class Published:
    def __init__(self, engine: sa.Engine, path: Path, server: DatasetteProcess) -> None:
        self.engine = engine
        self.path = path
        self.server = server
        self.http = httpx.Client(base_url=server.base_url, timeout=10)

    def get(self, url: str) -> httpx.Response:
        return self.http.get(url)

    def json(self, url: str) -> object:
        response = self.get(url)
        assert response.status_code == 200, (url, response.status_code, response.text[:500])
        return response.json()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    folder = tmp_path_factory.mktemp("datasette")
    engine = warehouse.create_warehouse_engine(f"sqlite:///{folder / 'warehouse.db'}")
    warehouse.migrate(engine)
    fill_known(engine)
    # Not called publication.db on purpose: the plugin serves any file stem as "publication".
    path = folder / "candles-copy.db"
    publication.rebuild(engine, path)
    with run_datasette(path) as server:
        state = Published(engine, path, server)
        yield state
        state.http.close()
        log = server.log()
        assert '" 500 ' not in log and "Traceback" not in log, log
    engine.dispose()


def _table_checksum(path: Path) -> str:
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        digest = hashlib.sha256()
        for table in ("candles", "series", "securities"):
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3"):
                digest.update(repr(row).encode())
    return digest.hexdigest()


# --- JSON API --------------------------------------------------------------------------------------


def test_table_json_returns_exactly_the_warehouse_rows(published: Published) -> None:
    rows = published.json(
        "/publication/candles.json?secid=SBER&board=TQBR&timeframe=1d&_shape=array&_size=max"
    )
    assert rows == warehouse_rows(published.engine, SBER, "1d", *year_window(2023))
    rows = published.json(
        "/publication/candles.json?secid=USD000UTSTOM&board=CETS&timeframe=1h&_shape=array"
        "&begin__gte=2024-01-03+10:00:00&begin__lt=2024-01-03+12:00:00"
    )
    assert rows == warehouse_rows(
        published.engine, USD, "1h", dt.datetime(2024, 1, 3, 10), dt.datetime(2024, 1, 3, 12)
    )
    assert len(rows) == 2


def test_one_day_of_minutes_pages_through_next_without_gaps_or_duplicates(published: Published) -> None:
    expected = warehouse_rows(published.engine, SBER, "1m", *day_window(DAY))
    assert len(expected) == 1020
    url: str | None = (
        "/publication/candles.json?secid=SBER&board=TQBR&timeframe=1m"
        "&begin__gte=2024-01-03&begin__lt=2024-01-04&_size=100&_shape=objects"
    )
    rows: list[dict] = []
    pages = 0
    while url:
        body = published.json(url)
        assert isinstance(body, dict)
        rows += body["rows"]
        url = body["next_url"]
        pages += 1
    assert pages == 11
    assert rows == expected
    # The same with _shape=array, following the Link header.
    link: str | None = (
        "/publication/candles.json?secid=SBER&board=TQBR&timeframe=1m"
        "&begin__gte=2024-01-03&begin__lt=2024-01-04&_size=300&_shape=array&_sort=begin"
    )
    rows = []
    while link:
        response = published.get(link)
        assert response.status_code == 200, response.text
        rows += response.json()
        link = response.links.get("next", {}).get("url")
    assert rows == expected


def test_canned_candle_series_pages_with_after(published: Published) -> None:
    expected = warehouse_rows(published.engine, SBER, "1m", *day_window(DAY))
    base = (
        "/publication/candle_series.json?secid=SBER&board=TQBR&timeframe=1m&from=2024-01-03&till=2024-01-03"
    )
    first = published.json(base + "&_shape=array")
    assert isinstance(first, list) and len(first) == 1000
    second = published.json(base + "&_shape=array&after=" + quote(first[-1]["begin"]))
    assert isinstance(second, list) and len(second) == 20
    assert first + second == expected
    third = published.json(base + "&_shape=array&after=" + quote(second[-1]["begin"]))
    assert third == []
    # till is inclusive of its whole day, from/till may be datetimes.
    rows = published.json(
        "/publication/candle_series.json?secid=SBER&board=TQBR&timeframe=1m&_shape=array"
        "&from=2024-01-03+23:00:00&till=2024-01-04+06:51:00"
    )
    assert [r["begin"] for r in rows] == [
        e["begin"] for e in expected if e["begin"] >= "2024-01-03 23:00:00"
    ] + [
        "2024-01-04 06:50:00",
        "2024-01-04 06:51:00",
    ]


def test_canned_latest_candles_and_security_list(published: Published) -> None:
    latest = published.json("/publication/latest_candles.json?timeframe=1d&_shape=array")
    assert isinstance(latest, list)
    by_secid = {row["secid"]: row for row in latest}
    assert set(by_secid) == {"SBER", "GAZP"}
    sber_last = warehouse_rows(published.engine, SBER, "1d", *year_window(2023))[-1]
    gazp_last = warehouse_rows(published.engine, GAZP, "1d", *year_window(2023))[-1]
    assert {k: by_secid["SBER"][k] for k in sber_last} == sber_last
    assert {k: by_secid["GAZP"][k] for k in gazp_last} == gazp_last
    assert by_secid["SBER"]["shortname"] == "Сбербанк"
    securities = published.json("/publication/security_list.json?_shape=array")
    assert isinstance(securities, list)
    assert [(s["secid"], s["board"], s["timeframes"]) for s in securities] == [
        ("GAZP", "TQBR", "1d"),
        ("SBER", "TQBR", "1d,1m"),
        ("USD000UTSTOM", "CETS", "1h"),
    ]


def test_csv_is_one_bounded_page(published: Published) -> None:
    response = published.get("/publication/candles.csv?secid=SBER&board=TQBR&timeframe=1m&_size=max")
    assert response.status_code == 200
    lines = response.text.strip().splitlines()
    assert lines[0].startswith("secid,board,timeframe,begin,end,open")
    assert len(lines) == 1 + 1000
    assert published.get("/publication/candles.csv?_stream=on").status_code == 400


def test_pages_render_with_titles(published: Published) -> None:
    for url, text in (
        ("/", "MOEX candles"),
        ("/publication", "Candles publication"),
        ("/publication/candles?secid=SBER&board=TQBR&timeframe=1d", "Traded quantity"),
        ("/publication/candle_series?secid=SBER&board=TQBR&timeframe=1d", "Candles of one security"),
        ("/publication/securities", "Reference data"),
    ):
        response = published.get(url)
        assert response.status_code == 200, (url, response.text[:300])
        assert text in response.text, url


# --- ISS-compatible route -----------------------------------------------------------------------


def _iss_view(rows: list[dict]) -> list[dict]:
    keys = ("begin", "open", "close", "high", "low", "value", "volume")
    return [{key: row[key] for key in keys} for row in rows]


def test_apimoex_reads_the_published_candles_across_pages(published: Published) -> None:
    with ISSRedirect(published.server.base_url) as session:
        rows = apimoex.get_board_candles(
            session, "SBER", interval=1, start="2024-01-03", end="2024-01-03", board="TQBR"
        )
        assert rows == _iss_view(warehouse_rows(published.engine, SBER, "1m", *day_window(DAY)))
        assert len(rows) == 1020
        pages = [url for url in session.urls if "/candles.json" in url]
        assert len(pages) == 4  # 500 + 500 + 20 + the empty page that ends apimoex's loop
        assert all("iss.json=extended" in url and "iss.meta=off" in url for url in pages)

        rows = apimoex.get_board_candles(session, "SBER", interval=1, board="TQBR")  # whole history
        assert len(rows) == 2040
        rows = apimoex.get_board_candles(session, "GAZP", board="TQBR")  # interval 24 by default
        assert rows == _iss_view(warehouse_rows(published.engine, GAZP, "1d", *year_window(2023)))
        rows = apimoex.get_board_candles(
            session, "USD000UTSTOM", interval=60, board="CETS", market="selt", engine="currency"
        )
        assert len(rows) == 17


def test_iss_compact_format_and_offset_paging(published: Published) -> None:
    body = published.json(ISS_SBER + "?interval=1&from=2024-01-03&till=2024-01-03&start=1000")
    assert isinstance(body, dict)
    block = body["candles"]
    assert block["columns"] == ["open", "close", "high", "low", "value", "volume", "begin", "end"]
    assert set(block["metadata"]) == set(block["columns"])
    expected = warehouse_rows(published.engine, SBER, "1m", *day_window(DAY))[1000:]
    assert block["data"] == [[r[c] for c in block["columns"]] for r in expected]
    empty = published.json(ISS_SBER + "?interval=1&from=2024-01-03&till=2024-01-03&start=1020")
    assert empty == {"candles": {"metadata": block["metadata"], "columns": block["columns"], "data": []}}
    default = published.json(ISS_SBER)  # interval 10 by default, like ISS: none published
    assert isinstance(default, dict) and default["candles"]["data"] == []
    newest = published.json(ISS_SBER + "?interval=24&iss.reverse=true&iss.meta=off")
    assert isinstance(newest, dict) and "metadata" not in newest["candles"]
    assert newest["candles"]["data"][0][6] == "2023-12-31 00:00:00"


ISS_SBER_MARKET = "/iss/engines/stock/markets/shares/securities/SBER/candles.json"


def test_iss_market_form_serves_the_primary_board(published: Published) -> None:
    query = "?interval=1&from=2024-01-03&till=2024-01-03&start=500"
    assert published.json(ISS_SBER_MARKET + query) == published.json(ISS_SBER + query)
    with ISSRedirect(published.server.base_url) as session:
        rows = apimoex.get_market_candles(session, "SBER", interval=1, start="2024-01-03", end="2024-01-03")
        assert rows == _iss_view(warehouse_rows(published.engine, SBER, "1m", *day_window(DAY)))
        assert all("/markets/shares/securities/SBER/candles.json" in url for url in session.urls)
        rows = apimoex.get_market_candles(
            session, "USD000UTSTOM", interval=60, market="selt", engine="currency"
        )
        assert len(rows) == 17
    unknown = published.get(ISS_SBER_MARKET.replace("SBER", "NOPE"))
    assert unknown.status_code == 404 and "unknown security" in unknown.json()["error"]
    elsewhere = published.get("/iss/engines/stock/markets/shares/securities/USD000UTSTOM/candles.json")
    assert elsewhere.status_code == 404
    assert "/iss/engines/currency/markets/selt/" in elsewhere.json()["error"]


def test_iss_engine_and_market_must_match(published: Published) -> None:
    response = published.get(
        "/iss/engines/stock/markets/shares/boards/CETS/securities/USD000UTSTOM/candles.json"
    )
    assert response.status_code == 404
    assert "/iss/engines/currency/markets/selt/" in response.json()["error"]


# --- refusals ---------------------------------------------------------------------------------------

HOSTILE = [
    # unknown security
    (ISS_SBER.replace("SBER", "NOPE"), 404),
    ("/publication/candles.json?secid=NOPE&board=TQBR", 404),
    ("/publication/candle_series.json?secid=NOPE&board=TQBR&timeframe=1d", 404),
    ("/-/chart?security=NOPE.TQBR", 404),
    # invalid timeframe / interval / date
    ("/publication/candle_series.json?secid=SBER&board=TQBR&timeframe=2h", 400),
    ("/publication/latest_candles.json?timeframe=", 400),
    ("/publication/candles.json?timeframe=1y", 400),
    (ISS_SBER + "?interval=2", 400),
    (ISS_SBER + "?interval=24&from=2024-02-30", 400),
    (ISS_SBER + "?till=31.12.2024", 400),
    (ISS_SBER + "?start=-5", 400),
    ("/publication/candle_series.json?secid=SBER&board=TQBR&timeframe=1d&from=yesterday", 400),
    ("/publication/candles.json?begin__gte=2024-01-03T00:00:00", 400),
    ("/-/chart?security=SBER.TQBR&timeframe=1d&from=2024-13-01", 400),
    ("/-/chart?security=SBER.TQBR&timeframe=7d", 400),
    # page size, sorting, filters, paging tokens
    ("/publication/candles.json?_size=100000", 400),
    ("/publication/candles.json?_size=-1", 400),
    ("/publication/candles.json?_sort=nosuchcol", 400),
    ("/publication/candles.json?_sort_desc=close", 400),
    ("/publication/candles.json?_sort_desc=begin", 400),
    ("/publication/securities.json?_sort=nosuchcol", 400),
    ("/publication/candles.json?nosuchcol=1", 400),
    ("/publication/candles.json?secid__badop=1", 400),
    ("/publication/candles.json?_next=garbage", 400),
    ("/publication/candles.json?_facet=secid", 400),
    # injection attempts
    ("/publication/candles.json?secid=SBER'%20OR%20'1'='1", 400),
    ("/publication/candles.json?secid__in=%5B%22SBER%22,%7B%7D%5D", 400),
    ("/publication/candle_series.json?secid=SBER;DROP%20TABLE%20candles&board=TQBR&timeframe=1d", 400),
    ("/publication/candle_series.json?secid=SBER&board=TQBR&timeframe=1d&after=x'%20or%201=1--", 400),
    ("/publication/candles.json?_where=1=1)%20union%20select%20*%20from%20sqlite_master--", 403),
    ("/iss/engines/stock/markets/shares/boards/TQBR/securities/SBER'--/candles.json", 400),
    (ISS_SBER + "?candles.columns=begin,(select%201)", 400),
    # arbitrary SQL and downloads
    ("/publication.json?sql=select+*+from+candles", 403),
    ("/publication?sql=delete+from+candles", 400),
    ("/publication?sql=select+1", 403),
    ("/publication.db", 403),
    ("/candles-copy.db", 404),
    ("/publication/candles.csv?_stream=on&_size=max", 400),
]


@pytest.mark.parametrize(("url", "status"), HOSTILE)
def test_hostile_requests_get_a_clear_4xx(published: Published, url: str, status: int) -> None:
    before = _table_checksum(published.path)
    response = published.get(url)
    assert response.status_code == status, (url, response.status_code, response.text[:300])
    if url.split("?")[0].endswith(".json"):
        body = response.json()
        assert body.get("error") or body.get("ok") is False, body
    assert _table_checksum(published.path) == before, "a request changed the publication"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_no_write_methods(published: Published, method: str) -> None:
    for url in (
        "/publication/candles.json",
        "/publication/candle_series.json",
        ISS_SBER,
        "/publication/-/create",
    ):
        response = published.http.request(method, url, json={"rows": [{"secid": "X"}]})
        assert 400 <= response.status_code < 500, (method, url, response.status_code)


def test_sql_editor_is_off_by_default(published: Published) -> None:
    versions = published.json("/-/settings.json")
    assert isinstance(versions, dict)
    assert versions["default_allow_sql"] is False and versions["allow_download"] is False


# --- chart ---------------------------------------------------------------------------------------


def test_chart_page_is_server_side_svg(published: Published) -> None:
    response = published.get("/-/chart?security=SBER.TQBR&timeframe=1d&from=2023-06-01&till=2023-06-30")
    assert response.status_code == 200
    page = response.text
    assert page.count('<g class="candle') == 30
    assert "<script src" not in page and "cdn" not in page.lower()
    svg = published.get("/-/chart.svg?security=SBER.TQBR&timeframe=1m")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.count('<g class="candle') == 150


def test_chart_renders_in_headless_chromium(published: Published, tmp_path: Path) -> None:
    browser = chromium_executable()
    url = (
        f"{published.server.base_url}/-/chart?security=SBER.TQBR&timeframe=1d&from=2023-05-01&till=2023-09-30"
    )
    common = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,900",
    ]
    screenshot = tmp_path / "chart.png"
    done = subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=60)
    assert screenshot.is_file(), done.stderr.decode(errors="replace")[-2000:]
    dom = subprocess.run(
        [*common, "--dump-dom", url], capture_output=True, timeout=60, check=True
    ).stdout.decode()
    assert dom.count('<g class="candle') == 153  # 1 May .. 30 Sep 2023, daily
    width, height, channels, pixels = png_pixels(screenshot)
    assert (width, height) == (1200, 900)
    colours = {bytes(pixels[i : i + 3]) for i in range(0, len(pixels), channels)}
    assert bytes.fromhex("1a9b6c") in colours, "no rising (green) candle was painted"
    assert bytes.fromhex("d64541") in colours, "no falling (red) candle was painted"
