"""Fetch candle partitions from ISS and replace them in the warehouse, a span of partitions at a time.

The asset hands this module the partitions of its run. Adjacent partitions are grouped into *fetch
spans*: one ISS stream (``from`` = the span's first day, ``till`` = its last) pages straight through
them, and the candles are split back into partitions by ``begin``. Paging each day on its own costs
a partial page plus an empty closing page per day: for 1-minute candles (about 1,000 a day) that is
3 requests where a stream needs about 2 (docs/benchmarks.md, B1). Spans are sized so that there are
at least as many as ISS concurrency allows, in multiples of it, so the fetches stay balanced; and a
span is capped (``_MAX_SPAN``), so memory stays flat in the length of the range.

Spans are fetched concurrently (bounded by the ISS client's own limit). Each span is written in ONE
transaction as soon as its fetch is done, so a failure loses at most the spans in flight (they are
simply not written; every partition that was written is complete).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl
import sqlalchemy as sa

from candlestick_pipeline.config import fetch_span_max
from candlestick_pipeline.defs.candles.partitions import CandlePartition
from candlestick_pipeline.defs.iss.client import CandleFetch, ISSClient
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityInfo
from candlestick_pipeline.lib.timeframes import MOSCOW, Grain, Timeframe, window_to_iss_dates

# The longest span, in partitions: about 60 pages of 1-minute candles, 75 of 10-minute candles,
# a dozen of hourly ones, a few of the rest. Longer spans would only hold more rows in memory.
# CANDLESTICK_FETCH_SPAN_MAX lowers it (1 = a request stream per partition).
_MAX_SPAN = {Grain.DAY: 31, Grain.MONTH: 12, Grain.YEAR: 10}


@dataclass(frozen=True)
class FetchSpan:
    """Adjacent partitions of one security that are fetched as one ISS stream."""

    partitions: tuple[CandlePartition, ...]

    @property
    def start(self) -> dt.datetime:
        return self.partitions[0].start

    @property
    def end(self) -> dt.datetime:
        return self.partitions[-1].end

    def describe(self) -> str:
        first, last = self.partitions[0].date_key, self.partitions[-1].date_key
        dates = first if first == last else f"{first} .. {last}"
        return f"{dates} ({len(self.partitions)} partition{'s' if len(self.partitions) > 1 else ''})"


@dataclass(frozen=True)
class PartitionLoad:
    """What loading one partition did: the rows written, and the ISS fetch (span) that brought them.

    ``pages``, ``requests`` and ``retries`` are those of the whole fetch, which ``fetch`` names; the
    partitions of one span share them, so add them up once per fetch, not per partition.
    """

    partition: CandlePartition
    rows: int
    first_begin: dt.datetime | None
    last_begin: dt.datetime | None
    fetch: str
    pages: int
    requests: int
    retries: int
    final: bool

    def metadata(self) -> dict[str, object]:
        """Partition metadata for the Dagster UI (plain values; Dagster wraps them)."""
        return {
            "dagster/row_count": self.rows,
            "rows": self.rows,
            "first_begin": _fmt(self.first_begin),
            "last_begin": _fmt(self.last_begin),
            "iss_fetch": self.fetch,
            "iss_pages": self.pages,
            "iss_requests": self.requests,
            "iss_retries": self.retries,
            "final": self.final,
            "window": f"{_fmt(self.partition.start_naive)} .. {_fmt(self.partition.end_naive)} MSK",
        }


def _fmt(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def is_final(partition: CandlePartition, loaded_at: dt.datetime, final_after: dt.timedelta) -> bool:
    """A partition loaded before its period closed (plus ISS's settling delay) is not final."""
    return loaded_at >= partition.end + final_after


def plan_spans(
    partitions: Sequence[CandlePartition], timeframe: Timeframe, concurrency: int
) -> list[FetchSpan]:
    """Group partitions (sorted by start) into fetch spans.

    Only adjacent partitions of the same security share a span. Each contiguous run of N partitions
    is cut into S nearly equal spans: S is the smallest multiple of ``concurrency`` that keeps every
    span within ``_MAX_SPAN``, and at most N.
    """
    cap = min(_MAX_SPAN[timeframe.grain], fetch_span_max() or _MAX_SPAN[timeframe.grain])
    groups: list[list[CandlePartition]] = []
    for part in partitions:
        last = groups[-1][-1] if groups else None
        if last is not None and last.security == part.security and last.end == part.start:
            groups[-1].append(part)
        else:
            groups.append([part])
    spans: list[FetchSpan] = []
    width = max(1, concurrency)
    for group in groups:
        count = min(len(group), width * math.ceil(math.ceil(len(group) / cap) / width))
        size, extra = divmod(len(group), count)
        at = 0
        for index in range(count):
            length = size + (1 if index < extra else 0)
            spans.append(FetchSpan(tuple(group[at : at + length])))
            at += length
    return spans


def _fetch(client: ISSClient, info: SecurityInfo, timeframe: Timeframe, span: FetchSpan) -> CandleFetch:
    date_from, date_till = window_to_iss_dates(span.start, span.end)
    return client.get_candles(info, timeframe.iss_interval, date_from, date_till)


def fetch_spans_in_order(
    client: ISSClient,
    info: SecurityInfo,
    timeframe: Timeframe,
    spans: Sequence[FetchSpan],
    concurrency: int,
) -> Iterator[tuple[FetchSpan, CandleFetch]]:
    """Yield fetched spans in order while up to ``2 x concurrency`` fetches are in flight."""
    in_flight: deque[tuple[FetchSpan, Future[CandleFetch]]] = deque()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="iss-fetch") as pool:
        try:
            for span in spans:
                in_flight.append((span, pool.submit(_fetch, client, info, timeframe, span)))
                if len(in_flight) >= 2 * concurrency:
                    done_span, future = in_flight.popleft()
                    yield done_span, future.result()
            while in_flight:
                done_span, future = in_flight.popleft()
                yield done_span, future.result()
        finally:
            # On an error (or an abandoned generator) nothing more is started.
            for _, future in in_flight:
                future.cancel()


