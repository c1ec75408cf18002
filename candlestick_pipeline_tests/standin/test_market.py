"""The synthetic market on its own: sessions, determinism, OHLC sanity, aggregation, clock, edits."""

from __future__ import annotations

import datetime as dt

import pytest

from candlestick_pipeline.standin.market import Bar, SyntheticMarket, session_minutes

NOW = dt.datetime(2025, 6, 2, 15, 0, 30)  # a Monday, mid-session
DAY = dt.date(2025, 5, 30)  # a complete Friday before NOW


def _day(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(day.year, day.month, day.day)
    return start, start + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    return SyntheticMarket(seed=0)


def _assert_consistent(bars: list[Bar]) -> None:
    for bar in bars:
        assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high, bar
        assert bar.volume >= 0 and isinstance(bar.volume, int)
    begins = [bar.begin for bar in bars]
    assert begins == sorted(set(begins))


@pytest.mark.parametrize(
    ("secid", "board"),
    [
        ("SBER", "TQBR"),
        ("SBER", "SMAL"),
        ("GAZP", "TQBR"),
        ("SU26238RMFS4", "TQOB"),
        ("SiZ5", "RFUD"),
        ("CNYRUB_TOM", "CETS"),
        ("IMOEX", "SNDX"),
    ],
)
def test_minute_bars_are_consistent_and_rounded(market: SyntheticMarket, secid: str, board: str) -> None:
    listing = market.listing(secid, board)
    assert listing is not None
    bars = market.candles(secid, board, 1, *_day(DAY), NOW)
    assert bars, f"{secid} has no bars on {DAY}"
    _assert_consistent(bars)
    for bar in bars:
        for price in (bar.open, bar.close, bar.high, bar.low):
            assert round(price, listing.decimals) == price
        assert bar.end == bar.begin + dt.timedelta(seconds=59)
    if listing.model.value_kind == "zero":
        assert all(bar.value == 0 and bar.volume > 0 for bar in bars)
    elif listing.model.value_kind == "index":
        assert all(bar.value > 0 and bar.volume == 0 for bar in bars)
    elif listing.model.value_kind == "bond":  # value = price% * 10 * volume (face 1000)
        assert all(
            bar.low * 10 * bar.volume * 0.99 <= bar.value <= bar.high * 10 * bar.volume * 1.01 for bar in bars
        )
    else:
        assert all(bar.low * bar.volume * 0.99 <= bar.value <= bar.high * bar.volume * 1.01 for bar in bars)


def test_minutes_without_trades_are_missing(market: SyntheticMarket) -> None:
    sessions = len(session_minutes("shares", DAY))
    shares = len(market.candles("SBER", "TQBR", 1, *_day(DAY), NOW))
    bond = len(market.candles("SU26238RMFS4", "TQOB", 1, *_day(DAY), NOW))
    assert 0.90 * sessions < shares < sessions
    assert 0.35 * 480 < bond < 0.65 * 480


def test_same_seed_same_data_other_seed_other_data() -> None:
    first = SyntheticMarket(seed=7).candles("GAZP", "TQBR", 10, *_day(DAY), NOW)
    again = SyntheticMarket(seed=7).candles("GAZP", "TQBR", 10, *_day(DAY), NOW)
    other = SyntheticMarket(seed=8).candles("GAZP", "TQBR", 10, *_day(DAY), NOW)
    assert first == again
    assert first != other


def test_sessions_weekends_holidays_and_schedules() -> None:
    assert session_minutes("shares", dt.date(2025, 3, 1))  # the first weekend session (Saturday)
    assert session_minutes("shares", dt.date(2025, 3, 2))
    assert not session_minutes("shares", dt.date(2025, 2, 22))  # a Saturday before weekend sessions
    assert not session_minutes("shares", dt.date(2025, 1, 7))  # holiday
    assert not session_minutes("bonds", dt.date(2025, 3, 1))  # weekend sessions are for shares only
    morning = session_minutes("shares", dt.date(2025, 5, 30))
    assert morning[0] == 6 * 60 + 50 and morning[-1] == 23 * 60 + 49
    assert session_minutes("shares", dt.date(2024, 5, 31))[0] == 9 * 60 + 50  # before the morning session
    assert session_minutes("fx", DAY)[0] == 7 * 60
    assert session_minutes("bonds", DAY)[-1] == 17 * 60 + 59


def test_weekend_bars_from_march_2025(market: SyntheticMarket) -> None:
    daily = market.candles("SBER", "TQBR", 24, dt.datetime(2025, 2, 1), dt.datetime(2025, 4, 1), NOW)
    weekend = [bar.begin.date() for bar in daily if bar.begin.weekday() >= 5]
    assert weekend and min(weekend) == dt.date(2025, 3, 1)
    assert dt.date(2025, 3, 8) not in weekend  # a holiday on a Saturday
    future = market.candles("SiZ5", "RFUD", 24, dt.datetime(2025, 3, 1), dt.datetime(2025, 4, 1), NOW)
    assert all(bar.begin.weekday() < 5 for bar in future)


@pytest.mark.parametrize(("interval", "step"), [(10, 10), (60, 60)])
def test_intraday_aggregation_is_exact(market: SyntheticMarket, interval: int, step: int) -> None:
    minutes = market.candles("SBER", "TQBR", 1, *_day(DAY), NOW)
    buckets = market.candles("SBER", "TQBR", interval, *_day(DAY), NOW)
    assert sum(bar.volume for bar in minutes) == sum(bar.volume for bar in buckets)
    for bucket in buckets:
        inside = [m for m in minutes if m.begin.replace(minute=m.begin.minute // step * step) == bucket.begin]
        assert inside
        assert bucket.open == inside[0].open and bucket.close == inside[-1].close
        assert bucket.high == max(m.high for m in inside) and bucket.low == min(m.low for m in inside)
        assert bucket.volume == sum(m.volume for m in inside)
        assert bucket.value == pytest.approx(sum(m.value for m in inside), rel=1e-12)
        assert bucket.end == inside[-1].end  # the last trade's minute + 59 s
    begins = {bar.begin.time() for bar in market.candles("SBER", "TQBR", 10, *_day(DAY), NOW)}
    assert dt.time(9, 50) in begins and dt.time(6, 50) in begins  # auction and morning buckets


def test_daily_bar_aggregates_the_day(market: SyntheticMarket) -> None:
    minutes = market.candles("GAZP", "TQBR", 1, *_day(DAY), NOW)
    (daily,) = market.candles("GAZP", "TQBR", 24, *_day(DAY), NOW)
    assert daily.begin == dt.datetime(2025, 5, 30) and daily.end == dt.datetime(2025, 5, 30, 23, 59, 59)
    assert (daily.open, daily.close) == (minutes[0].open, minutes[-1].close)
    assert (daily.high, daily.low) == (max(m.high for m in minutes), min(m.low for m in minutes))
    assert daily.volume == sum(m.volume for m in minutes)
    assert daily.value == pytest.approx(sum(m.value for m in minutes), rel=1e-12)


@pytest.mark.parametrize(
    ("interval", "first_begin"),
    [(7, dt.datetime(2025, 1, 6)), (31, dt.datetime(2025, 1, 1)), (4, dt.datetime(2025, 1, 1))],
)
def test_calendar_bars_aggregate_daily_bars(
    market: SyntheticMarket, interval: int, first_begin: dt.datetime
) -> None:
    start, end = dt.datetime(2025, 1, 1), dt.datetime(2025, 7, 1)
    daily = market.candles("SBER", "TQBR", 24, start, end, NOW)
    bars = market.candles("SBER", "TQBR", interval, start, end, NOW)
    assert bars[0].begin == first_begin
    assert sum(bar.volume for bar in bars) == sum(d.volume for d in daily if d.begin >= first_begin)
    for i, bar in enumerate(bars):
        stop = bars[i + 1].begin if i + 1 < len(bars) else end
        days = [d for d in daily if bar.begin <= d.begin < stop]
        assert bar.open == days[0].open and bar.close == days[-1].close
        assert bar.high == max(d.high for d in days) and bar.low == min(d.low for d in days)
        assert bar.end == days[-1].begin  # ISS: the last trading day of the period, 00:00:00


def test_only_started_minutes_exist_and_the_current_one_is_partial(market: SyntheticMarket) -> None:
    today = _day(NOW.date())
    early = market.candles("SBER", "TQBR", 1, *today, NOW.replace(second=10))
    later = market.candles("SBER", "TQBR", 1, *today, NOW.replace(second=50))
    assert early[-1].begin == later[-1].begin == NOW.replace(second=0)
    assert early[:-1] == later[:-1]
    assert early[-1].volume < later[-1].volume
    assert early[-1].end == NOW.replace(second=10)
    full = market.candles("SBER", "TQBR", 1, *today, NOW + dt.timedelta(minutes=1))
    assert full[len(later) - 1].volume > later[-1].volume
    _assert_consistent(early)
    _assert_consistent(later)
    day_early = market.candles("SBER", "TQBR", 24, *today, NOW.replace(second=10))
    day_later = market.candles("SBER", "TQBR", 24, *today, NOW.replace(second=50))
    assert day_early[0].volume < day_later[0].volume
    assert day_later[0].end == NOW.replace(second=50)  # today's daily bar ends at the last trade


def test_delay_hides_the_last_minutes_except_for_the_index(market: SyntheticMarket) -> None:
    today = _day(NOW.date())
    delayed = market.candles("SBER", "TQBR", 1, *today, NOW, delay_minutes=15)
    assert delayed[-1].begin == NOW.replace(second=0) - dt.timedelta(minutes=15)
    index = market.candles("IMOEX", "SNDX", 1, *today, NOW, delay_minutes=15)
    assert index[-1].begin == NOW.replace(second=0)


def test_revision_changes_every_price_but_not_volumes() -> None:
    market = SyntheticMarket()
    original = market.candles("SBER", "TQBR", 1, *_day(DAY), NOW)
    market.set_revision(1)
    revised = market.candles("SBER", "TQBR", 1, *_day(DAY), NOW)
    assert [b.begin for b in original] == [b.begin for b in revised]
    assert all(a.volume == b.volume and a.value == b.value for a, b in zip(original, revised, strict=True))
    assert all(a.open != b.open and a.close != b.close for a, b in zip(original, revised, strict=True))
    market.set_revision(0)
    assert market.candles("SBER", "TQBR", 1, *_day(DAY), NOW) == original


def test_break_candle_makes_high_below_low() -> None:
    market = SyntheticMarket()
    begin = dt.datetime(2025, 5, 30, 12, 0)
    bars = {bar.begin: bar for bar in market.candles("SBER", "TQBR", 1, *_day(DAY), NOW)}
    target = begin if begin in bars else min(b for b in bars if b > begin)
    market.break_candle("SBER", "TQBR", target)
    broken = {bar.begin: bar for bar in market.candles("SBER", "TQBR", 1, *_day(DAY), NOW)}
    assert broken[target].high < broken[target].low
    assert all(broken[b] == bars[b] for b in bars if b != target)
    (daily,) = market.candles("SBER", "TQBR", 24, *_day(DAY), NOW)
    assert daily.low <= broken[target].low and daily.high >= broken[target].high
    gap = next(b + dt.timedelta(minutes=1) for b in sorted(bars) if b + dt.timedelta(minutes=1) not in bars)
    with pytest.raises(ValueError, match="no minute bar"):
        market.break_candle("SBER", "TQBR", gap)


def test_page_offsets_and_reverse(market: SyntheticMarket) -> None:
    start, end = dt.datetime(2025, 5, 26), dt.datetime(2025, 6, 3)
    every = market.candles("GAZP", "TQBR", 1, start, end, NOW)
    pages = [
        market.page("GAZP", "TQBR", 1, start, end, NOW, offset=o, limit=500)
        for o in range(0, len(every) + 500, 500)
    ]
    assert [bar for page in pages for bar in page] == every and pages[-1] == []
    newest = market.page("GAZP", "TQBR", 1, start, end, NOW, offset=10, limit=5, reverse=True)
    assert newest == every[::-1][10:15]


def test_frame_has_the_candle_schema(market: SyntheticMarket) -> None:
    frame = market.candles_frame("SBER", "TQBR", 60, *_day(DAY), NOW)
    assert frame.columns == ["begin", "end", "open", "high", "low", "close", "value", "volume"]
    assert frame.height == len(market.candles("SBER", "TQBR", 60, *_day(DAY), NOW))


def test_future_has_no_bars_outside_its_listing(market: SyntheticMarket) -> None:
    late = dt.datetime(2026, 1, 15, 12, 0)
    bars = market.candles("SiZ5", "RFUD", 24, dt.datetime(2024, 1, 1), dt.datetime(2027, 1, 1), late)
    assert bars[0].begin == dt.datetime(2024, 12, 19) and bars[-1].begin == dt.datetime(2025, 12, 18)


def test_a_benchmarks_whole_range_stays_cached() -> None:
    # B1 at its largest (5 securities x a year of days) is fetched once before timing; if its days
    # fell out of the caches, the stand-in would generate them again on the loader's cores while
    # being timed (a 4 x 365-day B1 at 1024 days: 1.64 x the ideal instead of 1.26 x at C=8).
    market = SyntheticMarket()
    caches = (market._minutes_cached, market._buckets_cached, market._encoded_cached)
    assert all((cache.cache_info().maxsize or 0) >= 5 * 366 for cache in caches)
