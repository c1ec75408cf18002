"""A deterministic synthetic market for the ISS stand-in: catalog, sessions, minute bars, aggregation.

Everything here is a pure function of ``(seed, secid, board, day, revision)`` plus the clock ``now``
that the caller passes in, so a test can compute "the source truth" with :meth:`SyntheticMarket.candles`
and compare it with what the pipeline loaded through HTTP.

Model
-----
* **Catalog** (:data:`CATALOG`): SBER on TQBR (primary) and SMAL (odd lots, non-primary), GAZP on TQBR,
  the OFZ bond SU26238RMFS4 on TQOB (price in % of face, value = price% x 10 x volume), the future
  SiZ5 on RFUD (value 0, mixed-case secid), the FX pair CNYRUB_TOM on CETS and the index IMOEX on SNDX
  (value only, volume 0, no ISS delay).
* **Sessions** (Moscow wall-clock, minute starts, end minute inclusive), see :func:`session_minutes`:

  ======== ============================================================================
  shares   weekdays 10:00-18:39 plus an opening-auction minute 09:50 and the evening session
           19:05-23:49; the morning session 06:50-09:49 from 2024-09-01; Sat/Sun 10:00-18:59
           from 2025-03-01 (weekend sessions)
  bonds    weekdays 10:00-17:59
  futures  weekdays 09:00-13:59, 14:05-18:44, 19:05-23:49 (the gaps are the clearings)
  fx       weekdays 07:00-23:49
  index    weekdays 09:50-18:50
  ======== ============================================================================

  No schedule trades on the fixed holidays in :data:`HOLIDAYS` (month, day), whatever the weekday.
* **Minute bars**: one generator per (secid, board, day) seeded from a hash, so a day never depends on
  another day; minutes without trades are skipped (no zero fill). The price is a smooth per-day
  level (a sum of slow sine waves per secid, so both boards of a secid agree) plus a mean-reverting
  per-minute deviation, rounded to the board's decimals; OHLC is always consistent. A *revision*
  multiplies every price by ``1.02 ** revision`` before rounding and leaves value and volume alone,
  which is what ISS does after a split rescale (FXGD 2021).
* **Aggregation**: every higher interval is an exact aggregation of the minute series (see
  :meth:`SyntheticMarket.candles`).
* **Clock**: only minutes that have started by ``now`` exist; the minute containing ``now`` is
  partial (its close, high/low excursion, volume and value are a deterministic fraction of the full
  minute's, growing with the seconds elapsed), so every bar that contains it is partial too. ISS's
  anonymous 15-minute delay is ``delay_minutes``; it does not apply to the index (``has_delay=0``).
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import hashlib
import math
import random
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import polars as pl

INTERVALS: tuple[int, ...] = (1, 10, 60, 24, 7, 31, 4)
"""ISS interval codes: 1/10/60 minutes, 24 day, 7 week, 31 month, 4 quarter."""

INTRADAY_STEP: dict[int, int] = {1: 1, 10: 10, 60: 60}
"""Minutes per bar of the intraday intervals."""

HOLIDAYS: frozenset[tuple[int, int]] = frozenset(
    {(1, 1), (1, 2), (1, 7), (2, 23), (3, 8), (5, 1), (5, 9), (6, 12), (11, 4)}
)
"""(month, day) pairs on which nothing trades, every year."""

MORNING_SESSION_FROM = dt.date(2024, 9, 1)
WEEKEND_SESSIONS_FROM = dt.date(2025, 3, 1)

_DAY_SECONDS_LAST = 86_399


class Bar(NamedTuple):
    """One candle, fields in ISS's native column order (O, C, H, L, value, volume, begin, end)."""

    open: float
    close: float
    high: float
    low: float
    value: float
    volume: int
    begin: dt.datetime
    end: dt.datetime


@dataclass(frozen=True)
class PriceModel:
    """How a series' prices and volumes are drawn (see the module docstring)."""

    base_price: float
    wave_amplitudes: tuple[float, float, float]
    minute_sigma: float
    bar_spread: float
    lot: int
    max_lots: int
    p_no_trade: float
    value_kind: str  # "price" (price*volume), "bond" (price% * 10 * volume), "zero", "index" (volume 0)


@dataclass(frozen=True)
class BoardListing:
    """A secid on one board: the ``boards`` row of ``securities/{secid}.json`` plus its synthetic model."""

    secid: str
    boardid: str
    title: str
    board_group_id: int
    market_id: int
    market: str
    engine_id: int
    engine: str
    decimals: int
    is_primary: bool
    currencyid: str | None
    unit: str
    history_from: dt.date
    listed_from: dt.date
    listed_till: dt.date | None
    schedule: str
    has_delay: bool
    model: PriceModel

    def trades_on(self, day: dt.date) -> bool:
        """Whether ``day`` is inside the listing and its schedule has a session that day."""
        if day < self.history_from or (self.listed_till is not None and day > self.listed_till):
            return False
        return bool(session_minutes(self.schedule, day))


@dataclass(frozen=True)
class SecuritySpec:
    """A security: its ``description`` rows and the boards it is listed on."""

    secid: str
    kind: str
    description: tuple[tuple[str, str, str, str, int, int, int | None], ...]
    boards: tuple[BoardListing, ...]


# --------------------------------------------------------------------------------------------------
# Sessions


def is_holiday(day: dt.date) -> bool:
    """A fixed exchange holiday (see :data:`HOLIDAYS`)."""
    return (day.month, day.day) in HOLIDAYS


def _span(first_hhmm: int, last_hhmm: int) -> range:
    """Minutes of day from ``first`` to ``last`` inclusive, both written as HHMM."""
    first = first_hhmm // 100 * 60 + first_hhmm % 100
    last = last_hhmm // 100 * 60 + last_hhmm % 100
    return range(first, last + 1)


