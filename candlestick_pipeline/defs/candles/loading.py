"""Fetch candle partitions from ISS and replace them in the warehouse while the pages arrive.

The asset hands this module the partitions of its run. Adjacent partitions form one *fetch span*:
ONE ISS query (``from`` = the span's first day, ``till`` = its last) that ISS pages by row offset.
The client keeps up to ISS concurrency of its pages in flight at interleaved offsets and hands them
back in order (``defs/iss/paging.py``), so the rows arrive in ``begin`` order while they are being
fetched. A partition is complete once a row of a later partition has arrived, or the query has
ended; complete partitions are written in batches of about ``WRITE_BATCH_ROWS`` candles, each
batch in ONE transaction, in partition order. So the writes overlap the fetching, a run's end
waits only for its last batch, and memory holds a batch, not the range.

A failure stops the run with a prefix of its partitions written, each of them complete, and the rest
untouched (the batch being written is rolled back whole). ``CANDLESTICK_FETCH_SPAN_MAX`` caps the
partitions of one query (1 = a query per partition, fetched and written one after another).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl
import sqlalchemy as sa

from candlestick_pipeline.config import fetch_span_max
from candlestick_pipeline.defs.candles.partitions import CandlePartition
from candlestick_pipeline.defs.iss.client import CandleStream, ISSClient
from candlestick_pipeline.defs.iss.errors import ISSResponseError
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.frames import latest_per_begin
from candlestick_pipeline.lib.securities import SecurityInfo
from candlestick_pipeline.lib.timeframes import MOSCOW, Timeframe, window_to_iss_dates

# Complete partitions are written once this many candles have arrived (four days of 1-minute candles
# at 1000 a day: see WriteBatches): fewer, larger transactions cost less, but what is left at the
# query's end is written after its last page (docs/benchmarks.md, session 7).
WRITE_BATCH_ROWS = 5_000


@dataclass(frozen=True)
class FetchSpan:
    """Adjacent partitions of one security that are fetched as one ISS query."""

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


def plan_spans(partitions: Sequence[CandlePartition]) -> list[FetchSpan]:
    """Group partitions (sorted by start) into fetch spans: each run of adjacent partitions of one
    security, cut every ``CANDLESTICK_FETCH_SPAN_MAX`` partitions when that is set."""
    cap = fetch_span_max()
    groups: list[list[CandlePartition]] = []
    for part in partitions:
        last = groups[-1][-1] if groups else None
        adjacent = last is not None and last.security == part.security and last.end == part.start
        if adjacent and (cap is None or len(groups[-1]) < cap):
            groups[-1].append(part)
        else:
            groups.append([part])
    return [FetchSpan(tuple(group)) for group in groups]


@dataclass(frozen=True)
class _Written:
    """One partition as written: its rows, first and last begin, and whether it was final."""

    partition: CandlePartition
    rows: int
    first_begin: dt.datetime | None
    last_begin: dt.datetime | None
    final: bool


class WriteBatches:
    """The span's rows as they arrive, cut into batches of complete partitions (in order).

    A partition is complete once a row of a later one has arrived, so with days of 1000 minutes and
    pages of 500 rows a batch is four days: the fifth is still open when 5,000 rows are in.
    """

    def __init__(self, span: FetchSpan) -> None:
        self._partitions = span.partitions
        self._next = 0  # the first partition not handed out yet
        self._frames: list[pl.DataFrame] = []
        self._rows = 0
        self._last_begin: dt.datetime | None = None

    def add(self, frame: pl.DataFrame) -> tuple[tuple[CandlePartition, ...], pl.DataFrame] | None:
        """Take a page's rows; a batch of complete partitions when enough rows are complete."""
        begins = frame.get_column("begin")
        first: dt.datetime = begins.min()  # type: ignore[assignment]
        if self._next > 0 and first < self._partitions[self._next - 1].end_naive:
            done = self._partitions[self._next - 1]
            raise ISSResponseError(
                f"ISS sent a candle beginning {first} after the rows up to {done.end_naive} had all "
                "come (pages out of begin order); what was written is complete as of then, rerun to reload"
            )
        self._frames.append(frame)
        self._rows += frame.height
        last: dt.datetime = begins.max()  # type: ignore[assignment]
        self._last_begin = last if self._last_begin is None else max(self._last_begin, last)
        if self._rows < WRITE_BATCH_ROWS:
            return None
        complete = self._next
        while complete < len(self._partitions) and self._partitions[complete].end_naive <= self._last_begin:
            complete += 1
        return self._cut(complete) if complete > self._next else None

    def rest(self) -> tuple[tuple[CandlePartition, ...], pl.DataFrame] | None:
        """Every partition not handed out yet (the query has ended, so they are complete)."""
        return self._cut(len(self._partitions)) if self._next < len(self._partitions) else None

    def _cut(self, stop: int) -> tuple[tuple[CandlePartition, ...], pl.DataFrame]:
        parts = self._partitions[self._next : stop]
        combined = latest_per_begin(self._frames)
        boundary = parts[-1].end_naive
        cut = int(combined.get_column("begin").search_sorted(boundary, side="left"))
        rest = combined.slice(cut)
        self._frames = [rest] if rest.height else []
        self._rows = rest.height
        self._next = stop
        return parts, combined.slice(0, cut)


