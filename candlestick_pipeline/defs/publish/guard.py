"""Request validation in front of Datasette: bad input gets a clear 4xx, never a 500 or a silent empty page.

Datasette 0.65 answers some bad requests badly (DAGSTER-DATASETTE-FACTS G14): ``_sort`` on an
unknown column is a 500, a filter on an unknown column is a silent ``[]`` (SQLite reads the quoted
name as a string literal), an unknown operator is ignored (all rows), and a malformed timestamp just
matches nothing. This module checks the query string of the publication's table and canned-query
URLs before Datasette sees it. The checks are pure functions (:func:`check_request`); the ASGI
middleware (:class:`GuardMiddleware`) applies them and adds one database lookup: a named security
that the publication does not hold is a 404, not an empty result.

Values never reach SQL through this module; Datasette binds every filter value as a parameter.
The checks exist for clear errors, not as the injection defence.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from datasette.utils import tilde_decode

from candlestick_pipeline.lib.publication import CANDLE_COLUMNS, SECURITY_COLUMNS, SERIES_COLUMNS
from candlestick_pipeline.lib.securities import InvalidSecurityKeyError, normalize_board, normalize_secid
from candlestick_pipeline.lib.timeframes import TIMEFRAMES

DATABASE = "publication"
"""The name Datasette serves the publication under (the plugin renames any other file stem to it)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TIMESTAMP_RE = re.compile(r"^\d{4}(-\d{2}(-\d{2}( \d{2}(:\d{2}(:\d{2})?)?)?)?)?$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}(:\d{2})?)?$")
_NUMBER_RE = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")

# Operators Datasette 0.65 knows; like/glob/notlike are left out (a leading wildcard is a full scan
# of ten million rows, and contains/startswith/endswith cover the useful cases on text columns).
ALLOWED_OPERATORS = (
    "exact",
    "not",
    "contains",
    "endswith",
    "startswith",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "notin",
    "date",
    "isnull",
    "notnull",
    "isblank",
    "notblank",
)
_COMPARISONS = ("exact", "not", "gt", "gte", "lt", "lte")
_NO_ARGUMENT = ("isnull", "notnull", "isblank", "notblank")

TIMESTAMP_COLUMNS = frozenset(
    {"begin", "end", "first_begin", "last_begin", "synced_at", "added_at", "updated_at"}
)
DATE_COLUMNS = frozenset({"listed_from", "listed_till", "history_from", "history_till"})
NUMERIC_COLUMNS = frozenset(
    {"open", "high", "low", "close", "value", "volume", "candles", "decimals", "is_primary", "is_traded"}
)

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "candles": CANDLE_COLUMNS,
    "series": SERIES_COLUMNS,
    "securities": SECURITY_COLUMNS,
}
SORTABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    # Sorting candles by anything but begin (within a series) sorts up to millions of rows.
    "candles": ("begin",),
    "series": SERIES_COLUMNS,
    "securities": SECURITY_COLUMNS,
}


@dataclass(frozen=True)
class CannedQuery:
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


CANNED_QUERIES: dict[str, CannedQuery] = {
    "candle_series": CannedQuery(("secid", "board", "timeframe"), ("from", "till", "after")),
    "latest_candles": CannedQuery(("timeframe",)),
    "security_list": CannedQuery(()),
}


@dataclass(frozen=True)
class GuardError(Exception):
    """A request refused before it reaches Datasette."""

    status: int
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Checked:
    """A request that passed :func:`check_request`; ``security`` is a (secid, board?) to look up."""

    secid: str | None = None
    board: str | None = None


# --- value checks --------------------------------------------------------------------------------


def check_secid(value: str, name: str = "secid") -> str:
    try:
        return normalize_secid(value)
    except InvalidSecurityKeyError:
        raise GuardError(
            400, f"invalid {name} {value!r}: expected 1-36 letters, digits, '_' or '-' (e.g. SBER)"
        ) from None


