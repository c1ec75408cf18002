"""The Datasette side of the publication: hook implementations used by ``datasette/plugins/``.

``datasette/plugins/candlestick_publication.py`` only forwards Datasette's hooks to the functions
here, so this code is importable, typed and tested like the rest of the package. It adds:

* the ISS-compatible route (:mod:`.iss_route`),
* the chart page ``/-/chart`` and the bare image ``/-/chart.svg`` (:mod:`.chart`),
* the request guard (:mod:`.guard`) as ASGI middleware, and a 400 instead of Datasette's 500 for
  a bad ``_sort``,
* serving the file under the name ``publication`` whatever its file name is,
* speed for the paged JSON (benchmark B4, docs in :mod:`.serve`), with Datasette's answers byte for
  byte: a faster ``.json`` renderer for ``_shape=array`` (:func:`render_json`), a short way
  through Datasette for the candles table and ``candle_series`` pages
  (:class:`FastPages`), startup objects frozen out of the cyclic GC, and Datasette's
  text decoding without a Python call per value.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import operator
import os
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any
from urllib.parse import parse_qsl, urlencode

import datasette.handle_exception as datasette_errors
from datasette.app import pm  # datasette.plugins.pm (the name clashes with ./datasette/plugins)
from datasette.filters import Filters
from datasette.renderer import json_renderer as datasette_json_renderer
from datasette.utils import (
    CustomJSONEncoder,
    add_cors_headers,
    await_me_maybe,
    compound_keys_after_sql,
    derive_named_parameters,
    detect_primary_keys,
    escape_sqlite,
    path_from_row_pks,
    path_with_replaced_args,
    sqlite_timelimit,
    table_columns,
    urlsafe_components,
)
from datasette.utils.asgi import Forbidden, Request, Response
from datasette.views.base import DatasetteError, ureg

from candlestick_pipeline.defs.publish import chart, iss_route, json_text
from candlestick_pipeline.defs.publish.guard import (
    DATABASE,
    ASGIApp,
    Checked,
    GuardError,
    GuardMiddleware,
    Receive,
    Scope,
    Send,
    check_board,
    check_date_or_datetime,
    check_secid,
    check_timeframe,
    error_body,
    unknown_security,
)
from candlestick_pipeline.lib.timeframes import TIMEFRAMES

CHART_ROUTE = r"^/-/chart$"
CHART_SVG_ROUTE = r"^/-/chart\.svg$"
DEFAULT_CHART_CANDLES = 150


# --- helpers ---------------------------------------------------------------------------------------


def _database(datasette: Any) -> Any:
    return datasette.get_database(DATABASE)


_TOO_LONG = "the query took too long: ask for a shorter range"


async def _fetch(datasette: Any, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    (rows,) = await _fetch_all(datasette, [(sql, params)])
    return rows


async def _fetch_all(
    datasette: Any, statements: Sequence[iss_route.Statement]
) -> list[list[tuple[Any, ...]]]:
    """The rows (tuples) of each statement, all run in one trip to a SQL thread, under the time limit.

    One trip, not one a statement: each trip waits for a SQL thread and then for the
    event loop to wake up again, 0.1-0.2 ms on a slow core. The time limit is the trip's, not each
    statement's. Unlike ``Database.execute``, the statements do not show in ``?_trace=1``.
    """

    def run(conn: sqlite3.Connection) -> list[list[tuple[Any, ...]]]:
        results = []
        with sqlite_timelimit(conn, datasette.sql_time_limit_ms):
            for sql, params in statements:
                cursor = conn.cursor()
                cursor.row_factory = None  # tuples, not Datasette's sqlite3.Row
                results.append(cursor.execute(sql, params).fetchall())
        return results

    try:
        found: list[list[tuple[Any, ...]]] = await _database(datasette).execute_fn(run)
    except sqlite3.OperationalError as exc:
        if exc.args == ("interrupted",):  # the time limit, as Database.execute tells it
            raise GuardError(400, _TOO_LONG) from None
        raise
    return found


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
    _freeze_startup_objects()
    if DATABASE in datasette.databases:
        return
    files = [db for name, db in datasette.databases.items() if name != "_internal" and not db.is_memory]
    if len(files) == 1:
        db = files[0]
        datasette.remove_database(db.name)
        datasette.add_database(db, name=DATABASE)


_frozen = False


def _freeze_startup_objects() -> None:
    """Move everything loaded at startup out of the cyclic garbage collector's reach (once).

    The plugin imports the package, and with it Dagster and Polars: ~200,000 long-lived objects
    that every full collection walks again, tens of milliseconds in the middle of a request now
    and then (a 1000-row page promotes its rows to the old generation often enough to trigger
    one every few dozen pages). ``gc.freeze`` leaves them to reference counting alone.
    """
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


_decode_text = operator.methodcaller("decode", "utf-8", "replace")
"""Datasette's ``text_factory`` (``lambda x: str(x, "utf-8", "replace")``) without a Python frame."""