@functools.lru_cache(maxsize=16_384)
def session_minutes(schedule: str, day: dt.date) -> tuple[int, ...]:
    """Minutes of day (0..1439) at which ``schedule`` trades on ``day``; empty on a non-trading day."""
    if is_holiday(day):
        return ()
    weekend = day.weekday() >= 5
    spans: list[range]
    if schedule == "shares":
        if weekend:
            spans = [_span(1000, 1859)] if day >= WEEKEND_SESSIONS_FROM else []
        else:
            spans = [_span(950, 950), _span(1000, 1839), _span(1905, 2349)]
            if day >= MORNING_SESSION_FROM:
                spans.insert(0, _span(650, 949))
    elif weekend:
        spans = []
    elif schedule == "bonds":
        spans = [_span(1000, 1759)]
    elif schedule == "futures":
        spans = [_span(900, 1359), _span(1405, 1844), _span(1905, 2349)]
    elif schedule == "fx":
        spans = [_span(700, 2349)]
    elif schedule == "index":
        spans = [_span(950, 1850)]
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return tuple(m for span in spans for m in span)


# --------------------------------------------------------------------------------------------------
# Catalog

_TQBR = {
    "title": "Т+: Акции и ДР - безадрес.",
    "board_group_id": 57,
    "market_id": 1,
    "market": "shares",
    "engine_id": 1,
    "engine": "stock",
    "schedule": "shares",
    "unit": "M",
    "has_delay": True,
}
_SMAL = {**_TQBR, "title": "Т+: Неполные лоты (акции) - безадрес.", "board_group_id": 21}
_TQOB = {
    "title": "Т+: Гособлигации - безадрес.",
    "board_group_id": 58,
    "market_id": 2,
    "market": "bonds",
    "engine_id": 1,
    "engine": "stock",
    "schedule": "bonds",
    "unit": "%",
    "has_delay": True,
}
_RFUD = {
    "title": "Фьючерсы",
    "board_group_id": 45,
    "market_id": 22,
    "market": "forts",
    "engine_id": 4,
    "engine": "futures",
    "schedule": "futures",
    "unit": "M",
    "has_delay": True,
}
_CETS = {
    "title": "Системные сделки - безадрес.",
    "board_group_id": 13,
    "market_id": 10,
    "market": "selt",
    "engine_id": 3,
    "engine": "currency",
    "schedule": "fx",
    "unit": "M",
    "has_delay": True,
}
_SNDX = {
    "title": "Индексы фондового рынка",
    "board_group_id": 9,
    "market_id": 5,
    "market": "index",
    "engine_id": 1,
    "engine": "stock",
    "schedule": "index",
    "unit": "M",
    "has_delay": False,
}

_DESCRIPTION_TITLES: dict[str, tuple[str, str, int, int, int | None]] = {
    # name -> (title, type, sort_order, is_hidden, precision), as in securities_SBER_rec2025-12-11
    "SECID": ("Код ценной бумаги", "string", 1, 0, None),
    "ISSUENAME": ("Наименование ценной бумаги", "string", 2, 0, None),
    "NAME": ("Полное наименование", "string", 3, 0, None),
    "SHORTNAME": ("Краткое наименование", "string", 4, 0, None),
    "ISIN": ("ISIN код", "string", 5, 0, None),
    "REGNUMBER": ("Номер государственной регистрации", "string", 6, 0, None),
    "ISSUESIZE": ("Объем выпуска", "number", 7, 0, 0),
    "FACEVALUE": ("Номинальная стоимость", "number", 8, 0, 2),
    "FACEUNIT": ("Валюта номинала", "string", 9, 0, None),
    "ISSUEDATE": ("Дата начала торгов", "date", 10, 0, None),
    "MATDATE": ("Дата погашения", "date", 11, 0, None),
    "LATNAME": ("Английское наименование", "string", 12, 1, None),
    "LSTTRADE": ("Последний торговый день", "date", 13, 0, None),
    "LISTLEVEL": ("Уровень листинга", "number", 18, 0, 0),
    "ISQUALIFIEDINVESTORS": ("Бумаги для квалифицированных инвесторов", "boolean", 20, 0, 0),
    "MORNINGSESSION": ("Допуск к утренней дополнительной торговой сессии", "boolean", 23, 0, 0),
    "EVENINGSESSION": ("Допуск к вечерней дополнительной торговой сессии", "boolean", 24, 0, 0),
    "WEEKENDSESSION": ("Допуск к дополнительной торговой сессии выходного дня", "boolean", 25, 0, 0),
    "TYPENAME": ("Вид/категория ценной бумаги", "string", 9000, 0, None),
    "GROUP": ("Код типа инструмента", "string", 9001, 1, None),
    "TYPE": ("Тип бумаги", "string", 10000, 1, None),
    "GROUPNAME": ("Типа инструмента", "string", 10011, 1, None),
    "EMITTER_ID": ("Код эмитента", "number", 11000, 1, None),
}


def _description(values: dict[str, str]) -> tuple[tuple[str, str, str, str, int, int, int | None], ...]:
    rows = []
    for name, value in values.items():
        title, kind, sort_order, hidden, precision = _DESCRIPTION_TITLES[name]
        rows.append((name, title, value, kind, sort_order, hidden, precision))
    return tuple(sorted(rows, key=lambda row: row[4]))


def _listing(
    secid: str,
    boardid: str,
    board: dict[str, object],
    *,
    decimals: int,
    is_primary: bool,
    currencyid: str | None,
    history_from: dt.date,
    listed_from: dt.date,
    listed_till: dt.date | None,
    model: PriceModel,
) -> BoardListing:
    return BoardListing(
        secid=secid,
        boardid=boardid,
        title=str(board["title"]),
        board_group_id=int(str(board["board_group_id"])),
        market_id=int(str(board["market_id"])),
        market=str(board["market"]),
        engine_id=int(str(board["engine_id"])),
        engine=str(board["engine"]),
        decimals=decimals,
        is_primary=is_primary,
        currencyid=currencyid,
        unit=str(board["unit"]),
        history_from=history_from,
        listed_from=listed_from,
        listed_till=listed_till,
        schedule=str(board["schedule"]),
        has_delay=bool(board["has_delay"]),
        model=model,
    )


def _share_model(base: float, max_lots: int, *, p_no_trade: float = 0.03, lot: int = 10) -> PriceModel:
    return PriceModel(base, (0.12, 0.05, 0.02), 0.0012, 0.0008, lot, max_lots, p_no_trade, "price")


