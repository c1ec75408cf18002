"""The fast JSON of the publication (benchmark B4) writes exactly what Datasette writes.

``encode_array``/``render_json`` against Datasette's own renderer, value by value; then the
plugin's short way (``FastPages``) against Datasette itself (the same app with
``$CANDLESTICK_DATASETTE_FAST_JSON=0``): status, headers and body of every URL must be identical,
and the requests a paging client sends must actually take the short way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import random
import sqlite3
import struct
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from datasette.app import Datasette
from datasette.renderer import json_renderer as datasette_json_renderer
from datasette.utils import CustomJSONEncoder, MultiParams, remove_infinites

from candlestick_pipeline.defs.publish import datasette_plugin, iss_route, serve
from candlestick_pipeline.defs.publish.guard import GuardError
from candlestick_pipeline.lib import publication

# --- the encoder -----------------------------------------------------------------------------------


def _datasette_array(columns: list[str], rows: list[Any]) -> str:
    return json.dumps(
        [dict(zip(columns, remove_infinites(row), strict=False)) for row in rows], cls=CustomJSONEncoder
    )


def _sqlite_rows(sql: str) -> tuple[list[str], list[sqlite3.Row]]:
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.row_factory = sqlite3.Row
        cursor = conn.execute(sql)
        return [d[0] for d in cursor.description], cursor.fetchall()


CANDLE = ("SBER", "TQBR", "1m", "2024-01-03 10:00:00", "2024-01-03 10:00:59", 271.5, 272.02, 271.1, 271.99)

ODD_COLUMNS: list[tuple[str, list[Any]]] = [
    ("text", ["SBER", 'quote " and \\ backslash', "кириллица ✓", "tab\tnew\nline\x00", "%s %r %%", ""]),
    ("floats", [0.1, -0.0, 1e16, 1.5e-7, 123456789.123456789, 2.0]),
    ("infinities", [math.inf, -math.inf, 1.0, math.inf, 0.5, -1.5]),
    ("nan", [math.nan, 1.0, 2.0, 3.0, 4.0, 5.0]),
    ("ints", [0, -1, 2**63 - 1, -(2**63), 10**400, 7]),
    ("mixed", [1, 2.5, None, "x", True, b"bytes"]),
    ("blobs", [b"\xff\xfe", b"ok", b"", b"\x00", b"caf\xc3\xa9", b"z"]),
    ("nested", [{"value": 1, "label": "one"}, [1, 2], None, {"a": math.inf}, (), {}]),
    ("nulls", [None] * 6),
    ("plain text", ["2024-01-03 10:00:00", "SBER", " ", "~!#$%&'()*+,-./:;<=>?@[]^_`{|}", "z", "0"]),
    ("a delete to escape", ["plain", "a\x7fb", "plain", "plain", "plain", "plain"]),
    ("a quote to escape", ["plain", 'a"b', "plain", "plain", "plain", "plain"]),
    ("a backslash to escape", ["plain", "a\\b", "plain", "plain", "plain", "plain"]),
    ("a sum too large", [1e308, 1e308, 1.0, 2.0, 3.0, 4.0]),
    ('we"ird %s name', [1, 2, 3, 4, 5, 6]),
]


@pytest.mark.parametrize(("name", "values"), ODD_COLUMNS, ids=[name for name, _ in ODD_COLUMNS])
def test_encode_array_writes_what_datasette_writes(name: str, values: list[Any]) -> None:
    columns = ["secid", name, "close"]
    rows = [("SBER", value, 271.99) for value in values]
    assert datasette_plugin.encode_array(columns, rows) == _datasette_array(columns, rows)
    single = [(value,) for value in values]
    assert datasette_plugin.encode_array([name], single) == _datasette_array([name], single)


def _float_columns() -> Iterator[tuple[str, list[float]]]:
    """Float columns around every edge of the polars formatting that ``encode_array`` relies on."""
    rng = random.Random(20261125)

    def any_finite() -> float:
        while True:
            value: float = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
            if math.isfinite(value):
                return value

    yield "prices", [round(rng.uniform(0.5, 80_000.0), rng.randrange(0, 7)) for _ in range(500)]
    yield "turnovers", [float(rng.randrange(10 ** rng.randrange(1, 17))) for _ in range(500)]
    yield "any bits", [any_finite() for _ in range(2000)]
    yield "any magnitude", [rng.choice((1, -1)) * 10 ** rng.uniform(-30, 30) for _ in range(2000)]
    yield "negative", [-rng.uniform(1e-4, 1e6) for _ in range(500)]
    edges = [1e-4, 9.999999999999999e-05, 1.0000000000000002e-4, 1e16, 9999999999999998.0, 1e22, 0.1 + 0.2]
    yield "edges", edges + [-value for value in edges]
    yield "zeros and plain", [0.0, -0.0, 1.5, 0.0001, -2.25, 1e300, 5.0]
    yield "zeros and small", [0.0, 1.5, 3e-05, 2.0]
    yield "a subnormal", [1.0, 5e-324, 2.0]


FLOAT_COLUMNS = list(_float_columns())


@pytest.mark.parametrize(("name", "values"), FLOAT_COLUMNS, ids=[name for name, _ in FLOAT_COLUMNS])
def test_float_columns_are_written_as_repr_writes_them(name: str, values: list[float]) -> None:
    rows = [("SBER", value, 7) for value in values]
    columns = ["secid", name, "volume"]
    assert datasette_plugin.encode_array(columns, rows) == _datasette_array(columns, rows)


def test_encode_array_of_sqlite_rows_and_edge_cases() -> None:
    columns, rows = _sqlite_rows(
        "SELECT 'SBER' AS secid, 1.5 AS open, 7 AS volume, NULL AS note, 9e999 AS big"
        " UNION ALL SELECT 'GAZP', 2.25, 8, 'x', -9e999"
    )
    assert datasette_plugin.encode_array(columns, rows) == _datasette_array(columns, rows)
    assert datasette_plugin.encode_array(columns, []) == "[]"
    candles = [CANDLE] * 3
    names = ["secid", "board", "timeframe", "begin", "end", "open", "high", "low", "close"]
    assert datasette_plugin.encode_array(names, candles) == _datasette_array(names, candles)
    # What it does not do the same way, it leaves to Datasette.
    assert datasette_plugin.encode_array(["a", "a"], [(1, 2)]) is None
    assert datasette_plugin.encode_array(["a", "b"], [(1, 2), (3,)]) is None
    assert datasette_plugin.encode_array(["a"], [(1, 2)]) is None


def _render(renderer: Any, query: str, data: dict[str, Any]) -> tuple[int, dict[str, str], bytes, str]:
    args = MultiParams(dict((key, [value]) for key, value in (part.split("=") for part in query.split("&"))))
    response = renderer(args, json.loads(json.dumps(data)) | {"rows": list(data["rows"])}, "table")
    body = response.body if isinstance(response.body, bytes) else response.body.encode()
    return response.status, dict(response.headers), body, response.content_type


@pytest.mark.parametrize(
    "query",
    [
        "_shape=array",
        "_shape=array&_nl=on",
        "_shape=array&_json=secid",
        "_shape=array&_json_infinity=1",
        "_shape=objects",
        "_shape=arrays",
        "_shape=object",
        "_shape=arrayfirst",
        "_shape=bogus",
    ],
)
def test_render_json_is_datasettes_renderer(query: str) -> None:
    data = {
        "rows": [("SBER", 1.5, math.inf), ("GAZP", 2.5, 3)],
        "columns": ["secid", "open", "close"],
        "primary_keys": ["secid"],
        "next_url": "http://localhost/publication/candles.json?_next=GAZP",
        "ok": True,
    }
    assert _render(datasette_plugin.render_json, query, data) == _render(datasette_json_renderer, query, data)
    for variant in ({**data, "rows": []}, {**data, "error": "boom"}):
        assert _render(datasette_plugin.render_json, query, variant) == _render(
            datasette_json_renderer, query, variant
        )


# --- the middleware against Datasette itself ---------------------------------------------------------

MINUTES = 1300  # 1m candles per security: two full pages of 1000 would not reach the end


def _candles(secid: str) -> Iterator[tuple[Any, ...]]:
    start = dt.datetime(2024, 1, 3, 7, 0)
    for minute in range(MINUTES):
        begin = start + dt.timedelta(minutes=minute)
        price = round(100 + math.sin(minute / 7) * 3, 2)
        yield (
            secid,
            "TQBR",
            "1m",
            f"{begin:%Y-%m-%d %H:%M:%S}",
            f"{begin + dt.timedelta(seconds=59):%Y-%m-%d %H:%M:%S}",
            price,
            price + 0.05,
            price - 0.05,
            price + 0.01,
            round(price * (minute + 1), 2),
            minute + 1,
        )


@pytest.fixture(scope="module")
def publication_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fast-json") / "publication.db"
    publication.ensure_schema(path)
    insert = f"INSERT INTO candles VALUES ({', '.join('?' for _ in publication.CANDLE_COLUMNS)})"
    with closing(publication.connect(path)) as conn, publication.write_transaction(conn):
        for secid in ("SBER", "GAZP"):
            conn.executemany(insert, _candles(secid))
        odd = ("ODD", "TQBR", "1d")
        conn.executemany(
            insert,
            [
                (*odd, "2024-01-03 00:00:00", "2024-01-03 23:59:59", math.inf, 2.0, -math.inf, 1.5, 0.0, 7),
                (*odd, "2024-01-04 00:00:00", "2024-01-04 23:59:59", 1, 2.5, 0.5, 1.25, 10, 8),
            ],
        )
        # Invalid UTF-8 in a TEXT column: Datasette shows U+FFFD, sqlite3's strict decoding fails.
        conn.execute(
            insert,
            (*odd, "2024-01-05 00:00:00", sqlite3.Binary(b"2024-01-05 \xff"), 1.0, 2.0, 0.5, 1.5, 10.0, 9),
        )
        conn.execute('UPDATE candles SET "end" = CAST("end" AS TEXT) WHERE begin = \'2024-01-05 00:00:00\'')
        conn.execute(
            "INSERT INTO series SELECT secid, board, timeframe, min(begin), max(begin), count(*),"
            " '2024-01-06 00:00:00' FROM candles GROUP BY secid, board, timeframe"
        )
        conn.execute(
            "INSERT INTO securities (secid, board, engine, market, shortname, is_primary, is_traded,"
            " added_at, updated_at) SELECT DISTINCT secid, board, 'stock', 'shares', secid, 1, 1,"
            " '2024-01-06 00:00:00', '2024-01-06 00:00:00' FROM series"
        )
    return path


def _datasette(path: Path, cors: bool = False, metadata: Any = None, **settings: Any) -> Datasette:
    def value(text: str) -> Any:
        return int(text) if text.isdigit() else text == "on" if text in ("on", "off") else text

    return Datasette(
        [str(path)],
        metadata=metadata or yaml.safe_load(serve.METADATA.read_text()),
        plugins_dir=str(serve.PLUGINS_DIR),
        template_dir=str(serve.TEMPLATES_DIR),
        static_mounts=[(serve.STATIC_MOUNT, str(serve.STATIC_DIR))],
        settings={name: value(text) for name, text in serve.SETTINGS.items()} | settings,
        cors=cors,
    )


Answer = tuple[int, list[tuple[str, str]], bytes]


async def _answers(
    path: Path, fast: bool, urls: list[str], headers: dict[str, str] | None = None, **options: Any
) -> tuple[list[Answer], int]:
    """The answers of a fresh Datasette with or without the short way; how many took it."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv(datasette_plugin.FAST_JSON_ENV, "1" if fast else "0")
    monkeypatch.setattr(datasette_plugin, "_freeze_startup_objects", lambda: None)  # not in pytest
    taken = 0
    original = datasette_plugin.FastPages._page

    async def counting(self: Any, scope: Any, receive: Any, checked: Any) -> Any:
        nonlocal taken
        response = await original(self, scope, receive, checked)
        taken += response is not None
        return response

    monkeypatch.setattr(datasette_plugin.FastPages, "_page", counting)
    try:
        ds = _datasette(path, **options)
        await ds.invoke_startup()
        transport = httpx.ASGITransport(app=ds.app())
        answers = []
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            for url in urls:
                response = await client.get(url, headers=headers)
                answers.append((response.status_code, list(response.headers.multi_items()), response.content))
        return answers, taken
    finally:
        monkeypatch.undo()