def prepare_connection(conn: Any) -> None:
    """Decode TEXT values as Datasette does (invalid UTF-8 becomes U+FFFD), in C."""
    conn.text_factory = _decode_text


# --- middleware and errors -----------------------------------------------------------------------


def _security_sql(board: str | None) -> str:
    """Whether the publication holds a security (on a board): the guard's 404 lookup."""
    if board is None:
        return (
            "SELECT 1 FROM series WHERE secid = :secid"
            " UNION ALL SELECT 1 FROM securities WHERE secid = :secid LIMIT 1"
        )
    return (
        "SELECT 1 FROM series WHERE secid = :secid AND board = :board"
        " UNION ALL SELECT 1 FROM securities WHERE secid = :secid AND board = :board LIMIT 1"
    )


def asgi_wrapper(datasette: Any) -> Callable[[ASGIApp], ASGIApp]:
    async def security_exists(secid: str, board: str | None) -> bool:
        rows = await _fetch(datasette, _security_sql(board), {"secid": secid, "board": board})
        return bool(rows)

    fast = FastPages(datasette) if _env_flag(FAST_JSON_ENV, default=True) else None

    def wrap(app: ASGIApp) -> ASGIApp:
        return GuardMiddleware(app, security_exists, cors=bool(datasette.cors), fast_answer=fast)

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


# --- JSON rendering -----------------------------------------------------------------------------
#
# Datasette 0.65's JSON renderer spends most of a 1000-row ``_shape=array`` page in Python: a
# generator over every value of every row looking for infinities, a dict per row, then the encoder
# walking those dicts. encode_array() writes the same bytes column by column with C-level loops:
# text columns as they are between quotes when none of their characters needs escaping (else the
# JSON string escaper mapped over them), finite numbers as ``repr`` writes them (exactly what the
# ``json`` encoder writes; float columns formatted by polars, see ``json_text``), and each row
# joined from its pieces and the constant key texts (``json_text.join_rows``). Columns of mixed or
# other types are encoded value by value with Datasette's own encoder. Other shapes and options
# (``_json``, ``_nl``, ``_json_infinity``) and errors are left to Datasette's renderer.

_INFINITIES = frozenset((math.inf, -math.inf))
_ENCODER = CustomJSONEncoder()
"""``json.dumps(value, cls=CustomJSONEncoder)`` as Datasette encodes each value (default options)."""
_FALLBACK_ARGS = ("_json", "_nl", "_json_infinity")


def _encode_value(value: Any) -> str:
    """One value as Datasette's renderer writes it, float infinities as null (remove_infinites)."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int:
        return repr(value)
    if isinstance(value, float):
        if value in _INFINITIES:
            return "null"
        if kind is float and math.isfinite(value):
            return repr(value)
    return _ENCODER.encode(value)


def encode_array(columns: Sequence[str], rows: Sequence[Iterable[Any]]) -> str | None:
    """The body Datasette's renderer writes for ``_shape=array``, or None to let it write it.

    That is ``json.dumps([dict(zip(columns, remove_infinites(row))) for row in rows],
    cls=CustomJSONEncoder)``. None for repeated column names (a dict keeps one of each) and rows
    without exactly ``len(columns)`` values (neither happens with SQLite results).
    """
    if not rows:
        return "[]"
    if len(set(columns)) != len(columns):
        return None
    try:
        encoded = [
            (
                encode_basestring_ascii(name) + ": ",
                *json_text.column_texts(values, encode_basestring_ascii, _encode_value),
            )
            for name, values in zip(columns, zip(*rows, strict=True), strict=True)
        ]
    except ValueError:
        return None
    return json_text.join_rows(encoded, len(rows), "{", "}")


def render_json(args: Any, data: Any, view_name: str) -> Response:
    """Datasette's ``.json`` renderer with a fast path for ``_shape=array`` (same bytes, headers)."""
    rows = data.get("rows")
    columns = data.get("columns")
    if (
        args.get("_shape") != "array"
        or any(name in args for name in _FALLBACK_ARGS)
        or data.get("error")
        or not rows
        or not columns
    ):
        return datasette_json_renderer(args, data, view_name)
    body = encode_array(columns, rows)
    if body is None:
        return datasette_json_renderer(args, data, view_name)
    headers = {}
    next_url = data.get("next_url")
    if next_url:
        headers["link"] = f'<{next_url}>; rel="next"'
    return Response(
        body,
        status=200,
        headers=headers,
        content_type="application/json; charset=utf-8",
    )


