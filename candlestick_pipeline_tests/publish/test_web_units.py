"""Pure parts of the Datasette side: request guard, ISS route, SVG chart, serve command, metadata."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from candlestick_pipeline.defs.publish import chart, iss_route, serve
from candlestick_pipeline.defs.publish.guard import (
    CANNED_QUERIES,
    TABLE_COLUMNS,
    GuardError,
    check_request,
)
from candlestick_pipeline.lib import publication

METADATA = yaml.safe_load(serve.METADATA.read_text())


# --- guard ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "status", "message"),
    [
        ("/publication/candles.json", "_sort=close", 400, "cannot sort candles by 'close'"),
        ("/publication/candles.json", "_sort_desc=nosuchcol", 400, "cannot sort"),
        ("/publication/candles.json", "nosuchcol=1", 400, "unknown column 'nosuchcol'"),
        ("/publication/candles.json", "secid__badop=1", 400, "unknown filter operator 'badop'"),
        ("/publication/candles.json", "secid__like=%25", 400, "unknown filter operator 'like'"),
        ("/publication/candles.json", "secid=SBER%27%20OR%201%3D1--", 400, "invalid secid"),
        ("/publication/candles.json", "board=tqbr", 400, "upper-case"),
        ("/publication/candles.json", "timeframe=5m", 400, "invalid timeframe '5m'"),
        ("/publication/candles.json", "begin__gte=2024-01-03T10:00", 400, "not 'T'"),
        ("/publication/candles.json", "begin__gte=yesterday", 400, "invalid begin__gte"),
        ("/publication/candles.json", "volume__gt=lots", 400, "expected a number"),
        ("/publication/candles.json", "secid__in=%5Bbad", 400, "not a JSON list"),
        ("/publication/candles.json", "timeframe__in=1m,2m", 400, "invalid timeframe__in '2m'"),
        ("/publication/candles.json", "_next=garbage", 400, "invalid _next"),
        ("/publication/candles.json", "_sort=begin&_sort_desc=begin", 400, "_sort or _sort_desc"),
        ("/publication/candles.json", "_sort_desc=begin", 400, "needs a timeframe filter"),
        ("/publication/candle_series.json", "secid=SBER&board=TQBR", 400, "needs timeframe"),
        (
            "/publication/candle_series.json",
            "secid=SBER&board=TQBR&timeframe=1d&from=2024-13",
            400,
            "invalid from",
        ),
        (
            "/publication/candle_series.json",
            "secid=SBER&board=TQBR&timeframe=1d&drop=1",
            400,
            "unknown parameter",
        ),
        ("/publication/latest_candles.json", "timeframe=1y", 400, "invalid timeframe"),
        ("/publication/security_list.json", "x=1", 400, "takes no parameters"),
    ],
)
def test_guard_refuses_bad_requests_with_a_message(path: str, query: str, status: int, message: str) -> None:
    with pytest.raises(GuardError) as caught:
        check_request("GET", path, query)
    assert caught.value.status == status
    assert message in caught.value.message


def test_guard_lets_good_requests_through_and_names_the_security() -> None:
    checked = check_request(
        "GET",
        "/publication/candles.json",
        "secid=SBER&board=TQBR&timeframe=1m&begin__gte=2024-01-03&begin__lt=2024-01-04+10%3A00%3A00"
        "&_size=1000&_shape=array&_sort=begin&_next=2024-01-03+10~3A00~3A00,SBER,TQBR,1m,2024-01-03+10~3A00~3A00",
    )
    assert checked is not None and (checked.secid, checked.board) == ("SBER", "TQBR")
    checked = check_request(
        "GET", "/publication/candle_series.json", "secid=SBER&board=TQBR&timeframe=1d&after="
    )
    assert checked is not None and checked.secid == "SBER"
    assert check_request("GET", "/publication/securities", "is_traded=1&_sort=shortname") is not None
    # Paths the guard does not own are left to Datasette.
    assert check_request("GET", "/-/versions.json", "") is None
    assert check_request("GET", "/publication/candles/SBER,TQBR,1m,x", "") is None
    assert check_request("GET", "/publication.json", "sql=select+1") is None


def test_guard_refuses_writes() -> None:
    with pytest.raises(GuardError) as caught:
        check_request("POST", "/publication/candle_series", "")
    assert caught.value.status == 405


# --- ISS route ----------------------------------------------------------------------------------

PATH = {"engine": "stock", "market": "shares", "board": "TQBR", "secid": "SBER"}


MARKET_PATH = {"engine": "stock", "market": "shares", "secid": "SBER"}


@pytest.mark.parametrize(
    ("boards", "series_boards", "chosen"),
    [
        ([("TQBR", 1), ("SMAL", 0)], [], "TQBR"),  # the primary board
        ([("SMAL", 0)], [], "SMAL"),  # the only board on this market
        ([], [("CETS",)], "CETS"),  # no reference row: the only published board (checked later)
    ],
)
def test_market_form_takes_the_primary_or_only_board(
    boards: list[tuple[str, int]], series_boards: list[tuple[str]], chosen: str
) -> None:
    request = iss_route.parse_request(MARKET_PATH, [])
    assert request.board == ""
    assert iss_route.choose_board(request, boards, series_boards) == chosen


@pytest.mark.parametrize(
    ("boards", "series_boards", "message"),
    [
        ([("SMAL", 0), ("TQBR", 0)], [], "published on boards SMAL, TQBR of engine 'stock', market 'shares'"),
        ([], [("SMAL",), ("TQBR",)], "boards SMAL, TQBR"),
        ([], [], "unknown security: the publication holds no candles of SBER on engine 'stock'"),
    ],
)
def test_market_form_refuses_to_guess_a_board(
    boards: list[tuple[str, int]], series_boards: list[tuple[str]], message: str
) -> None:
    request = iss_route.parse_request(MARKET_PATH, [])
    with pytest.raises(GuardError) as caught:
        iss_route.choose_board(request, boards, series_boards)
    assert caught.value.status == 404 and message in str(caught.value)


def test_iss_request_defaults_are_those_of_iss() -> None:
    request = iss_route.parse_request(PATH, [])
    assert request.interval == 10 and request.timeframe == "10m"
    assert request.begin_from == "" and request.begin_till == "2037-12-31 23:59:59"
    assert request.start == 0 and request.meta and not request.extended and request.blocks is None
    assert request.columns == iss_route.ISS_COLUMNS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([("interval", "5")], "invalid interval '5'"),
        ([("interval", "1d")], "invalid interval"),
        ([("from", "2024-02-30")], "no such date"),
        ([("till", "tomorrow")], "invalid till"),
        ([("start", "-1")], "invalid start"),
        ([("start", "1e9")], "invalid start"),
        ([("iss.json", "xml")], "invalid iss.json"),
        ([("candles.columns", "begin,drop table")], "unknown candles.columns"),
        ([("iss.reverse", "maybe")], "invalid iss.reverse"),
    ],
)
def test_iss_request_refuses_bad_parameters(args: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(GuardError) as caught:
        iss_route.parse_request(PATH, args)
    assert caught.value.status == 400 and message in caught.value.message


def test_iss_request_refuses_bad_path_parts() -> None:
    for part, value in (("secid", "SB;ER"), ("board", "tqbr"), ("engine", "STOCK!")):
        with pytest.raises(GuardError):
            iss_route.parse_request({**PATH, part: value}, [])


def test_iss_compact_body_has_the_real_iss_block_format(iss_samples: Path) -> None:
    sample = json.loads(
        (iss_samples / "candles_SBER_TQBR_i31_2020-01-01_2021-01-01_rec2022-07-23.json").read_text()
    )
    request = iss_route.parse_request(PATH, [("interval", "31")])
    row = (
        255.99,
        252.2,
        270.8,
        251.4,
        194032391969.6,
        747137520,
        "2020-01-01 00:00:00",
        "2020-01-31 00:00:00",
    )
    body = iss_route.build_body(request, [row])
    assert body["candles"]["metadata"] == sample["candles"]["metadata"]
    assert body["candles"]["columns"] == sample["candles"]["columns"]
    assert body["candles"]["data"][0] == sample["candles"]["data"][0]


def test_iss_extended_body_as_apimoex_asks_for_it() -> None:
    args = [
        ("interval", "24"),
        ("iss.json", "extended"),
        ("iss.meta", "off"),
        ("iss.only", "candles,history.cursor"),
        ("candles.columns", "begin,open,close,high,low,value,volume"),
    ]
    request = iss_route.parse_request(PATH, args)
    body = iss_route.build_body(
        request, [(1.0, 2.0, 3.0, 0.5, 10.0, 7, "2024-01-03 00:00:00", "2024-01-03 23:59:59")]
    )
    assert body == [
        {"charsetinfo": {"name": "utf-8"}},
        {
            "candles": [
                {
                    "open": 1.0,
                    "close": 2.0,
                    "high": 3.0,
                    "low": 0.5,
                    "value": 10.0,
                    "volume": 7,
                    "begin": "2024-01-03 00:00:00",
                }
            ]
        },
    ]
    request = iss_route.parse_request(PATH, [("iss.only", "history.cursor")])
    assert iss_route.build_body(request, []) == {}


def test_iss_body_rows_pick_the_asked_columns_and_whole_volumes() -> None:
    rows = [
        (1.0, 2.0, 3.0, 0.5, 10.0, 7.0, "2024-01-03 10:00:00", "2024-01-03 10:00:59"),
        (1.5, 2.5, 3.5, 1.0, 11.0, 8.5, "2024-01-03 10:01:00", "2024-01-03 10:01:59"),
    ]
    every = iss_route.build_body(iss_route.parse_request(PATH, []), rows)["candles"]["data"]
    assert every == [
        [1.0, 2.0, 3.0, 0.5, 10.0, 7, "2024-01-03 10:00:00", "2024-01-03 10:00:59"],
        [1.5, 2.5, 3.5, 1.0, 11.0, 8.5, "2024-01-03 10:01:00", "2024-01-03 10:01:59"],
    ]
    assert type(every[0][5]) is int and type(every[1][5]) is float
    some = iss_route.parse_request(PATH, [("candles.columns", "volume,begin")])
    assert iss_route.build_body(some, rows)["candles"]["data"] == [
        [7, "2024-01-03 10:00:00"],
        [8.5, "2024-01-03 10:01:00"],
    ]
    none = iss_route.parse_request(PATH, [("candles.columns", ",")])
    assert iss_route.build_body(none, rows)["candles"]["data"] == [[], []]
    assert iss_route.build_body(none, [])["candles"]["data"] == []
    assert iss_route.build_body(some, [])["candles"]["data"] == []


ISS_PAGE_ROWS: dict[str, list[tuple[Any, ...]]] = {
    "candles": [
        (271.5 + i / 100, 272.0, 273.25, 270.0, 1.5e9 + i, 12_000 + i, f"2024-01-03 10:{i:02d}:00", "x")
        for i in range(60)
    ],
    "odd values": [
        (1.0, -0.0, math.inf, 0.5, 10.0, 7.5, "2024-01-03 10:00:00", 'кириллица " \\ \t'),
        (1e-05, 0.0, -math.inf, 2.0, 1e300, 7.0, "2024-01-03 10:01:00", "\x00\x7f"),
        (math.nan, None, 3.0, 0.5, 11.0, 2**70, "2024-01-03 10:02:00", "plain"),
    ],
    "tiny and whole": [
        (1.5e-7, 2.0, 3.0, 4.0, 5.0, 8.0, "a", "b"),
        (0.0, 0.0001, 3.0, 4.0, 5.0, 9.0, "c", "d"),
    ],
}
ISS_PAGE_ARGS: list[list[tuple[str, str]]] = [
    [],
    [("iss.meta", "off")],
    [("candles.columns", "volume,begin")],
    [("candles.columns", "end,open")],
    [("candles.columns", ",")],
    [("iss.only", "history.cursor")],
    [("iss.json", "extended"), ("iss.meta", "off")],
]


@pytest.mark.parametrize("rows", list(ISS_PAGE_ROWS), ids=list(ISS_PAGE_ROWS))
@pytest.mark.parametrize("args", ISS_PAGE_ARGS, ids=[repr(args) for args in ISS_PAGE_ARGS])
def test_iss_page_is_encoded_as_the_json_encoder_encodes_its_body(
    rows: str, args: list[tuple[str, str]]
) -> None:
    request = iss_route.parse_request(PATH, [("interval", "1"), *args])
    for page in (ISS_PAGE_ROWS[rows], ISS_PAGE_ROWS[rows][:1], []):
        assert iss_route.encode_page(request, page) == iss_route.encode(iss_route.build_body(request, page))


def test_iss_security_checks() -> None:
    request = iss_route.parse_request(PATH, [])
    with pytest.raises(GuardError) as caught:
        iss_route.check_security(request, None)
    assert caught.value.status == 404
    with pytest.raises(GuardError) as caught:
        iss_route.check_security(request, ("currency", "selt"))
    assert caught.value.status == 404 and "/iss/engines/currency/markets/selt/" in caught.value.message
    iss_route.check_security(request, ("stock", "shares"))
    iss_route.check_security(request, (None, None))  # candles without a reference row


# --- chart -------------------------------------------------------------------------------------


def test_svg_chart_draws_every_candle_with_the_right_colour() -> None:
    candles = [
        chart.Candle("2024-01-03 10:00:00", 100.0, 105.0, 99.0, 104.0, 10),
        chart.Candle("2024-01-03 10:01:00", 104.0, 104.5, 101.0, 101.5, 20),
        chart.Candle("2024-01-03 10:02:00", 101.5, 101.5, 101.5, 101.5, 0),
    ]
    svg = chart.render_svg(candles, title="SBER <test> & co", timeframe="1m")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count('<g class="candle up">') == 2 and svg.count('<g class="candle down">') == 1
    assert (
        "SBER &lt;test&gt; &amp; co" in svg
        and "<script" not in svg
        and "http://" not in svg.replace("http://www.w3.org/2000/svg", "")
    )
    assert "03.01 10:00" in svg


def test_svg_chart_of_nothing_or_a_flat_line() -> None:
    assert "No candles in this range" in chart.render_svg([], title="x", timeframe="1d")
    flat = [chart.Candle(f"2024-01-0{i} 00:00:00", 5.0, 5.0, 5.0, 5.0, 1) for i in range(1, 4)]
    assert chart.render_svg(flat, title="x", timeframe="1d").count('class="candle up"') == 3


@pytest.mark.parametrize(
    ("span", "step"), [(10.0, 2.0), (1.0, 0.2), (0.03, 0.005), (730.0, 200.0), (0.0, 1.0)]
)
def test_nice_steps(span: float, step: float) -> None:
    assert chart.nice_step(span) == pytest.approx(step)


# --- serve command and metadata ------------------------------------------------------------------


def _settings(argv: list[str]) -> dict[str, str]:
    return {argv[i + 1]: argv[i + 2] for i, arg in enumerate(argv) if arg == "--setting"}


def test_serve_command_is_read_only_and_mutable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(serve.ALLOW_SQL_ENV, raising=False)
    monkeypatch.delenv(serve.CORS_ENV, raising=False)
    argv = serve.datasette_command("/data/publication.db", "0.0.0.0", 8001)
    assert argv[argv.index("serve") + 1] == "/data/publication.db"
    assert "-i" not in argv and "--immutable" not in argv and "--cors" not in argv
    settings = _settings(argv)
    assert settings["default_allow_sql"] == "off"
    assert settings["allow_download"] == "off" and settings["allow_csv_stream"] == "off"
    assert settings["allow_facet"] == "off" and settings["suggest_facets"] == "off"
    assert settings["max_returned_rows"] == "1000" and int(settings["sql_time_limit_ms"]) <= 1000
    for flag in ("--metadata", "--plugins-dir", "--template-dir", "--static"):
        assert flag in argv
    assert Path(argv[argv.index("--metadata") + 1]).is_file()
    monkeypatch.setenv(serve.ALLOW_SQL_ENV, "1")
    monkeypatch.setenv(serve.CORS_ENV, "yes")
    argv = serve.datasette_command("/data/publication.db", "127.0.0.1", 8001)
    assert _settings(argv)["default_allow_sql"] == "on" and "--cors" in argv


def test_metadata_describes_every_table_and_column(tmp_path: Path) -> None:
    path = tmp_path / "publication.db"
    publication.ensure_schema(path)
    with closing(sqlite3.connect(path)) as conn:
        tables = {
            name: [row[1] for row in conn.execute(f"PRAGMA table_info({name})")]
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    described = METADATA["databases"]["publication"]["tables"]
    assert set(described) == set(tables) == set(TABLE_COLUMNS)
    for name, columns in tables.items():
        assert described[name]["title"] and described[name]["description"]
        assert set(described[name]["columns"]) == set(columns), name
        assert all(described[name]["columns"].values()), name
    assert METADATA["license"] and METADATA["source"] and METADATA["source_url"]


def test_canned_queries_are_read_only_and_match_the_guard() -> None:
    queries = METADATA["databases"]["publication"]["queries"]
    assert set(queries) == set(CANNED_QUERIES)
    for name, query in queries.items():
        assert not query.get("write"), name
        assert query["sql"].lstrip().lower().startswith("select"), name
        params = set(re.findall(r":(\w+)", re.sub(r"'[^']*'", "''", query["sql"])))
        spec = CANNED_QUERIES[name]
        assert params == {*spec.required, *spec.optional}, name
    assert "allow_sql" not in METADATA