def _compare(path: Path, urls: list[str], headers: dict[str, str] | None = None, **options: Any) -> int:
    fast, taken = asyncio.run(_answers(path, True, urls, headers, **options))
    slow, none = asyncio.run(_answers(path, False, urls, headers, **options))
    assert none == 0
    for url, mine, theirs in zip(urls, fast, slow, strict=True):
        assert _timeless(mine) == _timeless(theirs), url
    return taken


def _timeless(answer: Answer) -> Answer:
    """Datasette's default JSON shape says how long the query took: leave that out."""
    status, headers, body = answer
    if body.startswith(b"{") and b'"query_ms": ' in body:
        data = json.loads(body)
        data.pop("query_ms")
        body = json.dumps(data).encode()
    return status, headers, body


SERIES = "secid=SBER&board=TQBR&timeframe=1m"
PAGED_URLS = [
    f"/publication/candle_series.json?{SERIES}&_shape=array",
    f"/publication/candle_series.json?{SERIES}&from=2024-01-03+20:00&_shape=array",
    f"/publication/candle_series.json?{SERIES}&from=2024-01-03&till=2024-01-03&after=2024-01-03+07:30:00&_shape=array",
    f"/publication/candle_series.json?{SERIES}&from=2030-01-01&_shape=array",
    "/publication/candle_series.json?secid=ODD&board=TQBR&timeframe=1d&till=2024-01-04&_shape=array",
    f"/publication/candle_series.json?{SERIES}&_shape=array&_nocount=1",
    f"/publication/candles.json?{SERIES}&_shape=array",
    f"/publication/candles.json?{SERIES}&begin__gte=2024-01-03+10:00&_size=1000&_shape=array",
    f"/publication/candles.json?{SERIES}&begin__gte=2024-01-03&begin__lt=2024-01-03+07:10&_size=max&_shape=array",
    f"/publication/candles.json?{SERIES}&_size=7&_shape=array&_nofacet=1",
    f"/publication/candles.json?{SERIES}&_size=1000&_shape=array&_next=SBER,TQBR,1m,2024-01-03+23~3A00~3A00",
    "/publication/candles.json?secid=ODD&board=TQBR&timeframe=1d&begin__lt=2024-01-05&_size=1&_shape=array",
]
DATASETTE_URLS = [  # other shapes, options and errors: Datasette answers, the same with or without
    f"/publication/candle_series.json?{SERIES}",
    f"/publication/candle_series.json?{SERIES}&_shape=objects",
    f"/publication/candle_series.json?{SERIES}&_shape=array&_json_infinity=1",
    f"/publication/candle_series.json?{SERIES}&_shape=array&_ttl=0",
    f"/publication/candles.json?{SERIES}&_shape=array&_col=open",
    f"/publication/candles.json?{SERIES}&_shape=array&_sort=begin",
    f"/publication/candles.json?{SERIES}&_shape=array&_size=abc",
    f"/publication/candles.json?{SERIES}&_shape=array&_size=1001",
    f"/publication/candles.json?{SERIES}&_shape=array&_size=0",
    f"/publication/candles.json?{SERIES}&_shape=array&_nl=on",
    f"/publication/candles.json?{SERIES}&secid=GAZP&_shape=array",
    "/publication/candles.json?secid=NOPE&_shape=array",
    "/publication/series.json?_shape=array",
    "/publication/candles.json?secid=ODD&board=TQBR&timeframe=1d&_shape=array",  # invalid UTF-8
    "/publication/candles.json?timeframe__in=1m,1d&volume__gt=1290&_size=50&_shape=array",  # not one series
    f"/publication/candles.json?{SERIES}&volume__gt=1290&_shape=array",
    "/publication/candles.json?secid=ODD&board=TQBR&_size=1&_shape=array",
]