def output_renderers() -> list[dict[str, Any]]:
    """Replaces Datasette's built-in ``json`` renderer (a plugin's renderer wins over it)."""
    return [{"extension": "json", "render": render_json, "can_render": lambda: True}]


# --- a shorter way through Datasette for the two paged JSON URLs --------------------------------
#
# A 1000-candle page of /publication/candle_series.json or /publication/candles.json costs Datasette
# 0.65 several milliseconds besides the SQL and the JSON: with the guard's lookup, six (canned
# query) or thirteen (table) trips to its SQL threads (schema refresh, table introspection, FTS
# check), the CSRF token, routing and permission plumbing, and sqlite3.Row objects. The requests a
# paging client sends - anonymous GET, ``_shape=array``, one series by its key - are answered by
# FastPages (offered each checked request by the guard) with Datasette's own pieces: the canned
# query from ``get_canned_query``, WHERE clauses from ``Filters``, keyset ``_next`` from
# ``compound_keys_after_sql``/``path_from_row_pks``, the same permission checks, time limit, row
# limits, headers and JSON bytes; the guard's lookup and the SELECT share one trip to a SQL thread
# (for the table, the view-table permission's own lookup of the table name runs alongside). Any
# other request, or any error, goes the usual way and Datasette answers it (the error included).
# ``$CANDLESTICK_DATASETTE_FAST_JSON=0`` turns the short way off.

FAST_JSON_ENV = "CANDLESTICK_DATASETTE_FAST_JSON"
CANNED_PAGE = "candle_series"
TABLE_PAGE = "candles"
_FAST_PATHS = {
    f"/{DATABASE}/{CANNED_PAGE}.json": CANNED_PAGE,
    f"/{DATABASE}/{TABLE_PAGE}.json": TABLE_PAGE,
}
_NO_OP_ARGS = frozenset({"_shape", "_nocount", "_nofacet", "_nosuggest"})
"""Underscore arguments that change nothing in a ``_shape=array`` page (beyond the next link)."""
_TABLE_ARGS = _NO_OP_ARGS | {"_size", "_next"}
_SIZE_RE = re.compile(r"^[1-9][0-9]{0,6}$")
_SERIES_FILTERS = frozenset({"secid", "board", "timeframe"})
_BEGIN_FILTERS = frozenset({"begin", "begin__exact", "begin__gt", "begin__gte", "begin__lt", "begin__lte"})
"""Table pages taken the short way: one series (an index range, never near the time limit)."""
_JSON = "application/json; charset=utf-8"


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class FastPage:
    body: str
    next_url: str | None = None


class _UnknownSecurity(Exception):
    """The guard's lookup, made in the same trip to the SQL thread, found no such security."""


def _check_security(conn: sqlite3.Connection, checked: Checked) -> None:
    if checked.secid is not None:
        params = {"secid": checked.secid, "board": checked.board}
        if conn.execute(_security_sql(checked.board), params).fetchone() is None:
            raise _UnknownSecurity