def _build_catalog() -> dict[str, SecuritySpec]:
    d = dt.date
    share_flags = {"MORNINGSESSION": "1", "EVENINGSESSION": "1", "WEEKENDSESSION": "1"}
    sber = SecuritySpec(
        "SBER",
        "share",
        _description(
            {
                "SECID": "SBER",
                "ISSUENAME": "Акции обыкновенные",
                "NAME": "Сбербанк России ПАО ао",
                "SHORTNAME": "Сбербанк",
                "ISIN": "RU0009029540",
                "REGNUMBER": "10301481B",
                "ISSUESIZE": "21586948000",
                "FACEVALUE": "3",
                "FACEUNIT": "SUR",
                "ISSUEDATE": "2007-07-20",
                "LATNAME": "Sberbank",
                "LISTLEVEL": "1",
                "ISQUALIFIEDINVESTORS": "0",
                **share_flags,
                "TYPENAME": "Акция обыкновенная",
                "GROUP": "stock_shares",
                "TYPE": "common_share",
                "GROUPNAME": "Акции",
                "EMITTER_ID": "484",
            }
        ),
        (
            _listing(
                "SBER",
                "TQBR",
                _TQBR,
                decimals=2,
                is_primary=True,
                currencyid="RUB",
                history_from=d(2023, 1, 3),
                listed_from=d(2013, 3, 25),
                listed_till=None,
                model=_share_model(270.0, 4000),
            ),
            _listing(
                "SBER",
                "SMAL",
                _SMAL,
                decimals=2,
                is_primary=False,
                currencyid="RUB",
                history_from=d(2023, 6, 1),
                listed_from=d(2011, 11, 21),
                listed_till=None,
                # odd lots: single shares, thin trading
                model=_share_model(270.0, 9, p_no_trade=0.35, lot=1),
            ),
        ),
    )
    gazp = SecuritySpec(
        "GAZP",
        "share",
        _description(
            {
                "SECID": "GAZP",
                "ISSUENAME": "Акции обыкновенные",
                "NAME": '"Газпром" (ПАО) ао',
                "SHORTNAME": "ГАЗПРОМ ао",
                "ISIN": "RU0007661625",
                "REGNUMBER": "1-02-00028-A",
                "ISSUESIZE": "23673512900",
                "FACEVALUE": "5",
                "FACEUNIT": "SUR",
                "ISSUEDATE": "1993-02-17",
                "LATNAME": "Gazprom",
                "LISTLEVEL": "1",
                "ISQUALIFIEDINVESTORS": "0",
                **share_flags,
                "TYPENAME": "Акция обыкновенная",
                "GROUP": "stock_shares",
                "TYPE": "common_share",
                "GROUPNAME": "Акции",
                "EMITTER_ID": "934",
            }
        ),
        (
            _listing(
                "GAZP",
                "TQBR",
                _TQBR,
                decimals=2,
                is_primary=True,
                currencyid="RUB",
                history_from=d(2023, 1, 3),
                listed_from=d(2013, 3, 25),
                listed_till=None,
                model=_share_model(160.0, 3000),
            ),
        ),
    )
    ofz = SecuritySpec(
        "SU26238RMFS4",
        "bond",
        _description(
            {
                "SECID": "SU26238RMFS4",
                "NAME": "ОФЗ-ПД 26238 15/05/2041",
                "SHORTNAME": "ОФЗ 26238",
                "ISIN": "RU000A1038V6",
                "REGNUMBER": "26238RMFS",
                "ISSUESIZE": "350000000",
                "FACEVALUE": "1000",
                "FACEUNIT": "SUR",
                "ISSUEDATE": "2021-06-09",
                "MATDATE": "2041-05-15",
                "LATNAME": "OFZ 26238",
                "LISTLEVEL": "1",
                "ISQUALIFIEDINVESTORS": "0",
                "TYPENAME": "Государственная облигация",
                "GROUP": "stock_bonds",
                "TYPE": "ofz_bond",
                "GROUPNAME": "Облигации",
                "EMITTER_ID": "1",
            }
        ),
        (
            _listing(
                "SU26238RMFS4",
                "TQOB",
                _TQOB,
                decimals=4,
                is_primary=True,
                currencyid="SUR",
                history_from=d(2023, 3, 1),
                listed_from=d(2021, 6, 9),
                listed_till=None,
                model=PriceModel(62.0, (0.05, 0.015, 0.004), 0.0004, 0.0003, 1, 400, 0.5, "bond"),
            ),
        ),
    )
    future = SecuritySpec(
        "SiZ5",
        "future",
        _description(
            {
                "SECID": "SiZ5",
                "NAME": "Фьючерсный контракт Si-12.25",
                "SHORTNAME": "Si-12.25",
                "LATNAME": "Si-12.25",
                "LSTTRADE": "2025-12-18",
                "TYPENAME": "Фьючерс",
                "GROUP": "futures_forts",
                "TYPE": "futures",
                "GROUPNAME": "Фьючерсы",
            }
        ),
        (
            _listing(
                "SiZ5",
                "RFUD",
                _RFUD,
                decimals=0,
                is_primary=True,
                currencyid="RUB",
                history_from=d(2024, 12, 19),
                listed_from=d(2024, 12, 19),
                listed_till=d(2025, 12, 18),
                model=PriceModel(98_000.0, (0.06, 0.02, 0.006), 0.0006, 0.0004, 1, 120, 0.2, "zero"),
            ),
        ),
    )
    fx = SecuritySpec(
        "CNYRUB_TOM",
        "fx",
        _description(
            {
                "SECID": "CNYRUB_TOM",
                "NAME": "CNYRUB_TOM - CNY/РУБ",
                "SHORTNAME": "CNYRUB_TOM",
                "LATNAME": "CNYRUB_TOM - CNY/RUB",
                "FACEVALUE": "1",
                "FACEUNIT": "RUB",
                "TYPENAME": "Валюта",
                "GROUP": "currency_selt",
                "TYPE": "currency",
                "GROUPNAME": "Валюта",
            }
        ),
        (
            _listing(
                "CNYRUB_TOM",
                "CETS",
                _CETS,
                decimals=4,
                is_primary=True,
                currencyid="RUB",
                history_from=d(2023, 1, 3),
                listed_from=d(2014, 1, 9),
                listed_till=None,
                model=PriceModel(12.4, (0.07, 0.02, 0.005), 0.0005, 0.0004, 1000, 900, 0.05, "price"),
            ),
        ),
    )
    index = SecuritySpec(
        "IMOEX",
        "index",
        _description(
            {
                "SECID": "IMOEX",
                "NAME": "Индекс МосБиржи",
                "SHORTNAME": "Индекс МосБиржи",
                "LATNAME": "MOEX Russia Index",
                "TYPENAME": "Индекс фондового рынка",
                "GROUP": "stock_index",
                "TYPE": "stock_index",
                "GROUPNAME": "Индексы",
            }
        ),
        (
            _listing(
                "IMOEX",
                "SNDX",
                _SNDX,
                decimals=2,
                is_primary=True,
                currencyid=None,
                history_from=d(2023, 1, 3),
                listed_from=d(1997, 9, 22),
                listed_till=None,
                model=PriceModel(3000.0, (0.09, 0.03, 0.01), 0.0004, 0.0003, 1, 1, 0.0, "index"),
            ),
        ),
    )
    return {spec.secid: spec for spec in (sber, gazp, ofz, future, fx, index)}