def test_paging_requests_take_the_short_way_with_datasettes_answers(publication_file: Path) -> None:
    taken = _compare(publication_file, PAGED_URLS)
    assert taken == len(PAGED_URLS)


def test_other_requests_are_datasettes(publication_file: Path) -> None:
    assert _compare(publication_file, DATASETTE_URLS) == 0


def test_unknown_securities_are_the_guards_404(publication_file: Path) -> None:
    urls = [
        "/publication/candle_series.json?secid=NOPE&board=TQBR&timeframe=1m&_shape=array",
        "/publication/candles.json?secid=NOPE&board=TQBR&timeframe=1m&_size=1000&_shape=array",
        "/publication/candles.json?secid=SBER&board=TQBS&timeframe=1m&_shape=array",
    ]
    _compare(publication_file, urls)
    answers, _ = asyncio.run(_answers(publication_file, True, urls))
    for status, _, body in answers:
        assert status == 404 and b"unknown security" in body


def test_invalid_utf8_falls_back_to_datasettes_replacement(publication_file: Path) -> None:
    url = "/publication/candles.json?secid=ODD&board=TQBR&timeframe=1d&_shape=array"
    answers, _ = asyncio.run(_answers(publication_file, True, [url]))
    status, _, body = answers[0]
    assert status == 200
    rows = json.loads(body)
    assert [row["end"] for row in rows][-1] == "2024-01-05 \ufffd"
    assert rows[0]["open"] is None and rows[0]["low"] is None  # infinities, as Datasette writes them


