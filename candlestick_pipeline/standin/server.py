"""``ISSStandIn``: a local HTTP server that answers like MOEX ISS (iss.moex.com), for offline tests.

Endpoints (see ``/work/shared/iss-samples/ISS-FACTS.md`` for the real behaviour they copy):

* ``GET /iss/securities/{secid}.json`` - blocks ``description`` and ``boards``. The secid is looked
  up exactly first, then case-insensitively (``sber`` finds SBER); the ``boards.secid`` column
  gives the canonical spelling. An unknown secid is HTTP 200 with both blocks empty.
* ``GET /iss/engines/{e}/markets/{m}/boards/{b}/securities/{s}/candles.json`` (board form) and
  ``.../markets/{m}/securities/{s}/candles.json`` (market form = the primary board in that market).
  Engine, market and board compare case-insensitively; the **secid of candle endpoints is
  case-sensitive** (exact match only: futures such as ``SiZ5`` are, and a pipeline should use the
  spelling that ``securities/{secid}.json`` returned). Parameters ``from``/``till`` (``YYYY-MM-DD``,
  inclusive on the bar's begin date; ``YYYY-MM-DD HH:MM:SS`` or ``...THH:MM:SS``, inclusive on the
  datetime), ``interval`` (default 10), ``start`` (row offset), ``iss.reverse``, ``iss.meta``,
  ``iss.only``, ``iss.json=extended``, ``candles.columns``. 500 rows a page, no cursor block.
  Unknown combinations and an invalid interval give 200 with ``data: []``.
  **Choice, real ISS unconfirmed:** an unparseable ``from``/``till``/``start`` is HTTP 400 with the
  JSON body ``{"error": "..."}``.
* ``GET .../candleborders.json`` - board form: ``borders`` (begin, end, interval) and ``durations``;
  market form: ``borders`` with ``board_group_id``.
* Anything else under ``/iss/`` (including ``.xml``/``.csv`` and the boardgroup form) is a 404
  with nginx's HTML page.

Control endpoints (never subject to faults or latency, not counted as ISS requests):
``GET /_standin/stats``, ``POST /_standin/reset``, ``GET|POST /_standin/clock`` ``{"now": ...}``,
``GET|POST /_standin/faults`` (FaultConfig fields), ``POST /_standin/revision`` ``{"revision": n}``,
``POST /_standin/break`` ``{"secid", "board", "begin"}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email.utils
import json
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

from candlestick_pipeline.standin.market import (
    INTERVALS,
    Bar,
    BoardListing,
    SecuritySpec,
    SyntheticMarket,
)

MOSCOW = ZoneInfo("Europe/Moscow")
PAGE_SIZE = 500
FAULT_KINDS: tuple[str, ...] = ("5xx", "429", "html_502", "error_200", "truncated", "reset", "slow")
"""Fault kinds of ``fail_next`` and of the ``p_*`` draws, in the order the draws are tried."""

_ISS_ERROR_TEXT = "Error while acquiring data."

# --------------------------------------------------------------------------------------------------
# Fault configuration and statistics


@dataclass
class FaultConfig:
    """What goes wrong, and how often. All off by default; mutate it or use ``set_faults``.

    ``only_paths``: when non-empty, faults (including ``down``, latency and ``fail_next``) apply
    only to requests whose endpoint name (``securities``, ``candles``, ``candleborders``, ``other``)
    equals an entry or whose path contains an entry. ``delay_minutes`` is ISS's anonymous data delay
    (15 on the real service); it is not a fault, but lives here so it can be switched over HTTP.
    """

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    p_5xx: float = 0.0
    p_429: float = 0.0
    retry_after_seconds: float = 1.0
    p_html_502: float = 0.0
    p_error_200: float = 0.0
    p_truncated: float = 0.0
    p_reset: float = 0.0
    p_slow: float = 0.0
    slow_seconds: float = 5.0
    down: bool = False
    down_mode: str = "503"
    fail_next: list[str] = field(default_factory=list)
    only_paths: list[str] = field(default_factory=list)
    delay_minutes: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` on a setting that makes no sense."""
        for name in ("p_5xx", "p_429", "p_html_502", "p_error_200", "p_truncated", "p_reset", "p_slow"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} is not a probability")
        for name in (
            "latency_ms",
            "latency_jitter_ms",
            "retry_after_seconds",
            "slow_seconds",
            "delay_minutes",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.down_mode not in ("503", "refuse"):
            raise ValueError(f"down_mode={self.down_mode!r}: expected '503' or 'refuse'")
        unknown = [kind for kind in self.fail_next if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {list(FAULT_KINDS)}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FAULT_FIELD_TYPES: dict[str, type] = {
    f.name: (list if f.name in ("fail_next", "only_paths") else type(f.default))
    for f in dataclasses.fields(FaultConfig)
}


def _coerce_fault_value(name: str, value: Any) -> Any:
    """A FaultConfig field value from Python or JSON input; ``ValueError`` on a wrong type."""
    kind = _FAULT_FIELD_TYPES.get(name)
    if kind is None:
        raise ValueError(f"unknown fault setting {name!r}; known: {sorted(_FAULT_FIELD_TYPES)}")
    if kind is list:
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ValueError(f"{name} must be a list of strings")
        return [str(item) for item in value]
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if kind is str:
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    return int(value) if kind is int else float(value)


class StandInStats:
    """Thread-safe request counters of one stand-in (ISS requests only; control calls not counted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total_requests = 0
        self.by_endpoint: dict[str, int] = {}
        self.candle_requests_log: list[dict[str, Any]] = []
        self.faults_injected: dict[str, int] = {}
        self.internal_errors = 0
        self.in_flight = 0
        self.max_in_flight = 0
        # Request-seconds in flight, and the window from the first request to the last answer: their
        # ratio is how many requests ISS had in flight on average (benchmarks compare it with C).
        self.in_flight_seconds = 0.0
        self._first_request_at: float | None = None
        self._last_change_at = 0.0
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.total_requests = 0
            self.by_endpoint = {"securities": 0, "candles": 0, "candleborders": 0, "other": 0}
            self.candle_requests_log = []
            self.faults_injected = {}
            self.internal_errors = 0
            self.max_in_flight = self.in_flight
            self.in_flight_seconds = 0.0
            self._first_request_at = None
            self._last_change_at = time.monotonic()  # requests in flight now count from now on

    def _advance(self) -> float:
        """Add the in-flight time up to now (under the lock); returns now."""
        now = time.monotonic()
        self.in_flight_seconds += self.in_flight * (now - self._last_change_at)
        self._last_change_at = now
        return now

    def record_request(self, endpoint: str, candle_params: dict[str, Any] | None) -> None:
        with self._lock:
            self.total_requests += 1
            self.by_endpoint[endpoint] = self.by_endpoint.get(endpoint, 0) + 1
            if candle_params is not None:
                self.candle_requests_log.append(candle_params)

    @contextlib.contextmanager
    def serving(self) -> Iterator[Callable[[], None]]:
        """Count an ISS request as in flight (latency included) while it is being answered.

        Yields ``done``, called just before the body is written: from then on the client may have
        its answer and send its next request, which must not find this one still counted.
        """
        counted = True

        def done() -> None:
            nonlocal counted
            with self._lock:
                if counted:
                    self._advance()
                    self.in_flight -= 1
                    counted = False

        with self._lock:
            now = self._advance()
            if self._first_request_at is None:
                self._first_request_at = now
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield done
        finally:
            done()

    def record_fault(self, kind: str) -> None:
        with self._lock:
            self.faults_injected[kind] = self.faults_injected.get(kind, 0) + 1

    def record_internal_error(self) -> None:
        with self._lock:
            self.internal_errors += 1

    def count_candle_requests(
        self, secid: str | None = None, board: str | None = None, interval: int | None = None
    ) -> int:
        with self._lock:
            return sum(
                1
                for entry in self.candle_requests_log
                if (secid is None or entry["secid"] == secid)
                and (board is None or entry["board"] == board)
                and (interval is None or entry["interval"] == interval)
            )

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of every counter."""
        with self._lock:
            return {
                "total_requests": self.total_requests,
                "by_endpoint": dict(self.by_endpoint),
                "candle_requests": len(self.candle_requests_log),
                "candle_requests_log": [dict(entry) for entry in self.candle_requests_log],
                "faults_injected": dict(self.faults_injected),
                "internal_errors": self.internal_errors,
                "max_in_flight": self.max_in_flight,
                "in_flight_seconds": self.in_flight_seconds,
                "busy_window_seconds": (
                    self._last_change_at - self._first_request_at if self._first_request_at else 0.0
                ),
            }


# --------------------------------------------------------------------------------------------------
# ISS response blocks

_CANDLE_METADATA: dict[str, Any] = {
    "open": {"type": "double"},
    "close": {"type": "double"},
    "high": {"type": "double"},
    "low": {"type": "double"},
    "value": {"type": "double"},
    "volume": {"type": "double"},
    "begin": {"type": "datetime", "bytes": 19, "max_size": 0},
    "end": {"type": "datetime", "bytes": 19, "max_size": 0},
}
_DESCRIPTION_METADATA: dict[str, Any] = {
    "name": {"type": "string", "bytes": 189, "max_size": 0},
    "title": {"type": "string", "bytes": 765, "max_size": 0},
    "value": {"type": "string", "bytes": 765, "max_size": 0},
    "type": {"type": "string", "bytes": 21, "max_size": 0},
    "sort_order": {"type": "int64"},
    "is_hidden": {"type": "int64"},
    "precision": {"type": "int64"},
}
_BOARDS_METADATA: dict[str, Any] = {
    "secid": {"type": "string", "bytes": 51, "max_size": 0},
    "boardid": {"type": "string", "bytes": 12, "max_size": 0},
    "title": {"type": "string", "bytes": 381, "max_size": 0},
    "board_group_id": {"type": "int32"},
    "market_id": {"type": "int32"},
    "market": {"type": "string", "bytes": 45, "max_size": 0},
    "engine_id": {"type": "int32"},
    "engine": {"type": "string", "bytes": 45, "max_size": 0},
    "is_traded": {"type": "int32"},
    "decimals": {"type": "int32"},
    "history_from": {"type": "date", "bytes": 10, "max_size": 0},
    "history_till": {"type": "date", "bytes": 10, "max_size": 0},
    "listed_from": {"type": "date", "bytes": 10, "max_size": 0},
    "listed_till": {"type": "date", "bytes": 10, "max_size": 0},
    "is_primary": {"type": "int32"},
    "currencyid": {"type": "string", "bytes": 9, "max_size": 0},
    "unit": {"type": "string", "bytes": 3, "max_size": 0},
}
_BORDERS_METADATA: dict[str, Any] = {
    "begin": {"type": "datetime", "bytes": 19, "max_size": 0},
    "end": {"type": "datetime", "bytes": 19, "max_size": 0},
    "interval": {"type": "int32"},
}
_MARKET_BORDERS_METADATA: dict[str, Any] = {**_BORDERS_METADATA, "board_group_id": {"type": "int32"}}
_DURATIONS_METADATA: dict[str, Any] = {
    "interval": {"type": "int32"},
    "duration": {"type": "int32"},
    "days": {"type": "int32"},
    "title": {"type": "string", "bytes": 765, "max_size": 0},
    "hint": {"type": "string", "bytes": 765, "max_size": 0},
}
_DURATIONS_ROWS: list[list[Any]] = [
    [1, 60, None, "минута", "1м"],
    [10, 600, None, "10 минут", "10м"],
    [60, 3600, None, "час", "1ч"],
    [24, 86400, None, "день", "1д"],
    [7, 604800, None, "неделя", "1н"],
    [31, 2678400, None, "месяц", "1М"],
    [4, 8035200, None, "квартал", "1К"],
]


@dataclass(frozen=True)
class _EncodedRows:
    """Rows already encoded as JSON arrays of every column (``_encode_candle``), for a compact
    document of all the columns: rendered by joining them, not by building and encoding each row."""

    texts: list[str]


@dataclass
class _Block:
    """One ISS table: ``{"metadata": ..., "columns": [...], "data": [[...], ...]}``."""

    name: str
    metadata: dict[str, Any]
    rows: list[list[Any]] | _EncodedRows

    @property
    def columns(self) -> list[str]:
        return list(self.metadata)


def _num(value: float) -> float | int:
    """An integral float as a JSON int, like ISS writes ``231`` rather than ``231.0``."""
    return int(value) if value.is_integer() else value


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(" ", "seconds")


def _candle_row(bar: Bar) -> list[Any]:
    return [
        _num(bar.open),
        _num(bar.close),
        _num(bar.high),
        _num(bar.low),
        _num(bar.value),
        bar.volume,
        _iso(bar.begin),
        _iso(bar.end),
    ]


def _encode_candle(bar: Bar) -> str:
    """A candle row as ``_render`` writes it inside a document (same separators)."""
    return json.dumps(_candle_row(bar), ensure_ascii=False)


def _splices_encoded(params: dict[str, str], block_name: str) -> bool:
    """Whether ``_render`` writes ``block_name`` compact with all its columns, so that rows
    encoded in advance can be joined into it as they are."""
    extended = params.get("iss.json", "compact").lower() == "extended"
    return not extended and not params.get(f"{block_name}.columns")


def _placeholder(index: int) -> str:
    # NUL cannot occur in ISS data and json.dumps always escapes it: the text is unambiguous.
    return f"\x00encoded rows {index}\x00"


def _render(blocks: Sequence[_Block], params: dict[str, str]) -> bytes:
    """Apply ``iss.only``, ``{block}.columns``, ``iss.meta`` and ``iss.json`` and encode as UTF-8 JSON."""
    only = params.get("iss.only")
    if only:
        wanted = {name.strip() for name in only.split(",")}
        blocks = [block for block in blocks if block.name in wanted]
    meta = params.get("iss.meta", "on").lower() != "off"
    extended = params.get("iss.json", "compact").lower() == "extended"
    rendered: dict[str, Any] = {}
    encoded: list[_EncodedRows] = []
    for block in blocks:
        columns = block.columns
        rows = block.rows
        if isinstance(rows, _EncodedRows):
            if _splices_encoded(params, block.name):
                body: dict[str, Any] = {"metadata": block.metadata} if meta else {}
                body["columns"] = columns
                body["data"] = [_placeholder(len(encoded))]
                encoded.append(rows)
                rendered[block.name] = body
                continue
            rows = [json.loads(text) for text in rows.texts]
        requested = params.get(f"{block.name}.columns")
        if requested:
            # ISS-FACTS: the order of a column subset is unconfirmed; we keep the native order.
            names = {name.strip().lower() for name in requested.split(",")}
            keep = [i for i, column in enumerate(columns) if column in names]
            columns = [columns[i] for i in keep]
            rows = [[row[i] for i in keep] for row in rows]
        if extended:
            rendered[block.name] = [dict(zip(columns, row, strict=True)) for row in rows]
            continue
        body = {}
        if meta:
            body["metadata"] = {column: block.metadata[column] for column in columns}
        body["columns"] = columns
        body["data"] = rows
        rendered[block.name] = body
    document: Any = [{"charsetinfo": {"name": "utf-8"}}, rendered] if extended else rendered
    text = json.dumps(document, ensure_ascii=False)
    for index, rows in enumerate(encoded):
        placeholder = json.dumps([_placeholder(index)], ensure_ascii=False)
        text = text.replace(placeholder, "[" + ", ".join(rows.texts) + "]", 1)
    return text.encode("utf-8")


# --------------------------------------------------------------------------------------------------
# Request routing and parameter parsing


class _BadRequestError(ValueError):
    """A request parameter the stand-in refuses with HTTP 400."""


@dataclass(frozen=True)
class _Route:
    endpoint: str  # "securities", "candles", "candleborders", "other", "control"
    secid: str = ""
    engine: str = ""
    market: str = ""
    board: str | None = None  # None: the market form

    @property
    def block_name(self) -> str:
        return {"securities": "description", "candleborders": "borders"}.get(self.endpoint, "candles")


_SECURITY_RE = re.compile(r"^/iss/securities/(?P<secid>[^/]+)\.json$")
_CANDLES_RE = re.compile(
    r"^/iss/engines/(?P<engine>[^/]+)/markets/(?P<market>[^/]+)(?:/boards/(?P<board>[^/]+))?"
    r"/securities/(?P<secid>[^/]+)/(?P<what>candles|candleborders)\.json$"
)


def _route(path: str) -> _Route:
    if path.startswith("/_standin/"):
        return _Route("control")
    match = _SECURITY_RE.match(path)
    if match:
        return _Route("securities", secid=unquote(match["secid"]))
    match = _CANDLES_RE.match(path)
    if match:
        board = unquote(match["board"]) if match["board"] else None
        return _Route(
            match["what"],
            secid=unquote(match["secid"]),
            engine=unquote(match["engine"]),
            market=unquote(match["market"]),
            board=board,
        )
    return _Route("other")


def _query(raw: str) -> dict[str, str]:
    """Query parameters, last value wins (parameter names compare case-insensitively, as ISS's)."""
    return {key.lower(): values[-1] for key, values in parse_qs(raw, keep_blank_values=True).items()}


_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M")


def parse_iss_moment(text: str) -> tuple[dt.datetime, bool]:
    """``YYYY-MM-DD`` or a date with a time; returns (moment, has_time). ``ValueError`` otherwise."""
    text = text.strip()
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d"), False
    except ValueError:
        pass
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt), True
        except ValueError:
            continue
    raise ValueError(f"{text!r} is neither YYYY-MM-DD nor YYYY-MM-DD HH:MM:SS")


def _range(params: dict[str, str]) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) on the bar's begin from ``from``/``till``; both ends inclusive as ISS has them."""
    start, end = dt.datetime(1900, 1, 1), dt.datetime(2038, 1, 1)
    raw_from, raw_till = params.get("from", ""), params.get("till", "")
    try:
        if raw_from.strip():
            start = parse_iss_moment(raw_from)[0]
        if raw_till.strip():
            till, has_time = parse_iss_moment(raw_till)
            end = till + (dt.timedelta(seconds=1) if has_time else dt.timedelta(days=1))
    except ValueError as exc:
        raise _BadRequestError(f"from/till: {exc}") from None
    return start, end