def _split(frame: pl.DataFrame, parts: Sequence[CandlePartition]) -> list[pl.DataFrame]:
    """The batch's candles (sorted by ``begin``) cut at the partitions' boundaries."""
    bounds = pl.Series([part.start_naive for part in parts[1:]], dtype=pl.Datetime("us"))
    # All the bounds in one search: 0.2 ms for six, where one search each took 0.24 ms a bound.
    inner = frame.get_column("begin").search_sorted(bounds, side="left").to_list()
    cuts = [0, *inner, frame.height]
    return [frame.slice(lo, hi - lo) for lo, hi in itertools.pairwise(cuts)]


def _write_batch(
    engine: sa.Engine,
    timeframe: Timeframe,
    parts: Sequence[CandlePartition],
    frame: pl.DataFrame,
    loaded_at: dt.datetime,
    final_after: dt.timedelta,
) -> list[_Written]:
    """Replace the batch's partitions in one transaction; what each of them now holds."""
    windows = [(part.start_naive, part.end_naive) for part in parts]
    warehouse.replace_candles_many(engine, parts[0].security, timeframe.name, windows, frame)
    written = []
    for part, rows in zip(parts, _split(frame, parts), strict=True):
        begins = rows.get_column("begin") if rows.height else None
        written.append(
            _Written(
                partition=part,
                rows=rows.height,
                first_begin=begins.min() if begins is not None else None,  # type: ignore[arg-type]
                last_begin=begins.max() if begins is not None else None,  # type: ignore[arg-type]
                final=is_final(part, loaded_at, final_after),
            )
        )
    return written


def _load_span(
    client: ISSClient,
    engine: sa.Engine,
    info: SecurityInfo,
    timeframe: Timeframe,
    span: FetchSpan,
    *,
    width: int,
    final_after: dt.timedelta,
    now: Callable[[], dt.datetime],
) -> tuple[CandleStream, list[_Written]]:
    date_from, date_till = window_to_iss_dates(span.start, span.end)
    stream = client.stream_candles(info, timeframe.iss_interval, date_from, date_till, width=width)
    batches = WriteBatches(span)
    written: list[_Written] = []
    for frame in stream:
        batch = batches.add(frame) if frame.height else None
        if batch is not None:
            # ISS's clock (its Date header) decides whether a period had closed; ours only without it.
            written.extend(_write_batch(engine, timeframe, *batch, stream.server_time or now(), final_after))
    batch = batches.rest()
    if batch is not None:
        written.extend(_write_batch(engine, timeframe, *batch, stream.server_time or now(), final_after))
    return stream, written


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
    """Fetch every partition and replace it in the warehouse; return one record per partition.

    The records (and ``on_loaded``) of a span come when its query has ended, because they carry its
    page and request counts; its partitions are written before that, as they complete.
    """
    loads: list[PartitionLoad] = []
    for span in plan_spans(partitions):
        stream, written = _load_span(
            client, engine, info, timeframe, span, width=max(1, concurrency), final_after=final_after, now=now
        )
        for item in written:
            load = PartitionLoad(
                partition=item.partition,
                rows=item.rows,
                first_begin=item.first_begin,
                last_begin=item.last_begin,
                fetch=span.describe(),
                pages=stream.pages,
                requests=stream.requests,
                retries=stream.retries,
                final=item.final,
            )
            loads.append(load)
            if on_loaded is not None:
                on_loaded(load)
    return loads