def check_board(value: str, name: str = "board") -> str:
    try:
        board = normalize_board(value)
    except InvalidSecurityKeyError:
        raise GuardError(
            400, f"invalid {name} {value!r}: expected 2-16 upper-case letters, digits or '_' (e.g. TQBR)"
        ) from None
    if board != value:
        raise GuardError(400, f"invalid {name} {value!r}: boards are upper-case, e.g. {board}")
    return board


def check_timeframe(value: str, name: str = "timeframe") -> str:
    if value not in TIMEFRAMES:
        raise GuardError(400, f"invalid {name} {value!r}: expected one of {', '.join(TIMEFRAMES)}")
    return value


def _real_moment(prefix: str) -> bool:
    """Whether a timestamp prefix names a real date and time (2024-02-30 and 25:00 do not)."""
    template = "2000-01-01 00:00:00"
    try:
        dt.datetime.strptime(prefix + template[len(prefix) :], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return False
    return True


def check_timestamp(value: str, name: str) -> str:
    """A timestamp prefix that compares correctly, as text, with ``YYYY-MM-DD HH:MM:SS``."""
    if not _TIMESTAMP_RE.match(value) or not _real_moment(value):
        hint = " (use a space, not 'T')" if "T" in value else ""
        raise GuardError(
            400,
            f"invalid {name} {value!r}: expected YYYY-MM-DD or 'YYYY-MM-DD HH:MM:SS' Moscow time{hint}",
        )
    return value


def check_date_or_datetime(value: str, name: str) -> str:
    if not _DATETIME_RE.match(value) or not _real_moment(value):
        hint = " (use a space, not 'T')" if "T" in value else ""
        raise GuardError(400, f"invalid {name} {value!r}: expected YYYY-MM-DD or 'YYYY-MM-DD HH:MM:SS'{hint}")
    return value


def check_number(value: str, name: str) -> str:
    if not _NUMBER_RE.match(value):
        raise GuardError(400, f"invalid {name} {value!r}: expected a number")
    return value


def _split_in(value: str, name: str) -> list[str]:
    if value.startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            raise GuardError(400, f"invalid {name}: {value!r} is not a JSON list") from None
        if not isinstance(items, list) or not all(isinstance(item, str | int | float) for item in items):
            raise GuardError(400, f"invalid {name}: expected a JSON list of strings or numbers")
        return [str(item) for item in items]
    return [item.strip() for item in value.split(",")]


def _check_column_value(column: str, op: str, value: str, key: str) -> None:
    if op in _NO_ARGUMENT:
        return
    if op in ("in", "notin"):
        values = _split_in(value, key)
    elif op in _COMPARISONS:
        values = [value]
    elif op == "date":
        if column not in TIMESTAMP_COLUMNS | DATE_COLUMNS or not _DATE_RE.match(value):
            raise GuardError(400, f"invalid {key}={value!r}: __date needs a date column and YYYY-MM-DD")
        return
    else:  # contains / startswith / endswith: free text, bound as a parameter
        return
    for item in values:
        if column == "secid":
            check_secid(item, key)
        elif column == "board":
            check_board(item, key)
        elif column == "timeframe":
            check_timeframe(item, key)
        elif column in TIMESTAMP_COLUMNS or column in DATE_COLUMNS:
            check_timestamp(item, key)
        elif column in NUMERIC_COLUMNS:
            check_number(item, key)


PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "candles": ("secid", "board", "timeframe", "begin"),
    "series": ("secid", "board", "timeframe"),
    "securities": ("secid", "board"),
}