def _run_select(
    conn: sqlite3.Connection, datasette: Any, sql: str, params: Mapping[str, Any], page_size: int
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """``Database.execute(sql, params, truncate=True, page_size=...)`` with tuples for rows.

    Text is decoded by sqlite3 itself (``text_factory=str``) for the duration: invalid UTF-8 is
    then an error, and Datasette answers that request again with its replacing decoder.
    The connection belongs to the calling Datasette SQL thread, so nothing else sees the switch.
    """
    max_rows = datasette.max_returned_rows
    if max_rows == page_size:
        max_rows += 1
    text_factory = conn.text_factory
    conn.text_factory = str
    try:
        with sqlite_timelimit(conn, datasette.sql_time_limit_ms):
            cursor = conn.cursor()
            cursor.row_factory = None
            cursor.execute(sql, params)
            rows = cursor.fetchmany(max_rows + 1)[:max_rows] if max_rows else cursor.fetchall()
    finally:
        conn.text_factory = text_factory
    return [column[0] for column in cursor.description], rows


async def _visible(datasette: Any, permission: tuple[str, tuple[str, str]]) -> bool:
    """Datasette's ``check_visibility`` for the anonymous actor (one check, not two)."""
    try:
        await datasette.ensure_permissions(None, [permission, ("view-database", DATABASE), "view-instance"])
    except Forbidden:
        return False
    return True


def _default_hooks_only(name: str) -> bool:
    """Whether only Datasette's own plugins implement hook ``name``."""
    return all(impl.plugin_name.startswith("datasette.") for impl in getattr(pm.hook, name).get_hookimpls())


async def canned_page(datasette: Any, args: Mapping[str, str], checked: Checked) -> FastPage | None:
    """``/publication/candle_series.json?...&_shape=array`` as Datasette's QueryView answers it."""
    canned = await datasette.get_canned_query(DATABASE, CANNED_PAGE, None)
    if not canned or canned.get("write"):
        return None
    if not await _visible(datasette, ("view-query", (DATABASE, CANNED_PAGE))):
        return None
    db = datasette.get_database(DATABASE)
    sql = canned["sql"]
    names = canned.get("params") or await derive_named_parameters(db, sql)
    if any(name.startswith("_") for name in names):
        return None  # magic parameters (_actor_id, _header_...): Datasette's business
    params = {key: value for key, value in args.items() if key not in ("sql", "_shape")}
    for name in names:
        params.setdefault(name, "")
    page_size = datasette.page_size

    def select(conn: sqlite3.Connection) -> tuple[list[str], list[tuple[Any, ...]]]:
        _check_security(conn, checked)
        return _run_select(conn, datasette, sql, params, page_size)

    columns, rows = await db.execute_fn(select)
    body = encode_array(columns, rows)
    return None if body is None else FastPage(body)


_Selected = tuple[list[str], list[str], list[tuple[Any, ...]]] | None
"""Primary keys, columns and rows of a table page; None: Datasette's business."""


async def table_page(
    datasette: Any, request: Request, args: Mapping[str, str], checked: Checked
) -> FastPage | None:
    """``/publication/candles.json?<filters>&_size=..&_next=..&_shape=array`` as Datasette's TableView."""
    if await datasette.get_canned_query(DATABASE, TABLE_PAGE, None) or not _default_hooks_only(
        "filters_from_request"
    ):
        return None
    metadata = datasette.table_metadata(DATABASE, TABLE_PAGE)
    if metadata.get("sort") or metadata.get("sort_desc"):
        return None
    max_rows = datasette.max_returned_rows
    size = args.get("_size") or metadata.get("size")
    if not size:
        page_size = datasette.page_size
    elif size == "max":
        page_size = max_rows
    elif _SIZE_RE.match(str(size)) and int(size) <= max_rows:
        page_size = int(size)
    else:
        return None  # Datasette's 400
    filter_args = sorted((key, value) for key, value in args.items() if not key.startswith("_"))
    filtered = {key for key, _ in filter_args}
    if not filtered >= _SERIES_FILTERS or not filtered <= _SERIES_FILTERS | _BEGIN_FILTERS:
        return None  # not one series by its key: Datasette's business (and maybe its time limit)
    where_clauses, params = Filters(filter_args, metadata.get("units", {}), ureg).build_where_clauses(
        TABLE_PAGE
    )
    token = args.get("_next")

    def select(conn: sqlite3.Connection) -> _Selected:
        pks = detect_primary_keys(conn, TABLE_PAGE)
        names = table_columns(conn, TABLE_PAGE)
        if not pks or not names:
            return None  # a rowid table, a view or no table: Datasette's business
        _check_security(conn, checked)
        clauses, values = list(where_clauses), dict(params)
        if token:
            components = urlsafe_components(token)
            if len(components) == len(pks):  # Datasette ignores any other token
                start = len(values)
                clauses.append(compound_keys_after_sql(pks, start))
                values.update({f"p{start + i}": value for i, value in enumerate(components)})
        where = f"where {' and '.join(clauses)} " if clauses else ""
        sql = (
            f"select {', '.join(escape_sqlite(name) for name in names)}"
            f" from {escape_sqlite(TABLE_PAGE)} {where}"
            f"order by {', '.join(escape_sqlite(pk) for pk in pks)} limit {page_size + 1}"
        )
        columns, rows = _run_select(conn, datasette, sql, values, page_size)
        return pks, columns, rows

    # The view-table permission asks SQLite for the table's spelling: a trip of its own, made
    # alongside the SELECT (whose rows are dropped unless the anonymous actor may see them).
    selection: Awaitable[_Selected] = datasette.get_database(DATABASE).execute_fn(select)
    visible, selected = await asyncio.gather(
        _visible(datasette, ("view-table", (DATABASE, TABLE_PAGE))), selection, return_exceptions=True
    )
    if isinstance(selected, BaseException):
        raise selected
    if isinstance(visible, BaseException):
        raise visible
    if not visible or selected is None:
        return None
    pks, columns, rows = selected
    next_url = None
    if 0 < page_size < len(rows):
        next_value = path_from_row_pks(dict(zip(columns, rows[-2], strict=True)), pks, False)
        # A plain str: every method call on Datasette's PrefixedUrlString lists dir(str) first,
        # and urljoin makes dozens of them (0.3-0.5 ms a page).
        path = str(datasette.urls.path(path_with_replaced_args(request, {"_next": next_value})))
        next_url = datasette.absolute_url(request, path)
        rows = rows[:page_size]
    body = encode_array(columns, rows)
    return None if body is None else FastPage(body, next_url)


class FastPages:
    """The guard's ``fast_answer``: the paged ``_shape=array`` JSON of candles and candle_series."""

    def __init__(self, datasette: Any) -> None:
        self.datasette = datasette

    def _arguments(self, scope: Scope, name: str) -> dict[str, str] | None:
        """The query arguments when the request is one answered here as Datasette answers it."""
        headers = {key.lower() for key, _ in scope.get("headers") or []}
        if b"cookie" in headers or b"authorization" in headers:
            return None  # Datasette personalises such responses (actor, private caching)
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        args = dict(pairs)
        allowed = _TABLE_ARGS if name == TABLE_PAGE else _NO_OP_ARGS
        if (
            len(args) != len(pairs)
            or args.get("_shape") != "array"
            or any(key.startswith("_") and key not in allowed for key in args)
        ):
            return None
        return args

    async def _page(self, scope: Scope, receive: Receive, checked: Checked) -> Response | None:
        """Datasette's response to this request, or None when Datasette itself must answer."""
        ds = self.datasette
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1").partition("?")[0] if raw_path is not None else scope.get("path", "")
        name = _FAST_PATHS.get(path)
        if name is None or scope.get("method") != "GET":
            return None
        args = self._arguments(scope, name)
        if (
            args is None
            or not getattr(ds, "_startup_invoked", False)
            or DATABASE not in ds.databases
            or ds.setting("base_url") != "/"
            or ds.setting("force_https_urls")
        ):
            return None
        request = Request(scope, receive)
        for actor in pm.hook.actor_from_request(datasette=ds, request=request):
            if await await_me_maybe(actor):
                return None
        try:
            if name == TABLE_PAGE:
                page = await table_page(ds, request, args, checked)
            else:
                page = await canned_page(ds, args, checked)
        except _UnknownSecurity:
            raise unknown_security(checked) from None
        except Exception:  # e.g. the time limit, invalid UTF-8: Datasette answers it its way
            return None
        if page is None:
            return None
        # DataView.get and the json renderer: Link, caching, referrer policy, CORS.
        headers: dict[str, str] = {}
        if page.next_url:
            headers["link"] = f'<{page.next_url}>; rel="next"'
        if ds.cache_headers:
            ttl = int(ds.setting("default_cache_ttl"))
            headers["Cache-Control"] = "no-cache" if ttl == 0 else f"max-age={ttl}"
        headers["Referrer-Policy"] = "no-referrer"
        if ds.cors:
            add_cors_headers(headers)
        return Response(page.body, status=200, headers=headers, content_type=_JSON)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, checked: Checked) -> bool:
        response = await self._page(scope, receive, checked)
        if response is None:
            return False

        async def send_with_vary(message: Any) -> None:
            # What Datasette's router adds to every anonymous, non-static response.
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message["headers"], (b"vary", b"Cookie, Authorization")])
            await send(message)

        await response.asgi_send(send_with_vary)
        return True


# --- the ISS route -------------------------------------------------------------------------------


async def iss_candles(datasette: Any, request: Any) -> Response:
    """``/iss/engines/{engine}/markets/{market}[/boards/{board}]/securities/{secid}/candles.json``."""
    if request.method not in ("GET", "HEAD"):
        return _error(datasette, request.path, GuardError(405, "only GET: the publication is read-only"))

    async def fetch(statements: Sequence[iss_route.Statement]) -> list[list[tuple[Any, ...]]]:
        return await _fetch_all(datasette, statements)

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

    def __init__(self, args: list[tuple[str, str]], series: Sequence[Sequence[Any]]) -> None:
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


async def _chart_data(datasette: Any, request: Any) -> tuple[ChartQuery, list[tuple[Any, ...]], str, bool]:
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
        (iss_route.MARKET_ROUTE, iss_candles),
        (CHART_ROUTE, chart_page),
        (CHART_SVG_ROUTE, chart_svg),
    ]