def _split(frame: pl.DataFrame, span: FetchSpan) -> list[pl.DataFrame]:
    """The span's candles (sorted by ``begin``) cut at the partitions' boundaries."""
    begins = frame.get_column("begin")
    bounds = [part.start_naive for part in span.partitions[1:]]
    cuts = [0, *(int(begins.search_sorted(bound, side="left")) for bound in bounds), frame.height]
    return [frame.slice(lo, hi - lo) for lo, hi in itertools.pairwise(cuts)]


def load_partitions(
    client: ISSClient,
    engine: sa.Engine,
    info: SecurityInfo,
    timeframe: Timeframe,
    partitions: Sequence[CandlePartition],
    *,
    concurrency: int,
    final_after: dt.timedelta,
    on_loaded: Callable[[PartitionLoad], None] | None = None,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(MOSCOW),
) -> list[PartitionLoad]:
    """Fetch every partition and replace it in the warehouse; return one record per partition."""
    width = max(1, concurrency)
    spans = plan_spans(partitions, timeframe, width)
    loads: list[PartitionLoad] = []
    for span, fetched in fetch_spans_in_order(client, info, timeframe, spans, width):
        frame = fetched.frame
        windows = [(part.start_naive, part.end_naive) for part in span.partitions]
        warehouse.replace_candles_many(engine, span.partitions[0].security, timeframe.name, windows, frame)
        # ISS's clock (its Date header) decides; ours only when ISS sent none.
        loaded_at = fetched.server_time or now()
        for part, rows in zip(span.partitions, _split(frame, span), strict=True):
            begins = rows.get_column("begin") if rows.height else None
            load = PartitionLoad(
                partition=part,
                rows=rows.height,
                first_begin=begins.min() if begins is not None else None,  # type: ignore[arg-type]
                last_begin=begins.max() if begins is not None else None,  # type: ignore[arg-type]
                fetch=span.describe(),
                pages=fetched.pages,
                requests=fetched.requests,
                retries=fetched.retries,
                final=is_final(part, loaded_at, final_after),
            )
            loads.append(load)
            if on_loaded is not None:
                on_loaded(load)
    return loads