def _check_next(table: str, token: str, sorted_: bool) -> None:
    """A ``_next`` token is the previous page's last primary key (after its sort value, if sorted).

    Datasette 0.65 answers a malformed token with the FIRST page (or a 400 quoting SQLite's
    error), which a paging client would loop on; refuse it instead.
    """
    pks = PRIMARY_KEYS[table]
    parts = [tilde_decode(part) for part in token.split(",")]
    if len(parts) != len(pks) + (1 if sorted_ else 0) or not all(parts[-len(pks) :]):
        raise GuardError(
            400, "invalid _next token: pass on the next_url (or Link header) of the previous page"
        )
    values = dict(zip(pks, parts[-len(pks) :], strict=True))
    try:
        check_secid(values["secid"])
        check_board(values["board"])
        if "timeframe" in values:
            check_timeframe(values["timeframe"])
        if "begin" in values:
            check_timestamp(values["begin"], "begin")
    except GuardError:
        raise GuardError(
            400, "invalid _next token: pass on the next_url (or Link header) of the previous page"
        ) from None


# --- request checks ------------------------------------------------------------------------------


def _path_target(path: str) -> tuple[str, str] | None:
    """``/publication/<name>[.json|.csv]`` -> (name, format); other paths are not checked."""
    prefix = f"/{DATABASE}/"
    if not path.startswith(prefix):
        return None
    rest = unquote(path[len(prefix) :])
    if "/" in rest:
        return None  # a row page (/publication/candles/<pk>) or deeper: Datasette handles it
    name, dot, fmt = rest.rpartition(".")
    if not dot:
        return rest, "html"
    return name, fmt


def check_table_args(table: str, args: list[tuple[str, str]]) -> Checked:
    """Validate the filters and sort of a table view; returns the exact secid/board filters."""
    columns = TABLE_COLUMNS[table]
    secid = board = None
    for key, value in args:
        if key in ("_sort", "_sort_desc"):
            if value not in SORTABLE_COLUMNS[table]:
                raise GuardError(
                    400,
                    f"cannot sort {table} by {value!r}: sortable columns are "
                    f"{', '.join(SORTABLE_COLUMNS[table])}",
                )
            continue
        if key == "_next":
            _check_next(table, value, sorted_=any(k in ("_sort", "_sort_desc") for k, _ in args))
            continue
        if key.startswith("_"):
            continue  # Datasette's own options (_size, _shape, ...) are checked by Datasette
        column, _, op = key.rpartition("__") if "__" in key else (key, "", "exact")
        if column not in columns:
            raise GuardError(
                400, f"unknown column {column!r} in filter {key!r}: {table} has {', '.join(columns)}"
            )
        if op not in ALLOWED_OPERATORS:
            raise GuardError(
                400, f"unknown filter operator {op!r} in {key!r}: use one of {', '.join(ALLOWED_OPERATORS)}"
            )
        _check_column_value(column, op, value, key)
        if op == "exact" and column == "secid":
            secid = value
        if op == "exact" and column == "board":
            board = value
    sorts = [key for key, _ in args if key in ("_sort", "_sort_desc")]
    if len(sorts) > 1:
        raise GuardError(400, "use one of _sort or _sort_desc, once")
    if sorts and table == "candles" and not any(key == "timeframe" and value for key, value in args):
        # With a timeframe the index (timeframe, begin) gives the order; without, it is a full sort
        # of every candle (~1 s for ten million).
        raise GuardError(400, "sorting candles by begin needs a timeframe filter, e.g. &timeframe=1d")
    return Checked(secid, board) if table in ("candles", "series") else Checked()


def check_canned_args(name: str, args: list[tuple[str, str]]) -> Checked:
    """Validate the named parameters of a canned query."""
    query = CANNED_QUERIES[name]
    allowed = (*query.required, *query.optional)
    given: dict[str, str] = {}
    for key, value in args:
        if key.startswith("_"):
            continue
        if key not in allowed:
            expected = ", ".join(allowed) if allowed else "no parameters"
            raise GuardError(400, f"unknown parameter {key!r} for {name}: it takes {expected}")
        if key in given:
            raise GuardError(400, f"parameter {key!r} given twice")
        given[key] = value
    missing = [key for key in query.required if not given.get(key)]
    if missing:
        raise GuardError(400, f"{name} needs {', '.join(missing)} (e.g. ?secid=SBER&board=TQBR&timeframe=1d)")
    secid = board = None
    for key, value in given.items():
        if key == "secid":
            secid = check_secid(value)
            if secid != value:
                raise GuardError(400, f"invalid secid {value!r}: no surrounding spaces")
        elif key == "board":
            board = check_board(value)
        elif key == "timeframe":
            check_timeframe(value)
        elif key in ("from", "till", "after") and value:
            check_date_or_datetime(value, key)
    return Checked(secid, board)