CATALOG: dict[str, SecuritySpec] = _build_catalog()
"""Every security the stand-in knows, by exact secid."""


# --------------------------------------------------------------------------------------------------
# Series storage


class _Series(NamedTuple):
    """Columnar bars of one calendar day: begin as minute of day, end as second of day."""

    begin_min: array[int]
    end_sec: array[int]
    open: array[float]
    close: array[float]
    high: array[float]
    low: array[float]
    value: array[float]
    volume: array[int]

    def head(self, n: int) -> _Series:
        """The first ``n`` bars (a copy)."""
        return _Series(
            self.begin_min[:n],
            self.end_sec[:n],
            self.open[:n],
            self.close[:n],
            self.high[:n],
            self.low[:n],
            self.value[:n],
            self.volume[:n],
        )


def _new_series() -> _Series:
    return _Series(
        array("i"), array("i"), array("d"), array("d"), array("d"), array("d"), array("d"), array("q")
    )


_EMPTY_SERIES = _new_series()


class _DayBar(NamedTuple):
    """A day's aggregate; ``last_sec`` is the end of its last minute bar (second of day)."""

    open: float
    close: float
    high: float
    low: float
    value: float
    volume: int
    last_sec: int


def _stable_int(*parts: object) -> int:
    """A 64-bit integer from the parts; stable across processes (unlike ``hash``)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _aggregate(series: _Series, step: int) -> _Series:
    """Minute bars into ``step``-minute buckets (bucket begin = minute // step * step)."""
    out = _new_series()
    begins = series.begin_min
    n = len(begins)
    i = 0
    while i < n:
        key = begins[i] // step * step
        j = i + 1
        while j < n and begins[j] // step * step == key:
            j += 1
        out.begin_min.append(key)
        out.end_sec.append(series.end_sec[j - 1])
        out.open.append(series.open[i])
        out.close.append(series.close[j - 1])
        out.high.append(max(series.high[i:j]))
        out.low.append(min(series.low[i:j]))
        out.value.append(sum(series.value[i:j]))
        out.volume.append(sum(series.volume[i:j]))
        i = j
    return out


def _day_bar(series: _Series) -> _DayBar | None:
    if not series.begin_min:
        return None
    return _DayBar(
        series.open[0],
        series.close[-1],
        max(series.high),
        min(series.low),
        sum(series.value),
        sum(series.volume),
        series.end_sec[-1],
    )


def _period_start(day: dt.date, interval: int) -> dt.date:
    """The first day of the week (Monday), month or quarter containing ``day``."""
    if interval == 7:
        return day - dt.timedelta(days=day.weekday())
    if interval == 31:
        return day.replace(day=1)
    if interval == 4:
        return dt.date(day.year, (day.month - 1) // 3 * 3 + 1, 1)
    if interval == 24:
        return day
    raise ValueError(f"not a calendar interval: {interval}")


def _next_period(start: dt.date, interval: int) -> dt.date:
    if interval == 24:
        return start + dt.timedelta(days=1)
    if interval == 7:
        return start + dt.timedelta(days=7)
    months = 1 if interval == 31 else 3
    month0 = start.month - 1 + months
    return dt.date(start.year + month0 // 12, month0 % 12 + 1, 1)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day)


def _ceil_minute(moment: dt.datetime, day: dt.date) -> int:
    """Minute of ``day`` of the first bar begin >= ``moment`` (may be < 0 or > 1439)."""
    seconds = (moment - _midnight(day)).total_seconds()
    return math.ceil(seconds / 60)


def _series_bars(series: _Series, day: dt.date, indices: Sequence[int]) -> list[Bar]:
    """The bars of ``day`` at ``indices`` of its series, in that order."""
    midnight = _midnight(day)
    minute, second = dt.timedelta(minutes=1), dt.timedelta(seconds=1)
    b, e = series.begin_min, series.end_sec
    o, c, h, lw, v, q = series.open, series.close, series.high, series.low, series.value, series.volume
    return [
        Bar(o[x], c[x], h[x], lw[x], v[x], q[x], midnight + b[x] * minute, midnight + e[x] * second)
        for x in indices
    ]


# --------------------------------------------------------------------------------------------------
# The market


# Security-days kept generated (and encoded): 22 years of one security, or B1's 4 securities x 5
# years. A benchmark's range must stay cached once its warm-up has fetched it, as real ISS has its
# data ready: with 1024, a 4 x 365-day B1 missed on every page (least recently used, in a cycle) and
# the stand-in generated ~7 s of days on the cores the loader runs on. A cached day of 1-minute bars
# takes ~0.2 MB (generated and encoded), so a full cache ~1.6 GB; tests fill a few days.
_DAYS_CACHED = 8192


class SyntheticMarket:
    """The stand-in's data: deterministic bars for every (secid, board) of :data:`CATALOG`.

    Thread-safe for readers: caches are ``functools.lru_cache`` (a race computes a day twice, with
    the same result). ``revision`` and broken candles change the data; both clear the caches.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.revision = 0
        self.catalog: dict[str, SecuritySpec] = CATALOG
        self._breaks: dict[tuple[str, str, dt.datetime], bool] = {}
        self._count_memo: dict[tuple[str, str, int, int, int], int] = {}
        # per-instance caches: the key includes the revision, so switching back is free
        self._minutes_cached = functools.lru_cache(maxsize=_DAYS_CACHED)(self._generate_day)
        self._buckets_cached = functools.lru_cache(maxsize=_DAYS_CACHED)(self._complete_buckets)
        self._day_bar_cached = functools.lru_cache(maxsize=65_536)(self._complete_day_bar)
        # A finished day's bars as the server encodes them: the server then answers a page with a
        # slice instead of building and encoding 500 bars under its one GIL (~3 ms a page), which
        # made the stand-in slower than the latency it is configured with as soon as C requests
        # arrived together (docs/benchmarks.md, session 8).
        self._encoded_cached = functools.lru_cache(maxsize=_DAYS_CACHED)(self._encode_complete_day)

    # ---- catalog -------------------------------------------------------------------------------

    def find_security(self, secid: str) -> SecuritySpec | None:
        """Exact secid first, then a case-insensitive match (as ``securities/{secid}.json`` does here)."""
        spec = self.catalog.get(secid)
        if spec is not None:
            return spec
        folded = secid.casefold()
        for candidate in self.catalog.values():
            if candidate.secid.casefold() == folded:
                return candidate
        return None

    def listing(
        self, secid: str, board: str, engine: str | None = None, market: str | None = None
    ) -> BoardListing | None:
        """The board listing of an exact ``secid``; board/engine/market compare case-insensitively."""
        spec = self.catalog.get(secid)
        if spec is None:
            return None
        for listing in spec.boards:
            if listing.boardid.casefold() != board.casefold():
                continue
            if engine is not None and listing.engine.casefold() != engine.casefold():
                return None
            if market is not None and listing.market.casefold() != market.casefold():
                return None
            return listing
        return None

    def primary_listing(
        self, secid: str, engine: str | None = None, market: str | None = None
    ) -> BoardListing | None:
        """The ``is_primary`` board of an exact ``secid`` (optionally within engine/market)."""
        spec = self.catalog.get(secid)
        if spec is None:
            return None
        for listing in spec.boards:
            if not listing.is_primary:
                continue
            if engine is not None and listing.engine.casefold() != engine.casefold():
                continue
            if market is not None and listing.market.casefold() != market.casefold():
                continue
            return listing
        return None

    def _require(self, secid: str, board: str) -> BoardListing:
        listing = self.listing(secid, board)
        if listing is None:
            raise KeyError(f"{secid} is not listed on {board} in the synthetic market")
        return listing

    # ---- data changes --------------------------------------------------------------------------

    def set_revision(self, revision: int) -> None:
        """Switch every price to revision ``revision`` (0 = original); value and volume stay."""
        self.revision = int(revision)

    def break_candle(self, secid: str, board: str, begin: dt.datetime) -> None:
        """Make the minute bar at ``begin`` inconsistent (high < low), and so every bar containing it.

        Raises ``ValueError`` when that minute has no trade (there is no bar to break).
        """
        listing = self._require(secid, board)
        minute = begin.replace(second=0, microsecond=0)
        day = self._minutes_cached(listing.secid, listing.boardid, minute.toordinal(), self.revision)
        if (minute.hour * 60 + minute.minute) not in day.begin_min:
            raise ValueError(f"{listing.secid} on {listing.boardid} has no minute bar at {minute}")
        self._breaks[(listing.secid, listing.boardid, minute)] = True
        self._clear_caches()

    def clear_breaks(self) -> None:
        """Undo every :meth:`break_candle`."""
        self._breaks.clear()
        self._clear_caches()

    def _clear_caches(self) -> None:
        self._minutes_cached.cache_clear()
        self._buckets_cached.cache_clear()
        self._day_bar_cached.cache_clear()
        self._encoded_cached.cache_clear()
        self._count_memo.clear()

    # ---- generation ----------------------------------------------------------------------------

    def _level(self, secid: str, ordinal: int) -> float:
        """Smooth per-day price level of a secid (shared by all its boards)."""
        spec = self.catalog[secid]
        model = spec.boards[0].model
        total = 0.0
        for k, (amplitude, period) in enumerate(zip(model.wave_amplitudes, (260.0, 67.0, 13.0), strict=True)):
            phase = _stable_int(self.seed, secid, "phase", k) % 10_000 / 10_000 * 2 * math.pi
            total += amplitude * math.sin(2 * math.pi * ordinal / period + phase)
        return model.base_price * math.exp(total)

    def _generate_day(self, secid: str, board: str, ordinal: int, revision: int) -> _Series:
        """Every minute bar of a whole day (as if the day were over); cached per revision."""
        listing = self._require(secid, board)
        day = dt.date.fromordinal(ordinal)
        if not listing.trades_on(day):
            return _EMPTY_SERIES
        minutes = session_minutes(listing.schedule, day)
        model = listing.model
        rnd = random.Random(_stable_int(self.seed, secid, board, ordinal)).random
        level0 = self._level(secid, ordinal)
        slope = (self._level(secid, ordinal + 1) - level0) / len(minutes)
        factor = 1.02**revision
        decimals = listing.decimals
        sigma, spread, p_gap = model.minute_sigma, model.bar_spread, model.p_no_trade
        lot, max_lots, value_kind = model.lot, model.max_lots, model.value_kind
        out = _new_series()
        begin_a, end_a, open_a, close_a, high_a, low_a, value_a, volume_a = out
        deviation = (rnd() - 0.5) * sigma * 5
        previous = level0 * (1.0 + deviation)
        for i, minute in enumerate(minutes):
            # The walk advances on every session minute, so a gap never shifts later prices.
            deviation = deviation * 0.985 + (rnd() - 0.5) * sigma
            if rnd() < p_gap:
                continue
            close = (level0 + slope * i) * (1.0 + deviation)
            open_ = previous * (1.0 + (rnd() - 0.5) * spread * 0.5)
            if open_ > close:
                high = open_ * (1.0 + rnd() * spread)
                low = close * (1.0 - rnd() * spread)
            else:
                high = close * (1.0 + rnd() * spread)
                low = open_ * (1.0 - rnd() * spread)
            lots = 1 + int(rnd() * rnd() * max_lots)
            typical = (open_ + close + high + low) * 0.25
            if value_kind == "price":
                volume, value = lots * lot, round(lots * lot * typical, 2)
            elif value_kind == "bond":
                volume, value = lots, round(lots * typical * 10.0, 2)
            elif value_kind == "zero":
                volume, value = lots, 0.0
            else:  # index: turnover of the constituents, no volume
                volume, value = 0, round(2.0e7 + rnd() * 3.0e8, 2)
            begin_a.append(minute)
            end_a.append(minute * 60 + 59)
            # rounding is monotone, so low <= open/close <= high survives it
            open_a.append(round(open_ * factor, decimals))
            close_a.append(round(close * factor, decimals))
            high_a.append(round(high * factor, decimals))
            low_a.append(round(low * factor, decimals))
            value_a.append(value)
            volume_a.append(volume)
            previous = close
        self._apply_breaks(listing, day, out)
        return out

    def _apply_breaks(self, listing: BoardListing, day: dt.date, series: _Series) -> None:
        if not self._breaks:
            return
        tick = 10.0**-listing.decimals
        for (secid, board, begin), _ in self._breaks.items():
            if secid != listing.secid or board != listing.boardid or begin.date() != day:
                continue
            minute = begin.hour * 60 + begin.minute
            i = bisect.bisect_left(series.begin_min, minute)
            if i < len(series.begin_min) and series.begin_min[i] == minute:
                high = min(series.open[i], series.close[i]) - tick
                low = max(series.open[i], series.close[i]) + tick
                series.high[i] = round(high, listing.decimals)
                series.low[i] = round(low, listing.decimals)

    def _complete_buckets(self, secid: str, board: str, ordinal: int, revision: int, step: int) -> _Series:
        return _aggregate(self._minutes_cached(secid, board, ordinal, revision), step)

    def _complete_day_bar(self, secid: str, board: str, ordinal: int, revision: int) -> _DayBar | None:
        return _day_bar(self._minutes_cached(secid, board, ordinal, revision))

    # ---- the clock -----------------------------------------------------------------------------

    @staticmethod
    def effective_now(listing: BoardListing, now: dt.datetime, delay_minutes: float = 0.0) -> dt.datetime:
        """What ISS can show at ``now``: ``now`` minus the delay, for markets that have one."""
        if delay_minutes and listing.has_delay:
            return now - dt.timedelta(minutes=delay_minutes)
        return now

    def _partial_minutes(
        self, listing: BoardListing, day: dt.date, now: dt.datetime, revision: int
    ) -> _Series:
        """The day's minute bars as seen at ``now`` (on ``day``): later minutes cut, current one partial."""
        full = self._minutes_cached(listing.secid, listing.boardid, day.toordinal(), revision)
        current = now.hour * 60 + now.minute
        cut = bisect.bisect_right(full.begin_min, current)
        series = full.head(cut)
        if cut and series.begin_min[-1] == current:
            self._make_partial(listing, series, now)
        return series

    @staticmethod
    def _make_partial(listing: BoardListing, series: _Series, now: dt.datetime) -> None:
        """Scale the last (current) minute to the fraction of it that has elapsed."""
        elapsed = now.second + now.microsecond / 1e6
        fraction = (elapsed + 1.0) / 61.0
        decimals = listing.decimals
        open_, close, high, low = series.open[-1], series.close[-1], series.high[-1], series.low[-1]
        volume, value = series.volume[-1], series.value[-1]
        partial_close = round(open_ + (close - open_) * fraction, decimals)
        top, bottom = max(open_, partial_close), min(open_, partial_close)
        series.close[-1] = partial_close
        series.high[-1] = round(top + max(0.0, high - max(open_, close)) * fraction, decimals)
        series.low[-1] = round(bottom - max(0.0, min(open_, close) - low) * fraction, decimals)
        if volume > 0:
            lot = listing.model.lot if listing.model.value_kind == "price" else 1
            partial_volume = max(lot, int(volume * fraction) // lot * lot)
            series.volume[-1] = partial_volume
            series.value[-1] = round(value * partial_volume / volume, 2)
        else:
            series.value[-1] = round(value * fraction, 2)
        series.end_sec[-1] = series.begin_min[-1] * 60 + int(elapsed)

    # ---- per-day views -------------------------------------------------------------------------

    def _day_series(
        self, listing: BoardListing, day: dt.date, step: int, now: dt.datetime, revision: int
    ) -> _Series:
        """Intraday bars (``step`` minutes) of ``day`` as seen at ``now`` (already delay-adjusted)."""
        today = now.date()
        if day > today or not listing.trades_on(day):
            return _EMPTY_SERIES
        ordinal = day.toordinal()
        if day < today:
            if step == 1:
                return self._minutes_cached(listing.secid, listing.boardid, ordinal, revision)
            return self._buckets_cached(listing.secid, listing.boardid, ordinal, revision, step)
        minutes = self._partial_minutes(listing, day, now, revision)
        return minutes if step == 1 else _aggregate(minutes, step)

    def _day_aggregate(
        self, listing: BoardListing, day: dt.date, now: dt.datetime, revision: int
    ) -> tuple[_DayBar, dt.datetime] | None:
        """The daily bar of ``day`` and its ``end`` as seen at ``now``; None without trades."""
        today = now.date()
        if day > today or not listing.trades_on(day):
            return None
        if day < today:
            bar = self._day_bar_cached(listing.secid, listing.boardid, day.toordinal(), revision)
            end = _midnight(day) + dt.timedelta(seconds=_DAY_SECONDS_LAST)
        else:
            bar = _day_bar(self._partial_minutes(listing, day, now, revision))
            end = _midnight(day) + dt.timedelta(seconds=bar.last_sec) if bar else _midnight(day)
        return (bar, end) if bar is not None else None

    # ---- bars over a range ---------------------------------------------------------------------

    def _window(
        self, listing: BoardListing, start: dt.datetime, end: dt.datetime, now: dt.datetime
    ) -> tuple[dt.date, dt.date] | None:
        """First and last calendar day that can hold a bar with begin in [start, end)."""
        first = max(start.date(), listing.history_from)
        last_moment = min(end - dt.timedelta(microseconds=1), now)
        last = last_moment.date()
        if listing.listed_till is not None:
            last = min(last, listing.listed_till)
        return (first, last) if first <= last else None

    def _intraday_chunks(
        self,
        listing: BoardListing,
        step: int,
        start: dt.datetime,
        end: dt.datetime,
        now: dt.datetime,
        revision: int,
        reverse: bool,
        encode: Callable[[Bar], Any] | None = None,
    ) -> Iterator[tuple[int, Callable[[int, int], list[Any]]]]:
        """Per day: (row count, rows(i, j)) with rows in the requested order, each a :class:`Bar`
        or, with ``encode``, what ``encode`` makes of it."""
        window = self._window(listing, start, end, now)
        if window is None:
            return
        first, last = window
        days = (last - first).days + 1
        today = now.date()
        for k in range(days):
            day = last - dt.timedelta(days=k) if reverse else first + dt.timedelta(days=k)
            if not listing.trades_on(day):
                continue
            memo_key = (listing.secid, listing.boardid, day.toordinal(), revision, step)
            whole_day = day != start.date() and day != end.date() and day < today
            if whole_day and memo_key in self._count_memo:
                count = self._count_memo[memo_key]
                yield (
                    count,
                    functools.partial(
                        self._rows, listing, day, step, now, revision, 0, count, reverse, encode
                    ),
                )
                continue
            series = self._day_series(listing, day, step, now, revision)
            lo, hi = 0, len(series.begin_min)
            if day == start.date():
                lo = bisect.bisect_left(series.begin_min, _ceil_minute(start, day))
            if day == end.date():
                hi = bisect.bisect_left(series.begin_min, _ceil_minute(end, day))
            if hi <= lo:
                continue
            if whole_day:
                self._count_memo[memo_key] = hi - lo
            yield (
                hi - lo,
                functools.partial(self._rows, listing, day, step, now, revision, lo, hi, reverse, encode),
            )

    def _rows(
        self,
        listing: BoardListing,
        day: dt.date,
        step: int,
        now: dt.datetime,
        revision: int,
        lo: int,
        hi: int,
        reverse: bool,
        encode: Callable[[Bar], Any] | None,
        i: int,
        j: int,
    ) -> list[Any]:
        """Rows ``i..j`` (in request order) of the day's bars whose index is within [lo, hi),
        encoded with ``encode`` if given (a finished day's encoding is cached)."""
        if reverse:
            indices: Sequence[int] = range(hi - 1 - i, hi - 1 - j, -1)
        else:
            indices = range(lo + i, lo + j)
        if encode is not None and day < now.date():
            encoded = self._encoded_cached(
                listing.secid, listing.boardid, day.toordinal(), revision, step, encode
            )
            return [encoded[x] for x in indices] if reverse else list(encoded[lo + i : lo + j])
        bars = _series_bars(self._day_series(listing, day, step, now, revision), day, indices)
        return bars if encode is None else [encode(bar) for bar in bars]

    def _encode_complete_day(
        self, secid: str, boardid: str, ordinal: int, revision: int, step: int, encode: Callable[[Bar], Any]
    ) -> tuple[Any, ...]:
        """Every bar of a finished day, encoded (cached by ``_encoded_cached``)."""
        day = dt.date.fromordinal(ordinal)
        after = _midnight(day + dt.timedelta(days=1))  # any moment once the day is over
        series = self._day_series(self._require(secid, boardid), day, step, after, revision)
        return tuple(encode(bar) for bar in _series_bars(series, day, range(len(series.begin_min))))

    def _calendar_bars(
        self,
        listing: BoardListing,
        interval: int,
        start: dt.datetime,
        end: dt.datetime,
        now: dt.datetime,
        revision: int,
    ) -> list[Bar]:
        """Daily, weekly, monthly or quarterly bars with begin in [start, end), ascending."""
        window = self._window(listing, start, end, now)
        if window is None:
            return []
        first, last = window
        period = _period_start(first, interval)
        if _midnight(period) < start:
            period = _next_period(period, interval)
        bars: list[Bar] = []
        while period <= last and _midnight(period) < end:
            following = _next_period(period, interval)
            bar = self._period_bar(listing, period, following, now, revision, interval)
            if bar is not None:
                bars.append(bar)
            period = following
        return bars

    def _period_bar(
        self,
        listing: BoardListing,
        period: dt.date,
        following: dt.date,
        now: dt.datetime,
        revision: int,
        interval: int,
    ) -> Bar | None:
        """One calendar bar = the exact aggregate of its days' minute bars."""
        day = max(period, listing.history_from)
        stop = min(following, now.date() + dt.timedelta(days=1))
        parts: list[tuple[dt.date, _DayBar, dt.datetime]] = []
        while day < stop:
            aggregate = self._day_aggregate(listing, day, now, revision)
            if aggregate is not None:
                parts.append((day, *aggregate))
            day += dt.timedelta(days=1)
        if not parts:
            return None
        # 7/31/4 as ISS: the begin of the last trading day of the period (so far), at 00:00:00
        end = parts[-1][2] if interval == 24 else _midnight(parts[-1][0])
        days = [part[1] for part in parts]
        return Bar(
            days[0].open,
            days[-1].close,
            max(d.high for d in days),
            min(d.low for d in days),
            sum(d.value for d in days),
            sum(d.volume for d in days),
            _midnight(period),
            end,
        )

    # ---- public queries ------------------------------------------------------------------------

    def page(
        self,
        secid: str,
        board: str,
        interval: int,
        start: dt.datetime,
        end: dt.datetime,
        now: dt.datetime,
        *,
        offset: int = 0,
        limit: int | None = None,
        reverse: bool = False,
        delay_minutes: float = 0.0,
        revision: int | None = None,
        encode: Callable[[Bar], Any] | None = None,
    ) -> list[Any]:
        """Bars with begin in [start, end), ascending (descending with ``reverse``), rows
        ``offset .. offset+limit`` of that list. Only what exists at ``now`` (minus the delay).

        With ``encode`` (a pure function of a bar), each bar passed through it: what it makes of a
        finished day's intraday bars is cached, so a page of them costs a slice.

        Raises ``KeyError`` for a secid/board pair that is not listed and ``ValueError`` for an
        interval that ISS does not have.
        """
        listing = self._require(secid, board)
        if interval not in INTERVALS:
            raise ValueError(f"unknown ISS interval {interval}")
        rev = self.revision if revision is None else revision
        now = self.effective_now(listing, now, delay_minutes)
        if interval not in INTRADAY_STEP:
            bars = self._calendar_bars(listing, interval, start, end, now, rev)
            if reverse:
                bars.reverse()
            bars = bars[offset:] if limit is None else bars[offset : offset + limit]
            return bars if encode is None else [encode(bar) for bar in bars]
        out: list[Any] = []
        skip = offset
        wanted = math.inf if limit is None else limit
        for count, rows in self._intraday_chunks(
            listing, INTRADAY_STEP[interval], start, end, now, rev, reverse, encode
        ):
            if skip >= count:
                skip -= count
                continue
            take = int(min(count - skip, wanted - len(out)))
            out.extend(rows(skip, skip + take))
            skip = 0
            if len(out) >= wanted:
                break
        return out

    def candles(
        self,
        secid: str,
        board: str,
        interval: int,
        start: dt.datetime,
        end: dt.datetime,
        now: dt.datetime,
        *,
        delay_minutes: float = 0.0,
        revision: int | None = None,
    ) -> list[Bar]:
        """The source truth: every bar with begin in [start, end) that exists at ``now``, ascending.

        Intraday bars (1, 10, 60) begin at ``minute // n * n``; ``end`` is the begin of the last
        minute with a trade + 59 s (the current minute: the elapsed second). Calendar bars begin at
        00:00 of the day (24), Monday (7), the 1st of the month (31) or quarter (4); their ``end``
        is 23:59:59 for a finished day, the last trade time for today, and for 7/31/4 the last trading
        day of the period at 00:00:00. open = first open, close = last close, high = max,
        low = min, value and volume = sums over the minute bars.
        """
        return self.page(
            secid, board, interval, start, end, now, delay_minutes=delay_minutes, revision=revision
        )

    def candles_frame(
        self,
        secid: str,
        board: str,
        interval: int,
        start: dt.datetime,
        end: dt.datetime,
        now: dt.datetime,
        *,
        delay_minutes: float = 0.0,
        revision: int | None = None,
    ) -> pl.DataFrame:
        """:meth:`candles` as a polars frame with the project's candle columns."""
        bars = self.candles(
            secid, board, interval, start, end, now, delay_minutes=delay_minutes, revision=revision
        )
        return pl.DataFrame(
            {
                "begin": [b.begin for b in bars],
                "end": [b.end for b in bars],
                "open": [b.open for b in bars],
                "high": [b.high for b in bars],
                "low": [b.low for b in bars],
                "close": [b.close for b in bars],
                "value": [b.value for b in bars],
                "volume": [b.volume for b in bars],
            },
            schema={
                "begin": pl.Datetime("us"),
                "end": pl.Datetime("us"),
                "open": pl.Float64(),
                "high": pl.Float64(),
                "low": pl.Float64(),
                "close": pl.Float64(),
                "value": pl.Float64(),
                "volume": pl.Int64(),
            },
        )

    def minute_bars(self, secid: str, board: str, day: dt.date, now: dt.datetime) -> list[Bar]:
        """The 1-minute bars of one day as seen at ``now``."""
        start = _midnight(day)
        return self.candles(secid, board, 1, start, start + dt.timedelta(days=1), now)

    def last_trading_day(self, listing: BoardListing, before: dt.date) -> dt.date | None:
        """The last day < ``before`` on which the listing trades (by schedule), if any."""
        day = before - dt.timedelta(days=1)
        if listing.listed_till is not None:
            day = min(day, listing.listed_till)
        while day >= listing.history_from:
            if listing.trades_on(day):
                return day
            day -= dt.timedelta(days=1)
        return None

    def borders(
        self,
        secid: str,
        board: str,
        now: dt.datetime,
        *,
        delay_minutes: float = 0.0,
        revision: int | None = None,
    ) -> list[tuple[dt.datetime, dt.datetime, int]]:
        """``candleborders`` rows (begin, end, interval) in ISS's row order 1, 4, 7, 10, 24, 31, 60.

        Begin is the first bar of the synthetic history; end is the last bar available at ``now``:
        for 1/10/60 its begin + interval - 1 s, for 24 the last trade time, for 4/7/31 the last
        trading day at 00:00:00. Empty when nothing has traded yet.
        """
        listing = self._require(secid, board)
        rev = self.revision if revision is None else revision
        now = self.effective_now(listing, now, delay_minutes)
        first_day = listing.history_from
        while first_day <= now.date() and not self._day_series(listing, first_day, 1, now, rev).begin_min:
            first_day += dt.timedelta(days=1)
            if (first_day - listing.history_from).days > 366:
                return []
        if first_day > now.date():
            return []
        first_minute = self._day_series(listing, first_day, 1, now, rev).begin_min[0]
        last_day = now.date() + dt.timedelta(days=1)
        last_series = _EMPTY_SERIES
        while not last_series.begin_min:
            found = self.last_trading_day(listing, last_day)
            if found is None:
                return []
            last_day = found
            last_series = self._day_series(listing, last_day, 1, now, rev)
        last_minute = last_series.begin_min[-1]
        day_end = _midnight(last_day) + dt.timedelta(seconds=last_series.end_sec[-1])
        rows: list[tuple[dt.datetime, dt.datetime, int]] = []
        for interval in (1, 4, 7, 10, 24, 31, 60):
            if interval in INTRADAY_STEP:
                step = INTRADAY_STEP[interval]
                bucket = first_minute // step * step
                last_bucket = last_minute // step * step
                rows.append(
                    (
                        _midnight(first_day) + dt.timedelta(minutes=bucket),
                        _midnight(last_day) + dt.timedelta(minutes=last_bucket + step, seconds=-1),
                        interval,
                    )
                )
            elif interval == 24:
                rows.append((_midnight(first_day), day_end, interval))
            else:
                rows.append((_midnight(_period_start(first_day, interval)), _midnight(last_day), interval))
        return rows