def test_next_links_page_through_a_series_identically(publication_file: Path) -> None:
    async def pages(fast: bool) -> list[Answer]:
        url = f"/publication/candles.json?{SERIES}&begin__gte=2024-01-03+07:05&_size=600&_shape=array"
        answers: list[Answer] = []
        while url:
            answer, _ = await _answers(publication_file, fast, [url])
            answers += answer
            links = httpx.Response(200, headers=answer[0][1]).links
            url = links.get("next", {}).get("url", "").removeprefix("http://localhost")
        return answers

    fast, slow = asyncio.run(pages(True)), asyncio.run(pages(False))
    assert fast == slow
    assert [len(json.loads(body)) for _, _, body in fast] == [600, 600, 95]


def test_settings_that_change_the_answer_are_honoured(publication_file: Path) -> None:
    urls = PAGED_URLS[:2] + PAGED_URLS[6:8]
    assert _compare(publication_file, urls, default_cache_ttl=0) == len(urls)
    assert _compare(publication_file, urls, max_returned_rows=500) >= 2
    assert _compare(publication_file, urls, cors=True) == len(urls)
    # A cookie or credentials: Datasette answers (it personalises caching for them).
    assert _compare(publication_file, urls, headers={"cookie": "a=b"}) == 0
    assert _compare(publication_file, urls, headers={"authorization": "Bearer x"}) == 0


