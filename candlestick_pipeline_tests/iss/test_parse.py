"""The ISS parsers against every real recorded response, and against malformed payloads."""

from __future__ import annotations

import datetime as dt
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from candlestick_pipeline.defs.iss.errors import (
    ISSResponseError,
    ISSUnavailableError,
    UnknownSecurityError,
    WrongBoardError,
)
from candlestick_pipeline.defs.iss.parse import (
    block_names,
    find_error,
    parse_block,
    parse_borders,
    parse_candle_page,
    parse_candles,
    parse_description,
    parse_security,
)
from candlestick_pipeline.lib.frames import CANDLE_SCHEMA
from candlestick_pipeline_tests.conftest import ISS_SAMPLES

D = dt.date
T = dt.datetime
WIDE = {"date_from": D(2000, 1, 1), "date_till": D(2037, 12, 31)}


def _load(folder: Path, name: str) -> Any:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def _extended(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The same payload in the ``iss.json=extended`` form."""
    blocks = {
        name: [dict(zip(block["columns"], row, strict=True)) for row in block["data"]]
        for name, block in payload.items()
    }
    return [{"charsetinfo": {"name": "utf-8"}}, blocks]


def _reversed_columns(payload: dict[str, Any]) -> dict[str, Any]:
    """The same payload with every block's columns (and row values) in reverse order."""
    return {
        name: {"columns": block["columns"][::-1], "data": [row[::-1] for row in block["data"]]}
        for name, block in payload.items()
    }


def _row(frame: pl.DataFrame, begin: str) -> dict[str, Any]:
    rows = frame.filter(pl.col("begin") == T.fromisoformat(begin)).to_dicts()
    assert len(rows) == 1, begin
    return rows[0]


# --------------------------------------------------------------------------------------------------
# One check per recorded file. A new sample without an entry here fails test_sample.


def _check_borders_fxgd(payload: Any) -> None:
    borders = parse_borders(payload)
    assert sorted(borders) == [1, 4, 7, 10, 24, 31, 60]
    assert borders[1] == (T(2014, 6, 9, 14, 0), T(2021, 1, 22, 23, 59, 59))
    assert borders[4] == (T(2014, 4, 1), T(2021, 1, 23))
    assert borders[10] == (T(2014, 6, 9, 14, 0), T(2021, 1, 22, 23, 49, 59))
    assert borders[60] == (T(2014, 6, 9, 14, 0), T(2021, 1, 22, 23, 59, 53))
    durations = {row["interval"]: row for row in parse_block(payload, "durations")}
    assert {k: v["duration"] for k, v in durations.items()} == {
        1: 60,
        10: 600,
        60: 3600,
        24: 86400,
        7: 604800,
        31: 2678400,
        4: 8035200,
    }
    assert durations[1]["title"] == "минута"
    assert durations[31]["hint"] == "1М"
    assert all(row["days"] is None for row in durations.values())


def _check_borders_gazp_board(payload: Any) -> None:
    borders = parse_borders(payload)
    assert sorted(borders) == [1, 4, 7, 10, 24, 31, 60]
    assert borders[1] == (T(2014, 6, 9, 10, 0), T(2023, 5, 18, 18, 59, 59))
    assert borders[24] == (T(2014, 6, 9), T(2023, 5, 18, 19, 0, 43))
    assert borders[31] == (T(2014, 6, 1), T(2023, 5, 18))
    assert block_names(payload) == ("borders", "durations")
    assert len(parse_block(payload, "durations")) == 7


def _check_borders_gazp_boardgroup_empty(payload: Any) -> None:
    assert parse_borders(payload) == {}
    assert block_names(payload) == ("borders",)
    assert parse_block(payload, "borders") == []


def _check_borders_gazp_market(payload: Any) -> None:
    borders = parse_borders(payload)
    assert borders[10] == (T(2011, 12, 8, 10, 0), T(2023, 5, 18, 18, 49, 59))
    assert borders[60] == (T(2011, 11, 17, 10, 0), T(2023, 5, 18, 18, 59, 59))
    assert borders[24] == (T(2006, 1, 23), T(2023, 5, 18, 19, 0, 34))
    assert {row["board_group_id"] for row in parse_block(payload, "borders")} == {57}


def _check_candles_fxgd_post_split(payload: Any) -> None:
    page = parse_candle_page(payload, date_from=D(2020, 1, 1), date_till=D(2021, 1, 1))
    frame = page.frame
    assert (page.rows_received, page.rows_outside_window, frame.height) == (13, 0, 13)
    first = frame.row(0, named=True)
    assert first == {
        "begin": T(2020, 1, 1),
        "end": T(2020, 1, 31),
        "open": 65.58,
        "high": 69.7,
        "low": 64.92,
        "close": 69.67999999999999,
        "value": 1529933669.0,
        "volume": 2278467,
    }
    assert _row(frame, "2020-02-01 00:00:00")["value"] == 3284003826.000001
    assert _row(frame, "2020-08-01 00:00:00")["high"] == 104.0
    last = frame.row(-1, named=True)
    assert (last["begin"], last["end"], last["close"]) == (T(2021, 1, 1), T(2021, 1, 30), 94.5)
    assert last["value"] == 2705393071.7999997


def _check_candles_fxgd_pre_split(payload: Any) -> None:
    frame = parse_candles(payload, date_from=D(2020, 1, 1), date_till=D(2021, 1, 23))
    assert frame.height == 13
    assert frame.row(0, named=True)["open"] == 655.8
    assert _row(frame, "2020-07-01 00:00:00")["close"] == 1004.2
    last = frame.row(-1, named=True)
    assert (last["close"], last["end"], last["volume"]) == (945.0, T(2021, 1, 23), 2219087)
    post = parse_candles(
        _load(ISS_SAMPLES, "candles_FXGD_TQTF_i31_2020-01-01_2021-01-01_rec2022-07-23.json"),
        date_from=D(2020, 1, 1),
        date_till=D(2020, 12, 31),
    )
    pre_2020 = frame.filter(pl.col("begin") < T(2021, 1, 1))
    # The split rescaled prices by 10 but left value and volume as they were.
    assert pre_2020.select("begin", "value", "volume").equals(post.select("begin", "value", "volume"))
    assert (pre_2020["open"] / post["open"]).round(6).unique().to_list() == [10.0]


def _check_candles_gazp_board(payload: Any) -> None:
    frame = parse_candles(payload, date_from=D(2014, 6, 9), date_till=D(2014, 6, 24))
    assert frame.schema == pl.Schema(CANDLE_SCHEMA)
    assert frame.height == 500
    assert frame["begin"].is_sorted() and frame["begin"].is_unique().all()
    first = frame.row(0, named=True)
    assert (first["begin"], first["end"]) == (T(2014, 6, 9, 10, 0), T(2014, 6, 9, 10, 9, 59))
    assert (first["open"], first["close"], first["low"]) == (144.02, 144.16, 144.0)
    assert (first["value"], first["volume"]) == (115259065.89999999, 798230)
    last = frame.row(-1, named=True)
    assert (last["begin"], last["end"]) == (T(2014, 6, 24, 16, 10), T(2014, 6, 24, 16, 19, 59))
    assert last["value"] == 117943160.69999996
    # A bucket in which trading stopped early ends at the last trade.
    assert _row(frame, "2014-06-11 11:20:00")["end"] == T(2014, 6, 11, 11, 29, 20)
    per_day = frame.group_by(pl.col("begin").dt.date()).len().sort("begin")
    assert dict(per_day.iter_rows())[D(2014, 6, 11)] == 46
    # Only the first page: a narrower window drops (and counts) what lies outside it.
    page = parse_candle_page(payload, date_from=D(2014, 6, 10), date_till=D(2014, 6, 10))
    assert (page.frame.height, page.rows_outside_window, page.rows_received) == (52, 448, 500)


def _check_candles_gazp_market(payload: Any) -> None:
    board = _load(ISS_SAMPLES, "candles_GAZP_TQBR_i10_no-params-first-page-500rows_rec2023-05.json")
    assert parse_candles(payload, **WIDE).equals(parse_candles(board, **WIDE))
    assert parse_candles(payload, **WIDE).height == 500


def _check_candles_gazp_boardgroup(payload: Any) -> None:
    frame = parse_candles(payload, **WIDE)
    assert frame.height == 500
    first, last = frame.row(0, named=True), frame.row(-1, named=True)
    assert (first["begin"], first["open"], first["volume"]) == (T(2011, 12, 8, 10, 0), 175.99, 1074620)
    assert (last["begin"], last["end"]) == (T(2011, 12, 21, 13, 40), T(2011, 12, 21, 13, 49, 59))


def _check_candles_sber_final(payload: Any) -> None:
    frame = parse_candles(payload, date_from=D(2020, 1, 1), date_till=D(2021, 1, 1))
    assert frame.height == 13
    february = _row(frame, "2020-02-01 00:00:00")
    assert february["value"] == 229515686974.59998
    assert february["low"] == 231.0 and isinstance(february["low"], float)
    assert february["volume"] == 919822790
    assert _row(frame, "2020-04-01 00:00:00")["value"] == 339626472207.49994
    last = frame.row(-1, named=True)
    assert (last["begin"], last["end"], last["close"]) == (T(2021, 1, 1), T(2021, 1, 30), 258.11)
    # ``till`` is inclusive on begin dates: the bar that begins on till is kept whole.
    page = parse_candle_page(payload, date_from=D(2020, 1, 1), date_till=D(2020, 12, 31))
    assert (page.frame.height, page.rows_outside_window) == (12, 1)


def _check_candles_sber_partial(payload: Any) -> None:
    frame = parse_candles(payload, date_from=D(2020, 1, 1), date_till=D(2021, 1, 23))
    assert frame.height == 13
    last = frame.row(-1, named=True)
    assert (last["close"], last["end"], last["volume"]) == (268.25, T(2021, 1, 23), 980382340)
    final = parse_candles(
        _load(ISS_SAMPLES, "candles_SBER_TQBR_i31_2020-01-01_2021-01-01_rec2022-07-23.json"),
        date_from=D(2020, 1, 1),
        date_till=D(2021, 1, 1),
    )
    # The closed months did not change; only the month in progress did.
    assert frame.head(12).equals(final.head(12))
    assert final.row(-1, named=True)["close"] == 258.11


def _check_history_dates(payload: Any) -> None:
    assert parse_block(payload, "dates") == [{"from": "2013-03-25", "till": "2023-05-17"}]


def _check_index_meta_off(payload: Any) -> None:
    assert block_names(payload) == (
        "engines",
        "markets",
        "boards",
        "boardgroups",
        "durations",
        "securitytypes",
        "securitygroups",
        "securitycollections",
    )
    assert [row["interval"] for row in parse_block(payload, "durations")] == [1, 10, 60, 24, 7, 31, 4]
    boards = {row["boardid"]: row for row in parse_block(payload, "boards")}
    assert len(parse_block(payload, "boards")) == 294
    assert boards["TQBR"]["has_candles"] == 1 and boards["TQBR"]["board_group_id"] == 57
    assert len(parse_block(payload, "engines")) == 8
    assert len(parse_block(payload, "boardgroups")) == 178


def _check_index_full(payload: Any) -> None:
    assert len(parse_block(payload, "engines")) == 9
    assert len(parse_block(payload, "markets")) == 43
    assert len(parse_block(payload, "boards")) == 384
    durations = parse_block(payload, "durations")
    assert {row["interval"]: row["duration"] for row in durations}[4] == 8035200
    delay = {
        (row["trade_engine_name"], row["market_name"]): row["has_delay"]
        for row in parse_block(payload, "markets")
    }
    assert delay[("stock", "shares")] == 1 and delay[("stock", "index")] == 0
    boards = {row["boardid"]: row for row in parse_block(payload, "boards")}
    assert boards["TQOB"]["is_primary"] == 1 and boards["RFUD"]["board_group_id"] == 45


def _check_securities_fxgd(payload: Any) -> None:
    info = parse_security(payload, "FXGD", None)
    assert (info.secid, info.board, info.engine, info.market) == ("FXGD", "TQTF", "stock", "shares")
    assert (info.decimals, info.currency, info.is_primary, info.is_traded) == (1, "RUB", True, True)
    assert (info.isin, info.shortname, info.name) == ("IE00B8XB7377", "FXGD ETF", "FinEx Gold ETF USD")
    assert (info.security_type, info.security_group) == ("etf_ppif", "stock_etf")
    assert (info.listed_from, info.history_till) == (D(2014, 6, 9), D(2021, 1, 22))
    assert "TQTD" in info.other_boards and "TQTF" not in info.other_boards
    assert len(info.other_boards) == 27
    usd = parse_security(payload, "FXGD", " tqtd ")
    assert (usd.board, usd.currency, usd.decimals, usd.is_primary) == ("TQTD", "USD", 2, False)
    assert usd.listed_from == D(2019, 5, 6) and "TQTF" in usd.other_boards
    with pytest.raises(WrongBoardError) as caught:
        parse_security(payload, "FXGD", "TQBR")
    assert caught.value.board == "TQBR" and {"TQTF", "TQTD"} <= set(caught.value.boards)
    assert "'FXGD'" in str(caught.value) and "'TQBR'" in str(caught.value) and "TQTD" in str(caught.value)
    description = parse_description(payload)
    assert description["ISSUEDATE"] == D(2013, 10, 17)
    assert description["LISTLEVEL"] == 1 and description["EMITTER_ID"] == 2679
    assert description["EVENINGSESSION"] is True and description["ISQUALIFIEDINVESTORS"] is False


def _check_securities_gazp(payload: Any) -> None:
    info = parse_security(payload, "GAZP", None)
    assert (info.board, info.decimals, info.currency) == ("TQBR", 2, "RUB")
    assert (info.listed_till, info.history_till) == (D(2023, 5, 18), D(2023, 5, 17))
    assert info.name == '"Газпром" (ПАО) ао' and info.isin == "RU0007661625"
    assert len(info.other_boards) == 57
    assert len(parse_description(payload)) == 19
    assert parse_description(payload)["MORNINGSESSION"] is True
    smal = parse_security(payload, "GAZP", "SMAL")
    assert (smal.board, smal.is_primary, smal.history_from) == ("SMAL", False, D(2011, 3, 1))


def _sber_2021_common(payload: Any) -> None:
    info = parse_security(payload, "SBER", None)
    assert (info.secid, info.board, info.engine, info.market) == ("SBER", "TQBR", "stock", "shares")
    assert (info.decimals, info.currency, info.isin) == (2, "RUB", "RU0009029540")
    assert (info.listed_from, info.listed_till) == (D(2013, 3, 25), D(2021, 1, 22))
    assert (info.security_type, info.security_group) == ("common_share", "stock_shares")
    assert len(info.other_boards) == 36
    description = parse_description(payload)
    assert description["ISSUESIZE"] == 21586948000 and description["FACEVALUE"] == 3
    eqbr = parse_security(payload, "SBER", "EQBR")
    assert (eqbr.is_traded, eqbr.history_till) == (False, D(2013, 8, 30))
    tqdp = parse_security(payload, "SBER", "TQDP")
    assert (tqdp.history_from, tqdp.listed_from) == (None, D(2019, 3, 4))


def _check_securities_sber_1320(payload: Any) -> None:
    _sber_2021_common(payload)
    description = parse_description(payload)
    assert description["HASPROSPECTUS"] is True
    assert description["DECISIONDATE"] == D(2007, 7, 16)


def _check_securities_sber_1909(payload: Any) -> None:
    _sber_2021_common(payload)
    assert "HASPROSPECTUS" not in parse_description(payload)
    other = _load(ISS_SAMPLES, "securities_SBER_rec2021-01-23T13-20Z.json")
    assert parse_security(payload, "SBER", None) == parse_security(other, "SBER", None)


def _check_securities_sber_2025(payload: Any) -> None:
    assert "metadata" not in payload["boards"]
    info = parse_security(payload, "SBER", None)
    assert (info.board, info.decimals, info.currency) == ("TQBR", 2, "RUB")
    assert (info.listed_till, info.history_till) == (D(2025, 12, 11), D(2025, 12, 10))
    assert len(info.other_boards) == 50
    assert parse_block(payload, "boards")[0]["unit"] == "M"
    description = parse_description(payload)
    assert description["WEEKENDSESSION"] is True and description["EMITTER_ID"] == 484
    assert description["REGISTRY_DATE"] == D(2007, 7, 11)


def _check_securities_unknown(payload: Any) -> None:
    with pytest.raises(UnknownSecurityError, match=r"^ISS has no security 'XXXX'$"):
        parse_security(payload, "XXXX", None)
    with pytest.raises(UnknownSecurityError):
        parse_security(payload, "XXXX", "TQBR")
    assert parse_description(payload) == {}


CHECKS: dict[str, Callable[[Any], None]] = {
    "candleborders_FXGD_TQTF_board_rec2021-01-23.json": _check_borders_fxgd,
    "candleborders_GAZP_TQBR_board_rec2023-05-18.json": _check_borders_gazp_board,
    "candleborders_GAZP_boardgroup-stock_shares_tplus_EMPTY_rec2023-05.json": (
        _check_borders_gazp_boardgroup_empty
    ),
    "candleborders_GAZP_market-shares_rec2023-05-18.json": _check_borders_gazp_market,
    "candles_FXGD_TQTF_i31_2020-01-01_2021-01-01_rec2022-07-23.json": _check_candles_fxgd_post_split,
    "candles_FXGD_TQTF_i31_from2020-01-01_rec2021-01-23_pre-split-prices.json": _check_candles_fxgd_pre_split,
    "candles_GAZP_TQBR_i10_no-params-first-page-500rows_rec2023-05.json": _check_candles_gazp_board,
    "candles_GAZP_boardgroup-stock_shares_tplus_i10_no-params-first-page-500rows_rec2023-05.json": (
        _check_candles_gazp_boardgroup
    ),
    "candles_GAZP_market-shares_i10_no-params-first-page-500rows_rec2023-05.json": _check_candles_gazp_market,
    "candles_SBER_TQBR_i31_2020-01-01_2021-01-01_rec2022-07-23.json": _check_candles_sber_final,
    "candles_SBER_TQBR_i31_from2020-01-01_rec2021-01-23_partial-current-month.json": (
        _check_candles_sber_partial
    ),
    "history_dates_stock_shares_TQBR_rec2023-05.json": _check_history_dates,
    "index_global-reference_iss-meta-off_rec2022-01.json": _check_index_meta_off,
    "index_global-reference_rec2023-05.json": _check_index_full,
    "securities_FXGD_rec2021-01-23.json": _check_securities_fxgd,
    "securities_GAZP_rec2023-05-18.json": _check_securities_gazp,
    "securities_SBER_rec2021-01-23T13-20Z.json": _check_securities_sber_1320,
    "securities_SBER_rec2021-01-23T19-09Z.json": _check_securities_sber_1909,
    "securities_SBER_rec2025-12-11_reformatted-iss-meta-off.json": _check_securities_sber_2025,
    "securities_XXXX_unknown-secid_empty_rec2021-01-23.json": _check_securities_unknown,
}

SAMPLE_NAMES = sorted(path.name for path in ISS_SAMPLES.glob("*.json"))


def test_samples_folder_is_complete(iss_samples: Path) -> None:
    names = sorted(path.name for path in iss_samples.glob("*.json"))
    assert names, f"no recorded responses in {iss_samples}"
    assert set(CHECKS) <= set(names), f"samples gone: {sorted(set(CHECKS) - set(names))}"


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample(iss_samples: Path, name: str) -> None:
    payload = _load(iss_samples, name)
    if name not in CHECKS:
        pytest.fail(f"recorded response {name} has no test: add a check to CHECKS in {__file__}")
    assert find_error(payload) is None
    CHECKS[name](payload)


@pytest.mark.parametrize("name", [n for n in SAMPLE_NAMES if n.startswith(("candles_", "securities_"))])
def test_sample_parses_the_same_in_every_form(iss_samples: Path, name: str) -> None:
    """Extended form, and columns in another order, give exactly what the plain form gives."""
    payload = _load(iss_samples, name)
    variants = [_extended(payload), _reversed_columns(payload)]
    if name.startswith("candles_"):
        expected = parse_candles(payload, **WIDE)
        for variant in variants:
            assert parse_candles(variant, **WIDE).equals(expected)
    else:
        secid = name.split("_")[1]
        try:
            expected_info = parse_security(payload, secid, None)
        except UnknownSecurityError:
            for variant in variants:
                with pytest.raises(UnknownSecurityError):
                    parse_security(variant, secid, None)
            return
        for variant in variants:
            assert parse_security(variant, secid, None) == expected_info
            assert parse_description(variant) == parse_description(payload)


# --------------------------------------------------------------------------------------------------
# Malformed and unusual payloads


def _candles(rows: list[list[Any]], columns: list[str] | None = None) -> dict[str, Any]:
    cols = columns or ["open", "close", "high", "low", "value", "volume", "begin", "end"]
    return {"candles": {"columns": cols, "data": rows}}


GOOD_ROW = [
    308,
    308.65,
    308.65,
    307.9,
    56807477.99000005,
    184188,
    "2026-01-30 07:00:00",
    "2026-01-30 07:09:59",
]


def test_docs_example_row_with_int_prices_and_float_value() -> None:
    frame = parse_candles(_candles([GOOD_ROW]), date_from=D(2026, 1, 30), date_till=D(2026, 1, 30))
    assert frame.schema == pl.Schema(CANDLE_SCHEMA)
    assert frame.row(0, named=True) == {
        "begin": T(2026, 1, 30, 7, 0),
        "end": T(2026, 1, 30, 7, 9, 59),
        "open": 308.0,
        "high": 308.65,
        "low": 307.9,
        "close": 308.65,
        "value": 56807477.99000005,
        "volume": 184188,
    }


def test_integral_float_volume_is_accepted() -> None:
    row = [*GOOD_ROW[:5], 12.0, *GOOD_ROW[6:]]
    assert parse_candles(_candles([row]), **WIDE)["volume"].to_list() == [12]


@pytest.mark.parametrize(
    ("position", "value", "message"),
    [
        (5, 2.5, "volume 2.5 is not a whole number"),
        (5, "12", "volume '12' is not a number"),
        (5, None, "volume None is not a number"),
        (0, "308", "open '308' is not a number"),
        (0, True, "open True is not a number"),
        (4, None, "value None is not a number"),
        (6, "30.01.2026 07:00", "begin '30.01.2026 07:00' is not a date-time"),
        (6, 1769756400, "begin 1769756400 is not a date-time string"),
        (7, "2026-01-30T07:09:59+03:00", "carries a time zone"),
    ],
)
def test_bad_candle_values_are_response_errors(position: int, value: Any, message: str) -> None:
    row = list(GOOD_ROW)
    row[position] = value
    with pytest.raises(ISSResponseError, match="row 0") as caught:
        parse_candles(_candles([row]), **WIDE)
    assert message in str(caught.value)


def test_missing_column_is_named() -> None:
    columns = ["open", "close", "high", "low", "value", "begin", "end"]
    with pytest.raises(ISSResponseError, match=r"lacks the column\(s\) \['volume'\]"):
        parse_candles(_candles([GOOD_ROW[:5] + GOOD_ROW[6:]], columns), **WIDE)


def test_extra_columns_are_ignored() -> None:
    columns = ["open", "close", "high", "low", "value", "volume", "begin", "end", "waprice"]
    frame = parse_candles(_candles([[*GOOD_ROW, 308.4]], columns), **WIDE)
    assert frame.columns == list(CANDLE_SCHEMA)


def test_row_of_wrong_length() -> None:
    with pytest.raises(ISSResponseError, match="row 0 does not have the 8 columns"):
        parse_candles(_candles([GOOD_ROW[:-1]]), **WIDE)


@pytest.mark.parametrize(
    "payload",
    [
        {"candles": {"columns": ["begin"]}},
        {"candles": {"data": []}},
        {"candles": "nothing"},
        {"candles": [1, 2]},
        {"other": {"columns": [], "data": []}},
        "candles",
        42,
        [{"charsetinfo": {}}, "candles"],
    ],
)
def test_wrong_shapes_are_response_errors(payload: Any) -> None:
    with pytest.raises(ISSResponseError):
        parse_candles(payload, **WIDE)


def test_empty_pages_in_both_forms() -> None:
    for payload in (_candles([]), [{"charsetinfo": {"name": "utf-8"}}, {"candles": []}]):
        page = parse_candle_page(payload, **WIDE)
        assert (page.rows_received, page.rows_outside_window) == (0, 0)
        assert page.frame.is_empty() and page.frame.schema == pl.Schema(CANDLE_SCHEMA)


def test_error_block_in_a_200_body() -> None:
    payload = {"candles": {"error": "Error while acquiring data."}}
    assert find_error(payload) == "candles: Error while acquiring data."
    assert find_error([{"charsetinfo": {}}, payload]) == "candles: Error while acquiring data."
    assert find_error({"error": "boom"}) == "boom"
    assert find_error(_candles([GOOD_ROW])) is None
    assert find_error("not a payload") is None
    with pytest.raises(ISSResponseError, match="Error while acquiring data"):
        parse_candles(payload, **WIDE)


def test_rows_outside_the_window_are_dropped_and_counted() -> None:
    rows = [
        [*GOOD_ROW[:6], "2026-01-29 23:50:00", "2026-01-29 23:59:59"],
        GOOD_ROW,
        [*GOOD_ROW[:6], "2026-01-31 00:00:00", "2026-01-31 00:09:59"],
    ]
    page = parse_candle_page(_candles(rows), date_from=D(2026, 1, 30), date_till=D(2026, 1, 30))
    assert (page.rows_received, page.rows_outside_window, page.frame.height) == (3, 2, 1)
    assert page.frame["begin"].to_list() == [T(2026, 1, 30, 7, 0)]


def test_description_values_that_do_not_fit_their_type_stay_strings() -> None:
    payload = {
        "description": {
            "columns": ["name", "value", "type"],
            "data": [
                ["A", "not-a-date", "date"],
                ["B", "1.5", "number"],
                ["C", "maybe", "boolean"],
                ["D", None, "number"],
                ["E", "x", "something_new"],
                ["F", "-3", "number"],
            ],
        }
    }
    assert parse_description(payload) == {
        "A": "not-a-date",
        "B": 1.5,
        "C": "maybe",
        "D": None,
        "E": "x",
        "F": -3,
    }


def _boards(*rows: dict[str, Any]) -> dict[str, Any]:
    base = {"secid": "SiZ5", "engine": "futures", "market": "forts", "is_traded": 1, "decimals": 0}
    full = [{**base, **row} for row in rows]
    columns = list(full[0])
    return {"boards": {"columns": columns, "data": [[row.get(col) for col in columns] for row in full]}}


def test_security_secid_comes_from_iss_and_keeps_its_case() -> None:
    payload = _boards({"boardid": "RFUD", "is_primary": 1})
    info = parse_security(payload, "siz5", None)
    assert (info.secid, info.board, info.engine, info.market) == ("SiZ5", "RFUD", "futures", "forts")
    assert (info.name, info.isin, info.listed_from, info.currency, info.other_boards) == (
        None,
        None,
        None,
        None,
        (),
    )


def test_security_without_a_primary_board_needs_an_explicit_board() -> None:
    payload = _boards({"boardid": "RFUD", "is_primary": 0}, {"boardid": "ROPD", "is_primary": 0})
    with pytest.raises(ISSResponseError, match="RFUD, ROPD"):
        parse_security(payload, "SiZ5", None)
    assert parse_security(payload, "SiZ5", "ropd").board == "ROPD"


def test_security_with_malformed_board_values() -> None:
    with pytest.raises(ISSResponseError, match="listed_from"):
        parse_security(_boards({"boardid": "RFUD", "is_primary": 1, "listed_from": "18.05.2023"}), "x")
    with pytest.raises(ISSResponseError, match="decimals"):
        parse_security(_boards({"boardid": "RFUD", "is_primary": 1, "decimals": "2"}), "x")
    with pytest.raises(ISSResponseError, match="boardid"):
        parse_security({"boards": {"columns": ["secid"], "data": [["X"]]}}, "x")


def test_borders_widest_range_per_interval_and_bad_interval() -> None:
    payload: dict[str, Any] = {
        "borders": {
            "columns": ["begin", "end", "interval", "board_group_id"],
            "data": [
                ["2011-12-15 10:00:00", "2023-05-18 18:59:59", 1, 57],
                ["2010-01-01 10:00:00", "2020-01-01 00:00:00", 1, 6],
            ],
        }
    }
    assert parse_borders(payload) == {1: (T(2010, 1, 1, 10, 0), T(2023, 5, 18, 18, 59, 59))}
    payload["borders"]["data"][0][2] = "1"
    with pytest.raises(ISSResponseError, match="interval '1' is not an integer"):
        parse_borders(payload)


def test_errors_name_what_went_wrong_and_survive_pickling() -> None:
    errors: list[Exception] = [
        ISSUnavailableError("https://iss.example/iss/x.json?a=1", 6, "HTTP 503 Service Unavailable"),
        ISSUnavailableError("https://iss.example/iss/x.json", 1, TimeoutError("read timed out")),
        ISSResponseError("HTTP 404 Not Found", url="https://iss.example/iss/y.json", status=404),
        UnknownSecurityError("XXXX"),
        WrongBoardError("FXGD", "TQBR", ("TQTF", "TQTD")),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
    assert str(errors[0]) == (
        "ISS is unavailable: https://iss.example/iss/x.json?a=1 failed after 6 attempts; "
        "last error: HTTP 503 Service Unavailable"
    )
    assert "TimeoutError: read timed out" in str(errors[1]) and "1 attempt;" in str(errors[1])
    assert "https://iss.example/iss/y.json" in str(errors[2]) and errors[2].status == 404  # type: ignore[attr-defined]
    assert str(errors[3]) == "ISS has no security 'XXXX'"
    assert str(errors[4]) == "security 'FXGD' does not trade on board 'TQBR'; ISS lists it on: TQTF, TQTD"
    bare = ISSResponseError("bad shape")
    assert bare.with_url("https://iss.example/z").url == "https://iss.example/z"
    assert "https://iss.example/z" in str(bare.with_url("https://iss.example/z"))


@pytest.mark.parametrize("name", [n for n in SAMPLE_NAMES if n.startswith("candles_")])
@pytest.mark.parametrize("window", ["wide", "narrow"])
def test_column_wise_fast_path_equals_row_by_row(
    iss_samples: Path, name: str, window: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The column-wise parse of a well-formed page gives exactly what the row-by-row parse gives."""
    from candlestick_pipeline.defs.iss import parse as parse_module

    payload = _load(iss_samples, name)
    rows = payload["candles"]["data"]
    if window == "wide" or not rows:
        bounds = WIDE
    else:  # only the days of the first rows: the rest is dropped and counted
        first = D.fromisoformat(rows[0][payload["candles"]["columns"].index("begin")][:10])
        bounds = {"date_from": first, "date_till": first + dt.timedelta(days=40)}
    fast = parse_module._fast_candle_page(payload, bounds["date_from"], bounds["date_till"])
    assert (fast is None) == (not rows)  # every recorded page with rows takes the fast path
    monkeypatch.setattr(parse_module, "_fast_candle_page", lambda *args: None)
    slow = parse_candle_page(payload, **bounds)
    if fast is not None:
        assert fast.frame.equals(slow.frame)
        assert (fast.rows_received, fast.rows_outside_window) == (
            slow.rows_received,
            slow.rows_outside_window,
        )
        if window == "narrow":
            assert fast.frame.height > 0


@pytest.mark.parametrize(
    "value",
    [True, None, "308", float("nan"), float("inf")],
)
def test_odd_prices_leave_the_fast_path(value: Any) -> None:
    from candlestick_pipeline.defs.iss.parse import _fast_candle_page

    row = list(GOOD_ROW)
    row[0] = value
    assert _fast_candle_page(_candles([GOOD_ROW, row]), D(2026, 1, 30), D(2026, 1, 30)) is None
    assert _fast_candle_page(_candles([GOOD_ROW]), D(2026, 1, 30), D(2026, 1, 30)) is not None


def test_finite_prices_whose_sum_overflows_parse_as_they_are() -> None:
    """The fast path tells finite columns by their sum; when that overflows, the row-by-row parser
    takes the page and keeps every price."""
    from candlestick_pipeline.defs.iss.parse import _fast_candle_page

    rows = [list(GOOD_ROW), list(GOOD_ROW)]
    rows[1][6], rows[1][7] = "2026-01-30 07:01:00", "2026-01-30 07:01:59"
    for row in rows:
        row[4] = 1.5e308
    assert _fast_candle_page(_candles(rows), D(2026, 1, 30), D(2026, 1, 30)) is None
    page = parse_candle_page(_candles(rows), date_from=D(2026, 1, 30), date_till=D(2026, 1, 30))
    assert page.frame["value"].to_list() == [1.5e308, 1.5e308]


def test_fast_path_drops_rows_outside_the_window_only_when_there_are_some() -> None:
    from candlestick_pipeline.defs.iss.parse import _fast_candle_page

    rows = [list(GOOD_ROW), list(GOOD_ROW)]
    rows[1][6], rows[1][7] = "2026-01-31 07:00:00", "2026-01-31 07:00:59"
    both = _fast_candle_page(_candles(rows), D(2026, 1, 30), D(2026, 1, 31))
    first = _fast_candle_page(_candles(rows), D(2026, 1, 30), D(2026, 1, 30))
    second = _fast_candle_page(_candles(rows), D(2026, 1, 31), D(2026, 2, 1))
    assert both is not None and first is not None and second is not None
    assert (both.frame.height, both.rows_outside_window) == (2, 0)
    assert first.frame["begin"].to_list() == [T(2026, 1, 30, 7, 0)] and first.rows_outside_window == 1
    assert second.frame["end"].to_list() == [T(2026, 1, 31, 7, 0, 59)] and second.rows_outside_window == 1


@pytest.mark.parametrize(
    ("position", "value"),
    [
        (5, 12.0),
        (5, 2**70),
        (6, "2026-1-30 07:00:00"),
        (6, "2026-01-30T07:00:00"),
        (7, "2026-01-30 07:09:59+03"),
        (6, "2026-02-30 07:00:00"),  # the right shape, no such day
        (6, "2026-01-30 07:00:00\n2026-01-30 07:01:00"),  # two timestamps in one value
    ],
)
def test_odd_volumes_and_timestamps_leave_the_fast_path(position: int, value: Any) -> None:
    from candlestick_pipeline.defs.iss.parse import _fast_candle_page

    row = list(GOOD_ROW)
    row[position] = value
    assert _fast_candle_page(_candles([row]), D(2026, 1, 30), D(2026, 1, 30)) is None
