"""Fetch candle partitions from ISS and replace them in the warehouse, one partition at a time.

The asset hands this module the partitions of its run. Fetches run concurrently (bounded by the ISS
client's own limit); each partition is written in its own transaction as soon as its fetch is done,
so memory stays flat in the length of the range and a failure loses at most the partitions in
flight (they are simply not written; what was written is complete).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import sqlalchemy as sa

from candlestick_pipeline.defs.candles.partitions import CandlePartition
from candlestick_pipeline.defs.iss.client import CandleFetch, ISSClient
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityInfo
from candlestick_pipeline.lib.timeframes import MOSCOW, Timeframe, window_to_iss_dates


@dataclass(frozen=True)
class PartitionLoad:
    """What loading one partition did: the rows written and what it cost at ISS."""

    partition: CandlePartition
    rows: int
    first_begin: dt.datetime | None
    last_begin: dt.datetime | None
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


def _fetch(client: ISSClient, info: SecurityInfo, timeframe: Timeframe, part: CandlePartition) -> CandleFetch:
    date_from, date_till = window_to_iss_dates(part.start, part.end)
    return client.get_candles(info, timeframe.iss_interval, date_from, date_till)


def _fetch_in_order(
    client: ISSClient,
    info: SecurityInfo,
    timeframe: Timeframe,
    partitions: Sequence[CandlePartition],
    concurrency: int,
) -> Iterator[tuple[CandlePartition, CandleFetch]]:
    """Yield fetched partitions in order while up to ``2 x concurrency`` fetches are in flight."""
    in_flight: deque[tuple[CandlePartition, Future[CandleFetch]]] = deque()
    pending = iter(partitions)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="iss-fetch") as pool:
        try:
            for part in pending:
                in_flight.append((part, pool.submit(_fetch, client, info, timeframe, part)))
                if len(in_flight) >= 2 * concurrency:
                    done_part, future = in_flight.popleft()
                    yield done_part, future.result()
            while in_flight:
                done_part, future = in_flight.popleft()
                yield done_part, future.result()
        finally:
            # On an error (or an abandoned generator) nothing more is started.
            for _, future in in_flight:
                future.cancel()


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
    loads: list[PartitionLoad] = []
    for part, fetched in _fetch_in_order(client, info, timeframe, partitions, max(1, concurrency)):
        frame = fetched.frame
        rows = warehouse.replace_candles(
            engine, part.security, timeframe.name, part.start_naive, part.end_naive, frame
        )
        begins = frame.get_column("begin") if frame.height else None
        load = PartitionLoad(
            partition=part,
            rows=rows,
            first_begin=begins.min() if begins is not None else None,  # type: ignore[arg-type]
            last_begin=begins.max() if begins is not None else None,  # type: ignore[arg-type]
            pages=fetched.pages,
            requests=fetched.requests,
            retries=fetched.retries,
            # ISS's clock (its Date header) decides; ours only when ISS sent none.
            final=is_final(part, fetched.server_time or now(), final_after),
        )
        loads.append(load)
        if on_loaded is not None:
            on_loaded(load)
    return loads