def _interval(params: dict[str, str]) -> int | None:
    """The interval code; 10 when omitted (ISS's default); None when it is not one ISS has."""
    raw = params.get("interval", "").strip()
    if not raw:
        return 10
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value in INTERVALS else None


def _start(params: dict[str, str]) -> int:
    raw = params.get("start", "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequestError(f"start={raw!r} is not a whole number") from None
    if value < 0:
        raise _BadRequestError(f"start={value} is negative")
    return value


def _truthy(raw: str | None) -> bool:
    return (raw or "").strip().lower() in ("1", "true", "yes", "on")


def _moscow_naive(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is not None:
        return moment.astimezone(MOSCOW).replace(tzinfo=None)
    return moment


# --------------------------------------------------------------------------------------------------
# HTML pages (nginx style)


def _nginx_page(status: int, reason: str) -> bytes:
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
}


# --------------------------------------------------------------------------------------------------
# The server


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Daemon handler threads (a keep-alive client, a "slow" fault) must not block stop().
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: ISSStandIn) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # a client that went away (often on purpose: timeouts, injected resets)
        self.owner.stats.record_internal_error()
        super().handle_error(request, client_address)


def _nothing() -> None:
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    # Idle keep-alive connections are dropped after this, so threads do not pile up.
    timeout = 120

    # ---- plumbing ------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle + delayed ACK cost 40 ms a request.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def version_string(self) -> str:
        return "nginx"

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header follows the stand-in's clock, as a real server's follows its own: the
        # pipeline reads it to decide whether a period had closed when its candles were served.
        if timestamp is None:
            timestamp = self.server.owner.now.replace(tzinfo=MOSCOW).timestamp()
        return email.utils.formatdate(timestamp, usegmt=True)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.owner.verbose:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
        *,
        declared_length: int | None = None,
    ) -> None:
        self.send_response(status, _REASONS.get(status))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if declared_length is None else declared_length))
        self.send_header("Cache-Control", "max-age=5")
        self.send_header("X-MicexCacheTime", "5")
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self._served()
        self.wfile.write(body)

    def _send_json(self, status: int, document: Any) -> None:
        self._send(status, json.dumps(document, ensure_ascii=False).encode("utf-8"))

    def _send_html(self, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        self._send(status, _nginx_page(status, _REASONS.get(status, "Error")), "text/html", headers)

    def _reset_connection(self) -> None:
        """Close with SO_LINGER 0, so the client sees a TCP RST (connection reset by peer)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # the makefile holds a reference; the socket only closes without it
            self.connection.close()
        except OSError:
            pass

    # ---- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        owner = self.server.owner
        self._served: Callable[[], None] = _nothing  # replaced while an ISS request is counted
        body = self._read_body() if method == "POST" else b""
        url = urlsplit(self.path)
        route = _route(url.path)
        try:
            if route.endpoint == "control":
                self._control(method, url.path, body)
                return
            params = _query(url.query)
            owner._record(route, params)
            if method != "GET":
                self._send_html(404)
                return
            with owner.stats.serving() as self._served:
                fault = owner._draw_fault(route, url.path)
                owner._sleep_latency(route, url.path)
                if fault is not None and self._inject(fault, route, params):
                    return
                self._serve_iss(route, params)
        except _BadRequestError as exc:
            self._send_json(400, {"error": str(exc)})
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # a bug: answer, count, and keep the thread alive
            owner.stats.record_internal_error()
            sys.stderr.write(f"ISS stand-in internal error on {self.path}: {exc!r}\n")
            self._send_json(500, {"error": f"stand-in internal error: {exc!r}"})

    def _serve_iss(self, route: _Route, params: dict[str, str]) -> None:
        owner = self.server.owner
        if route.endpoint == "securities":
            blocks = owner._securities_blocks(route.secid)
        elif route.endpoint == "candles":
            blocks = [owner._candles_block(route, params)]
        elif route.endpoint == "candleborders":
            blocks = owner._borders_blocks(route)
        else:
            self._send_html(404)
            return
        self._send(200, _render(blocks, params))

    # ---- faults --------------------------------------------------------------------------------

    def _inject(self, fault: str, route: _Route, params: dict[str, str]) -> bool:
        """Act out ``fault``; True when the response is done (False: answer normally after it)."""
        owner = self.server.owner
        if fault == "down":
            self._send_html(503)
        elif fault in ("refuse", "reset"):
            self._reset_connection()
        elif fault == "5xx":
            status = 503 if owner._fault_choice() < 0.5 else 500
            if owner._fault_choice() < 0.5:
                self._send_html(status)
            else:
                self._send_json(status, {"error": _REASONS[status]})
        elif fault == "429":
            retry = owner.faults.retry_after_seconds
            retry_text = str(int(retry)) if float(retry).is_integer() else f"{retry:g}"
            self._send_html(429, [("Retry-After", retry_text)])
        elif fault == "html_502":
            self._send_html(502)
        elif fault == "error_200":
            self._send_json(200, {route.block_name: {"error": _ISS_ERROR_TEXT}})
        elif fault == "truncated":
            self._send_truncated(route, params)
        elif fault == "slow":
            owner._sleep(owner.faults.slow_seconds)
            return False
        return True

    def _send_truncated(self, route: _Route, params: dict[str, str]) -> None:
        """Full headers (the real Content-Length), then half the body, then the connection closes."""
        owner = self.server.owner
        if route.endpoint == "securities":
            blocks = owner._securities_blocks(route.secid)
        elif route.endpoint == "candleborders":
            blocks = owner._borders_blocks(route)
        elif route.endpoint == "candles":
            blocks = [owner._candles_block(route, params)]
        else:
            blocks = []
        body = _render(blocks, params) if blocks else _nginx_page(404, "Not Found")
        cut = max(1, len(body) // 2)
        self.close_connection = True
        self._send(200, body[:cut], declared_length=len(body))
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # ---- control endpoints ---------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> None:
        owner = self.server.owner
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
            self._send_json(400, {"error": f"body is not JSON: {exc}"})
            return
        if not isinstance(payload, dict):
            self._send_json(400, {"error": "body must be a JSON object"})
            return
        name = path.removeprefix("/_standin/").strip("/")
        try:
            if name == "stats" and method == "GET":
                self._send_json(200, owner.stats.snapshot())
            elif name == "reset" and method == "POST":
                owner.reset_stats()
                self._send_json(200, {"ok": True})
            elif name == "clock":
                if method == "POST":
                    raw = payload.get("now")
                    owner.set_now(None if raw is None else parse_iss_moment(str(raw))[0])
                fixed = owner.fixed_now
                self._send_json(200, {"now": _iso(owner.now), "fixed": fixed is not None})
            elif name == "faults":
                if method == "POST":
                    owner.set_faults(**payload)
                self._send_json(200, owner.faults.to_json())
            elif name == "revision" and method == "POST":
                owner.set_revision(int(payload["revision"]))
                self._send_json(200, {"revision": owner.market.revision})
            elif name == "break" and method == "POST":
                owner.break_candle(
                    str(payload["secid"]), str(payload["board"]), parse_iss_moment(str(payload["begin"]))[0]
                )
                self._send_json(200, {"ok": True})
            else:
                self._send_json(404, {"error": f"no control endpoint {method} {path}"})
        except (KeyError, TypeError, ValueError) as exc:
            self._send_json(400, {"error": f"{type(exc).__name__}: {exc}"})


class ISSStandIn:
    """A MOEX ISS look-alike on 127.0.0.1 backed by :class:`SyntheticMarket`, with fault injection.

    ``now`` is naive Moscow wall-clock time (None: the real clock). Start it with :meth:`start`
    (port 0 picks a free port) or use it as a context manager; ``base_url`` has no trailing slash.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        now: dt.datetime | None = None,
        latency_ms: float = 0.0,
        seed: int = 0,
        delay_minutes: float = 0.0,
        verbose: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.verbose = verbose
        self.market = SyntheticMarket(seed)
        self.stats = StandInStats()
        self.faults = FaultConfig(latency_ms=latency_ms, delay_minutes=delay_minutes, seed=seed)
        self.faults.validate()
        self._fixed_now = _moscow_naive(now) if now is not None else None
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._stop_event = threading.Event()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the ISS stand-in is already running")
        self._stop_event.clear()
        server = _HTTPServer((self.host, self.port), self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"iss-standin-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and drop open connections (sleeping requests wake up and finish)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stop_event.set()
        server.shutdown()
        server.server_close()
        with server.connections_lock:
            connections = list(server.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ISSStandIn:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the ISS stand-in is not running; call start() first")
        return f"http://{self.host}:{self.port}"

    # ---- clock, data, faults -------------------------------------------------------------------

    @property
    def now(self) -> dt.datetime:
        """The stand-in's current Moscow wall-clock time (naive)."""
        fixed = self._fixed_now
        if fixed is not None:
            return fixed
        return dt.datetime.now(MOSCOW).replace(tzinfo=None, microsecond=0)

    @property
    def fixed_now(self) -> dt.datetime | None:
        return self._fixed_now

    def set_now(self, now: dt.datetime | None) -> None:
        """Freeze the clock at ``now`` (naive Moscow time; aware times are converted); None: real clock."""
        self._fixed_now = _moscow_naive(now) if now is not None else None

    def set_revision(self, revision: int) -> None:
        """Change every price deterministically (ISS corrections / split rescale); 0 = original."""
        self.market.set_revision(revision)

    def break_candle(self, secid: str, board: str, begin: dt.datetime) -> None:
        """The minute bar of ``secid`` on ``board`` at ``begin`` gets high < low."""
        self.market.break_candle(secid, board, begin)

    def set_faults(self, **kwargs: Any) -> None:
        """Change FaultConfig fields (validated, all or nothing) and reseed the fault RNG."""
        with self._lock:
            updated = dataclasses.replace(
                self.faults, **{name: _coerce_fault_value(name, value) for name, value in kwargs.items()}
            )
            updated.validate()
            for f in dataclasses.fields(FaultConfig):
                setattr(self.faults, f.name, getattr(updated, f.name))
            self._rng = random.Random(self.faults.seed)

    def reset_stats(self) -> None:
        self.stats.reset()

    def candle_requests(
        self, secid: str | None = None, board: str | None = None, interval: int | None = None
    ) -> int:
        """Candle-endpoint requests received that match the filter (faulted ones included)."""
        return self.stats.count_candle_requests(secid, board, interval)

    # ---- used by the handler -------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up when the server stops."""
        if seconds > 0:
            self._stop_event.wait(seconds)

    def _record(self, route: _Route, params: dict[str, str]) -> None:
        entry: dict[str, Any] | None = None
        if route.endpoint == "candles":
            board = route.board
            secid = route.secid
            if board is None:
                primary = self.market.primary_listing(secid, route.engine, route.market)
                board = primary.boardid if primary else None
            listing = self.market.listing(secid, board, route.engine, route.market) if board else None
            try:
                start: int | None = _start(params)
            except _BadRequestError:
                start = None
            entry = {
                "secid": secid,
                "board": listing.boardid if listing else (board.upper() if board else None),
                "engine": route.engine.lower(),
                "market": route.market.lower(),
                "interval": _interval(params),
                "from": params.get("from"),
                "till": params.get("till"),
                "start": start,
                "reverse": _truthy(params.get("iss.reverse")),
                "form": "board" if route.board is not None else "market",
            }
        self.stats.record_request(route.endpoint, entry)

    def _fault_applies(self, route: _Route, path: str) -> bool:
        only = self.faults.only_paths
        return not only or any(entry == route.endpoint or entry in path for entry in only)

    def _fault_choice(self) -> float:
        with self._lock:
            return self._rng.random()

    def _draw_fault(self, route: _Route, path: str) -> str | None:
        """The fault for this request (counted), or None."""
        faults = self.faults
        with self._lock:
            if not self._fault_applies(route, path):
                return None
            kind: str | None = None
            if faults.down:
                kind = "refuse" if faults.down_mode == "refuse" else "down"
            elif faults.fail_next:
                kind = faults.fail_next.pop(0)
            else:
                draw = self._rng.random()
                threshold = 0.0
                for name in FAULT_KINDS:
                    threshold += getattr(faults, f"p_{name}")
                    if draw < threshold:
                        kind = name
                        break
        if kind is not None:
            self.stats.record_fault(kind)
        return kind

    def _sleep_latency(self, route: _Route, path: str) -> None:
        faults = self.faults
        if not faults.latency_ms and not faults.latency_jitter_ms:
            return
        with self._lock:
            if not self._fault_applies(route, path):
                return
            jitter = self._rng.random() * faults.latency_jitter_ms
        self._sleep((faults.latency_ms + jitter) / 1000.0)

    # ---- ISS blocks ----------------------------------------------------------------------------

    def _securities_blocks(self, secid: str) -> list[_Block]:
        spec = self.market.find_security(secid)
        description = [list(row) for row in spec.description] if spec else []
        boards = [self._board_row(listing) for listing in spec.boards] if spec else []
        return [
            _Block("description", _DESCRIPTION_METADATA, description),
            _Block("boards", _BOARDS_METADATA, boards),
        ]

    def _board_row(self, listing: BoardListing) -> list[Any]:
        today = self.now.date()
        listed_till = listing.listed_till if listing.listed_till is not None else today
        is_traded = int(listed_till >= today)
        history_till = self.market.last_trading_day(listing, min(today, listed_till + dt.timedelta(days=1)))
        history_from = listing.history_from if history_till is not None else None
        return [
            listing.secid,
            listing.boardid,
            listing.title,
            listing.board_group_id,
            listing.market_id,
            listing.market,
            listing.engine_id,
            listing.engine,
            is_traded,
            listing.decimals,
            history_from.isoformat() if history_from else None,
            history_till.isoformat() if history_till else None,
            listing.listed_from.isoformat(),
            min(listed_till, today).isoformat(),
            int(listing.is_primary),
            listing.currencyid,
            listing.unit,
        ]

    def _resolve(self, route: _Route) -> BoardListing | None:
        """The listing a candle URL names; None when engine/market/board/secid do not fit together."""
        if route.board is None:
            return self.market.primary_listing(route.secid, route.engine, route.market)
        return self.market.listing(route.secid, route.board, route.engine, route.market)

    def _candles_block(self, route: _Route, params: dict[str, str]) -> _Block:
        start_row = _start(params)
        start, end = _range(params)
        interval = _interval(params)
        listing = self._resolve(route)
        if listing is None or interval is None:
            return _Block("candles", _CANDLE_METADATA, [])
        query = (listing.secid, listing.boardid, interval, start, end, self.now)
        reverse, delay = _truthy(params.get("iss.reverse")), self.faults.delay_minutes
        if _splices_encoded(params, "candles"):
            texts = self.market.page(
                *query,
                offset=start_row,
                limit=PAGE_SIZE,
                reverse=reverse,
                delay_minutes=delay,
                encode=_encode_candle,
            )
            return _Block("candles", _CANDLE_METADATA, _EncodedRows(texts))
        bars = self.market.page(
            *query, offset=start_row, limit=PAGE_SIZE, reverse=reverse, delay_minutes=delay
        )
        return _Block("candles", _CANDLE_METADATA, [_candle_row(bar) for bar in bars])

    def _borders_blocks(self, route: _Route) -> list[_Block]:
        listing = self._resolve(route)
        rows: list[list[Any]] = []
        if listing is not None:
            for begin, end, interval in self.market.borders(
                listing.secid, listing.boardid, self.now, delay_minutes=self.faults.delay_minutes
            ):
                row: list[Any] = [_iso(begin), _iso(end), interval]
                if route.board is None:
                    row.append(listing.board_group_id)
                rows.append(row)
        if route.board is None:
            return [_Block("borders", _MARKET_BORDERS_METADATA, rows)]
        return [
            _Block("borders", _BORDERS_METADATA, rows),
            _Block("durations", _DURATIONS_METADATA, [list(row) for row in _DURATIONS_ROWS]),
        ]


__all__ = [
    "FAULT_KINDS",
    "PAGE_SIZE",
    "FaultConfig",
    "ISSStandIn",
    "SecuritySpec",
    "StandInStats",
    "parse_iss_moment",
]
