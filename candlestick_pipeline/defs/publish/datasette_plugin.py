"""The Datasette side of the publication: hook implementations used by ``datasette/plugins/``.

``datasette/plugins/candlestick_publication.py`` only forwards Datasette's hooks to the functions
here, so this code is importable, typed and tested like the rest of the package. It adds:

* the ISS-compatible route (:mod:`.iss_route`),
* the chart page ``/-/chart`` and the bare image ``/-/chart.svg`` (:mod:`.chart`),
* the request guard (:mod:`.guard`) as ASGI middleware, and a 400 instead of Datasette's 500 for
  a bad ``_sort``,
* serving the file under the name ``publication`` whatever its file name is.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

import datasette.handle_exception as datasette_errors
from datasette.database import QueryInterrupted
from datasette.utils import add_cors_headers
from datasette.utils.asgi import Response
from datasette.views.base import DatasetteError

from candlestick_pipeline.defs.publish import chart, iss_route
from candlestick_pipeline.defs.publish.guard import (
    DATABASE,
    ASGIApp,
    GuardError,
    GuardMiddleware,
    check_board,
    check_date_or_datetime,
    check_secid,
    check_timeframe,
    error_body,
)
from candlestick_pipeline.lib.timeframes import TIMEFRAMES

CHART_ROUTE = r"^/-/chart$"
CHART_SVG_ROUTE = r"^/-/chart\.svg$"
DEFAULT_CHART_CANDLES = 150


# --- helpers ---------------------------------------------------------------------------------------


def _database(datasette: Any) -> Any:
    return datasette.get_database(DATABASE)


async def _fetch(datasette: Any, sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
    try:
        results = await _database(datasette).execute(sql, params)
    except QueryInterrupted:
        raise GuardError(400, "the query took too long: ask for a shorter range") from None
    return [tuple(row) for row in results.rows]


def _headers(datasette: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    if datasette.cors:
        add_cors_headers(headers)
    return headers


def _error(datasette: Any, path: str, exc: GuardError) -> Response:
    body, content_type = error_body(path, exc.status, exc.message)
    return Response(body, status=exc.status, headers=_headers(datasette), content_type=content_type)


def _args(request: Any) -> list[tuple[str, str]]:
    return parse_qsl(request.query_string, keep_blank_values=True)


# --- startup: one database, named "publication" -------------------------------------------------


def startup(datasette: Any) -> None:
    """Serve the single database file as ``publication`` whatever the file is called.

    ``metadata.yaml`` (titles, canned queries) is keyed by that name, and the file name comes from
    ``$CANDLESTICK_PUBLICATION_PATH``.
    """
    # Datasette's default error handler prints a full "rich" traceback for EVERY error when rich is
    # importable (Dagster installs it), 403s and 404s included: a flood on a public instance.
    # Without rich it prints tracebacks of unexpected (500) errors only.
    datasette_errors.rich = None
    if DATABASE in datasette.databases:
        return
    files = [db for name, db in datasette.databases.items() if name != "_internal" and not db.is_memory]
    if len(files) == 1:
        db = files[0]
        datasette.remove_database(db.name)
        datasette.add_database(db, name=DATABASE)


# --- middleware and errors -----------------------------------------------------------------------


def asgi_wrapper(datasette: Any) -> Callable[[ASGIApp], ASGIApp]:
    async def security_exists(secid: str, board: str | None) -> bool:
        if board is None:
            sql = (
                "SELECT 1 FROM series WHERE secid = :secid"
                " UNION ALL SELECT 1 FROM securities WHERE secid = :secid"
            )
        else:
            sql = (
                "SELECT 1 FROM series WHERE secid = :secid AND board = :board"
                " UNION ALL SELECT 1 FROM securities WHERE secid = :secid AND board = :board"
            )
        rows = await _fetch(datasette, sql + " LIMIT 1", {"secid": secid, "board": board})
        return bool(rows)

    def wrap(app: ASGIApp) -> ASGIApp:
        return GuardMiddleware(app, security_exists, cors=bool(datasette.cors))

    return wrap


_USER_ERRORS = ("Cannot sort table by", "Cannot use _sort and _sort_desc")


def handle_exception(datasette: Any, request: Any, exception: BaseException) -> Any:
    """A 400 for errors Datasette 0.65 reports as 500 although the request is at fault."""
    status = None
    if isinstance(exception, DatasetteError) and str(exception.message).startswith(_USER_ERRORS):
        status, message = 400, str(exception.message)
    elif isinstance(exception, json.JSONDecodeError | UnicodeDecodeError):
        status, message = 400, f"malformed parameter: {exception}"
    if status is None:
        return None

    async def inner() -> Response:
        return _error(datasette, request.path, GuardError(status, message))

    return inner


def forbidden(datasette: Any, request: Any, message: str) -> Any:
    """A 403 for a JSON URL (arbitrary SQL, the database download) answers in JSON, not HTML."""
    if not request.path.endswith(".json"):
        return None
    text = f"{message}: arbitrary SQL and downloads are disabled on this read-only publication"
    return _error(datasette, request.path, GuardError(403, text))


def menu_links(datasette: Any) -> list[dict[str, str]]:
    return [
        {"href": datasette.urls.path("/-/chart"), "label": "Candlestick chart"},
        {"href": datasette.urls.path(f"/{DATABASE}/candle_series"), "label": "Candles of one security"},
        {"href": datasette.urls.path(f"/{DATABASE}/latest_candles"), "label": "Latest candles"},
    ]


# --- the ISS route -------------------------------------------------------------------------------


async def iss_candles(datasette: Any, request: Any) -> Response:
    """``/iss/engines/{engine}/markets/{market}/boards/{board}/securities/{secid}/candles.json``."""
    if request.method not in ("GET", "HEAD"):
        return _error(datasette, request.path, GuardError(405, "only GET: the publication is read-only"))

    async def fetch(sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
        return await _fetch(datasette, sql, params)

    try:
        body = await iss_route.answer(request.url_vars, _args(request), fetch)
    except GuardError as exc:
        return _error(datasette, request.path, exc)
    return Response(
        body, status=200, headers=_headers(datasette), content_type="application/json; charset=utf-8"
    )


# --- the chart -----------------------------------------------------------------------------------

SERIES_SQL = (
    "SELECT s.secid, s.board, s.timeframe, s.first_begin, s.last_begin, s.candles, sec.shortname,"
    " coalesce(sec.engine, 'stock'), coalesce(sec.market, 'shares')"
    " FROM series s LEFT JOIN securities sec ON sec.secid = s.secid AND sec.board = s.board"
    " ORDER BY s.secid, s.board"
)


class ChartQuery:
    """The validated choice of series and range of a chart request."""

    def __init__(self, args: list[tuple[str, str]], series: list[Sequence[Any]]) -> None:
        given = dict(args)
        security = given.get("security", "")
        secid, board = given.get("secid", ""), given.get("board", "")
        if security and not secid:
            secid, _, board = security.partition(".")
        if secid:
            secid = check_secid(secid)
        if board:
            board = check_board(board)
        timeframe = check_timeframe(given["timeframe"]) if given.get("timeframe") else ""
        self.begin_from = check_date_or_datetime(given["from"], "from") if given.get("from") else ""
        self.begin_till = check_date_or_datetime(given["till"], "till") if given.get("till") else ""
        if self.begin_from and self.begin_till and self.begin_from > self.begin_till:
            raise GuardError(400, f"from {self.begin_from} is after till {self.begin_till}")
        if secid:
            matching = [row for row in series if row[0] == secid and (not board or row[1] == board)]
            if not matching:
                where = f"{secid}.{board}" if board else secid
                raise GuardError(404, f"unknown security {where}: the publication holds no candles of it")
        else:
            matching = list(series)
        if timeframe:
            with_timeframe = [row for row in matching if row[2] == timeframe]
            if secid and not with_timeframe:
                raise GuardError(404, f"no {timeframe} candles of {secid} are published")
            matching = with_timeframe or matching
        else:
            daily = [row for row in matching if row[2] == "1d"]
            matching = daily or matching
        chosen = matching[0] if matching else None
        self.secid = chosen[0] if chosen else secid
        self.board = chosen[1] if chosen else board
        self.timeframe = chosen[2] if chosen else (timeframe or "1d")
        self.shortname = (chosen[6] if chosen else None) or self.secid
        self.engine = chosen[7] if chosen else "stock"
        self.market = chosen[8] if chosen else "shares"
        self.found = chosen is not None

    def sql(self) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"secid": self.secid, "board": self.board, "timeframe": self.timeframe}
        where = "secid = :secid AND board = :board AND timeframe = :timeframe"
        limit = DEFAULT_CHART_CANDLES
        if self.begin_from or self.begin_till:
            params["from"] = self.begin_from
            params["till"] = (
                (self.begin_till + " 23:59:59") if len(self.begin_till) == 10 else self.begin_till
            )
            if not self.begin_till:
                params["till"] = "9999"
            where += " AND begin >= :from AND begin <= :till"
            limit = chart.MAX_CANDLES
        sql = (
            "SELECT begin, open, high, low, close, volume FROM candles"
            f" WHERE {where} ORDER BY begin DESC LIMIT {limit + 1}"
        )
        return sql, params


async def _chart_data(datasette: Any, request: Any) -> tuple[ChartQuery, list[Sequence[Any]], str, bool]:
    series = await _fetch(datasette, SERIES_SQL, {})
    query = ChartQuery(_args(request), series)
    if not query.found:
        return query, series, chart.render_svg([], title="No candles published yet", timeframe="1d"), False
    sql, params = query.sql()
    rows = await _fetch(datasette, sql, params)
    limit = chart.MAX_CANDLES if (query.begin_from or query.begin_till) else DEFAULT_CHART_CANDLES
    truncated = len(rows) > limit
    candles = [chart.Candle(str(r[0]), r[1], r[2], r[3], r[4], int(r[5])) for r in reversed(rows[:limit])]
    title = f"{query.shortname} · {query.secid}.{query.board} · {TIMEFRAMES[query.timeframe].title}"
    if candles:
        intraday = query.timeframe in ("1m", "10m", "1h")
        first, last = (
            (candles[0].begin, candles[-1].begin)
            if intraday
            else (candles[0].begin[:10], candles[-1].begin[:10])
        )
        title += f" · {first} … {last}" + (" (Moscow time)" if intraday else "")
    return query, series, chart.render_svg(candles, title=title, timeframe=query.timeframe), truncated


async def chart_svg(datasette: Any, request: Any) -> Response:
    """``/-/chart.svg?security=SBER.TQBR&timeframe=1d&from=...&till=...``: the chart alone."""
    try:
        _, _, svg, _ = await _chart_data(datasette, request)
    except GuardError as exc:
        return _error(datasette, request.path + ".json", exc)
    return Response(svg, status=200, headers=_headers(datasette), content_type="image/svg+xml; charset=utf-8")


async def chart_page(datasette: Any, request: Any) -> Response:
    """``/-/chart``: pick a security, timeframe and range; the candles are an inline SVG."""
    try:
        query, series, svg, truncated = await _chart_data(datasette, request)
    except GuardError as exc:
        return _error(datasette, request.path, exc)
    securities: dict[str, str] = {}
    for row in series:
        securities.setdefault(f"{row[0]}.{row[1]}", f"{row[0]}.{row[1]}" + (f" — {row[6]}" if row[6] else ""))
    available = sorted(
        {row[2] for row in series if row[0] == query.secid and row[1] == query.board},
        key=list(TIMEFRAMES).index,
    )
    span = next(
        (row for row in series if (row[0], row[1], row[2]) == (query.secid, query.board, query.timeframe)),
        None,
    )
    api_args = {"secid": query.secid, "board": query.board, "timeframe": query.timeframe}
    if query.begin_from:
        api_args["from"] = query.begin_from
    if query.begin_till:
        api_args["till"] = query.begin_till
    iss_args = {"interval": str(TIMEFRAMES[query.timeframe].iss_interval)}
    iss_args.update({key: api_args[key][:10] for key in ("from", "till") if key in api_args})
    context = {
        "svg": svg,
        "query": query,
        "securities": securities,
        "timeframes": [(name, tf.title, name in available) for name, tf in TIMEFRAMES.items()],
        "span": span,
        "truncated": truncated,
        "ranged": bool(query.begin_from or query.begin_till),
        "max_candles": chart.MAX_CANDLES,
        "default_candles": DEFAULT_CHART_CANDLES,
        "json_url": datasette.urls.path(f"/{DATABASE}/candle_series.json?" + urlencode(api_args)),
        "table_url": datasette.urls.path(
            f"/{DATABASE}/candles?"
            + urlencode({"secid": query.secid, "board": query.board, "timeframe": query.timeframe})
        ),
        "svg_url": datasette.urls.path("/-/chart.svg?" + urlencode(api_args)),
        "iss_url": datasette.urls.path(
            f"/iss/engines/{query.engine}/markets/{query.market}/boards/{query.board}"
            f"/securities/{query.secid}/candles.json?" + urlencode(iss_args)
        ),
    }
    page = await datasette.render_template("chart.html", context, request=request)
    return Response.html(page, headers=_headers(datasette))


Route = tuple[str, Callable[..., Awaitable[Response]]]


def routes() -> list[Route]:
    return [
        (iss_route.ROUTE, iss_candles),
        (CHART_ROUTE, chart_page),
        (CHART_SVG_ROUTE, chart_svg),
    ]