def check_request(method: str, path: str, query_string: str) -> Checked | None:
    """Check one request; ``None`` when the path is not one this module guards.

    Raises :class:`GuardError` for a request that must be refused.
    """
    target = _path_target(path)
    if target is None:
        return None
    name, fmt = target
    if name not in TABLE_COLUMNS and name not in CANNED_QUERIES:
        return None
    if fmt not in ("html", "json", "csv"):
        return None
    if method not in ("GET", "HEAD"):
        raise GuardError(405, f"{method} is not allowed: the publication is read-only")
    try:
        args = parse_qsl(query_string, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise GuardError(400, "malformed query string") from None
    if name in TABLE_COLUMNS:
        return check_table_args(name, args)
    return check_canned_args(name, args)


# --- responses ---------------------------------------------------------------------------------


def error_body(path: str, status: int, message: str, title: str = "Invalid request") -> tuple[bytes, str]:
    """The body and content type of an error, in the format the URL asked for (Datasette's JSON shape)."""
    if path.endswith(".json"):
        payload = {"ok": False, "error": message, "status": status, "title": title}
        return json.dumps(payload, ensure_ascii=False).encode(), "application/json; charset=utf-8"
    if path.endswith(".csv"):
        return f"error: {message}\n".encode(), "text/plain; charset=utf-8"
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Error {status}</title>"
        "<link rel='stylesheet' href='/-/static/app.css'></head><body><div class='page-header'>"
        f"<h1>Error {status}</h1></div><section class='content'><p>{html.escape(message)}</p>"
        "<p><a href='/'>Back to the publication</a></p></section></body></html>"
    )
    return page.encode(), "text/html; charset=utf-8"


async def send_error(send: Send, path: str, status: int, message: str, cors: bool = False) -> None:
    body, content_type = error_body(path, status, message)
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    if cors:
        headers.append((b"access-control-allow-origin", b"*"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


SecurityLookup = Callable[[str, str | None], Awaitable[bool]]
FastAnswer = Callable[[Scope, Receive, Send, Checked], Awaitable[bool]]
"""Answers a request that passed the checks by itself (True), security lookup included, or not."""


def unknown_security(checked: Checked) -> GuardError:
    where = f"{checked.secid}.{checked.board}" if checked.board else checked.secid
    return GuardError(404, f"unknown security {where}: the publication holds no such security")


class GuardMiddleware:
    """ASGI middleware: refuse what :func:`check_request` refuses, 404 for unknown securities.

    ``fast_answer`` (optional) is offered every request that passes the checks before the security
    lookup; when it answers, it has made that lookup itself (raising :func:`unknown_security`).
    """

    def __init__(
        self,
        app: ASGIApp,
        security_exists: SecurityLookup,
        cors: bool = False,
        fast_answer: FastAnswer | None = None,
    ) -> None:
        self.app = app
        self.security_exists = security_exists
        self.cors = cors
        self.fast_answer = fast_answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        query_string = scope.get("query_string", b"").decode("latin-1")
        try:
            checked = check_request(scope.get("method", "GET"), path, query_string)
            if (
                checked is not None
                and self.fast_answer is not None
                and await self.fast_answer(scope, receive, send, checked)
            ):
                return
            if (
                checked is not None
                and checked.secid is not None
                and not await self.security_exists(checked.secid, checked.board)
            ):
                raise unknown_security(checked)
        except GuardError as exc:
            await send_error(send, path, exc.status, exc.message, self.cors)
            return
        await self.app(scope, receive, send)