def test_startup_objects_are_frozen_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class FakeGC:
        def collect(self) -> None:
            calls.append("collect")

        def freeze(self) -> None:
            calls.append("freeze")

    monkeypatch.setattr(datasette_plugin, "gc", FakeGC())
    monkeypatch.setattr(datasette_plugin, "_frozen", False)
    datasette_plugin._freeze_startup_objects()
    datasette_plugin._freeze_startup_objects()
    assert calls == ["collect", "freeze"]


def test_candle_series_sql_is_from_till_after_with_one_lower_bound(publication_file: Path) -> None:
    """metadata.yaml folds ``begin >= from and begin > after`` into one bound SQLite can seek to."""
    sql = yaml.safe_load(serve.METADATA.read_text())["databases"]["publication"]["queries"]["candle_series"][
        "sql"
    ]
    plain = (
        'select secid, board, timeframe, begin, "end", open, high, low, close, value, volume from candles'
        " where secid = :secid and board = :board and timeframe = :timeframe"
        " and begin >= coalesce(nullif(:from, ''), '0000')"
        " and begin <= coalesce(nullif(:till, ''), '9999') || ' 23:59:59'"
        " and begin > coalesce(nullif(:after, ''), '') order by begin limit 1000"
    )
    moments = ["", "2024", "2024-01-03", "2024-01-03 07:30", "2024-01-03 07:30:00", "2024-01-03 23:59:59"]
    with closing(sqlite3.connect(publication_file)) as conn:
        plan = " ".join(
            row[-1]
            for row in conn.execute(
                f"EXPLAIN QUERY PLAN {sql}",
                dict.fromkeys(("secid", "board", "timeframe", "from", "till", "after"), ""),
            )
        )
        assert "PRIMARY KEY (secid=? AND board=? AND timeframe=? AND begin>? AND begin<?)" in plan
        for start in moments:
            for after in moments:
                for till in ("", "2024-01-03", "2024-01-04 03:00:00"):
                    params = {"secid": "SBER", "board": "TQBR", "timeframe": "1m"}
                    params |= {"from": start, "till": till, "after": after}
                    expected = conn.execute(plain, params).fetchall()
                    assert conn.execute(sql, params).fetchall() == expected, params


def test_permissions_are_datasettes(publication_file: Path) -> None:
    metadata = yaml.safe_load(serve.METADATA.read_text())
    database = metadata["databases"]["publication"]
    database["tables"]["candles"]["allow"] = {"id": "root"}
    database["queries"]["candle_series"]["allow"] = {"id": "root"}
    urls = [PAGED_URLS[0], PAGED_URLS[7]]
    assert _compare(publication_file, urls, metadata=metadata) == 0
    answers, _ = asyncio.run(_answers(publication_file, True, urls, metadata=metadata))
    assert [status for status, _, _ in answers] == [403, 403]


def test_the_iss_routes_statements_share_one_trip_and_the_time_limit(publication_file: Path) -> None:
    slow = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000)"
        " SELECT count(*) FROM c"
    )
    security = (iss_route.SECURITY_SQL, {"secid": "SBER", "board": "TQBR"})

    async def fetch() -> None:
        ds = _datasette(publication_file, sql_time_limit_ms=20)
        database = ds.get_database("publication")
        trips = 0
        execute_fn = database.execute_fn

        async def counted(fn: Any) -> Any:
            nonlocal trips
            trips += 1
            return await execute_fn(fn)

        database.execute_fn = counted
        found = await datasette_plugin._fetch_all(ds, [security, ("SELECT 2, 'x'", {})])
        assert found == [[("stock", "shares")], [(2, "x")]] and trips == 1
        with pytest.raises(GuardError) as caught:
            await datasette_plugin._fetch_all(ds, [security, (slow, {})])
        assert caught.value.status == 400 and "took too long" in caught.value.message
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await datasette_plugin._fetch_all(ds, [("SELECT * FROM nowhere", {})])

    asyncio.run(fetch())
