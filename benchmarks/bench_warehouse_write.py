"""B3: warehouse write throughput, SQLite and PostgreSQL.

Generates synthetic 1-minute candles (by default 10 securities x 100 days x 1,000 minutes =
1,000,000 candles) and writes them through ``lib.warehouse`` the way the pipeline does:

* ``partition``: one ``replace_candles`` per security-day window (one transaction each), into an
  empty warehouse: the daily partitions of a backfill run one by one;
* ``overwrite``: the same again over the loaded data: a refresh that returns the stored candles;
* ``overwrite-changed``: over the loaded data, every candle with other values (``close`` and
  ``volume`` differ): a correction of everything, the worst case of a refresh;
* ``overwrite-1pct``: over the loaded data, 1 candle in 100 with other values;
* ``loader``: into an empty warehouse, the batches that a run of the candle asset writes in a
  backfill: each security's candles fed in pages of ISS's size through the loader's own batching
  (``defs/candles/loading.py``, ``WriteBatches``: 4 days a transaction here), each batch one
  ``replace_candles_many``. The batches are cut before the clock starts;
* ``batched``: one ``replace_candles_many`` per security covering all its 100 day windows, into an
  empty warehouse: one transaction a security, fewer than any run makes (an upper bound);
* ``publish``: the warehouse filled as by ``batched`` (not timed), then every partition copied into
  a new SQLite publication the way ``published_candles_1m`` does in a backfill run (64 windows of a
  security a transaction): what keeping Datasette's file in step costs.

Each mode gets a fresh SQLite file and a fresh PostgreSQL database (``cp_bench_<random>``, created
and dropped through the admin DSN). Frame generation is not timed. Prints rows, seconds and
candles/s per backend and mode; exits 0. Targets: PostgreSQL >= 200k, SQLite >= 150k candles/s.

    uv run python benchmarks/bench_warehouse_write.py                 # the full 1M run
    uv run python benchmarks/bench_warehouse_write.py --rows 20000    # smoke run
    uv run python benchmarks/bench_warehouse_write.py --profile sqlite --modes partition
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import functools
import pstats
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import psycopg
import sqlalchemy as sa

from candlestick_pipeline.defs.candles.loading import FetchSpan, WriteBatches
from candlestick_pipeline.defs.candles.partitions import parse_candle_partition
from candlestick_pipeline.defs.iss.paging import GUESSED_PAGE_SIZE
from candlestick_pipeline.defs.publish.assets import PARTITIONS_PER_TRANSACTION
from candlestick_pipeline.lib import publication
from candlestick_pipeline.lib.frames import conform
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import get_timeframe
from candlestick_pipeline.lib.warehouse import (
    count_candles,
    create_warehouse_engine,
    migrate,
    redact_dsn,
    replace_candles,
    replace_candles_many,
)

DEFAULT_PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
Window = tuple[dt.datetime, dt.datetime]
Batch = tuple[SecurityKey, list[Window], pl.DataFrame]
FIRST_DAY = dt.date(2024, 1, 1)
SESSION_START = dt.time(7, 0)
MODES = ("partition", "overwrite", "overwrite-changed", "overwrite-1pct", "loader", "batched", "publish")


@dataclass(frozen=True)
class Partition:
    """One security-day window and its candles."""

    key: SecurityKey
    start: dt.datetime
    end: dt.datetime
    frame: pl.DataFrame


def generate(rows: int, securities: int, per_day: int) -> list[Partition]:
    """``rows`` synthetic 1m candles spread over ``securities``, ``per_day`` minutes per Moscow day."""
    per_security = rows // securities
    partitions: list[Partition] = []
    for number in range(securities):
        key = SecurityKey(f"BENCH{number:02d}", "TQBR")
        minute = pl.int_range(0, per_security, eager=True)
        day = minute // per_day
        base = pl.lit(dt.datetime.combine(FIRST_DAY, SESSION_START))
        price = 100.0 + number + (minute % 997).cast(pl.Float64) * 0.01
        frame = conform(
            pl.DataFrame({"minute": minute, "day": day, "price": price}).select(
                begin=base + pl.duration(days=pl.col("day"), minutes=pl.col("minute") % per_day),
                end=base + pl.duration(days=pl.col("day"), minutes=pl.col("minute") % per_day, seconds=59),
                open=pl.col("price"),
                high=pl.col("price") + 0.05,
                low=pl.col("price") - 0.05,
                close=pl.col("price") + 0.01,
                value=pl.col("price") * 1000.0,
                volume=pl.col("minute") % 5000 + 1,
            )
        )
        for (day_number,), part in frame.with_columns(day=day).partition_by("day", as_dict=True).items():
            start = dt.datetime.combine(FIRST_DAY + dt.timedelta(days=int(day_number)), dt.time())
            partitions.append(Partition(key, start, start + dt.timedelta(days=1), part.drop("day")))
    return partitions


def changed(partitions: Sequence[Partition], every: int) -> list[Partition]:
    """The partitions with every ``every``-th candle's ``close`` and ``volume`` changed."""
    altered = (pl.int_range(pl.len()) % every) == every - 1
    return [
        Partition(
            p.key,
            p.start,
            p.end,
            p.frame.with_columns(
                pl.when(altered).then(pl.col("close") + 0.01).otherwise(pl.col("close")).alias("close"),
                pl.when(altered).then(pl.col("volume") + 1).otherwise(pl.col("volume")).alias("volume"),
            ),
        )
        for p in partitions
    ]


def run_partition(engine: sa.Engine, partitions: Sequence[Partition]) -> int:
    return sum(replace_candles(engine, p.key, "1m", p.start, p.end, p.frame) for p in partitions)


def _by_key(partitions: Sequence[Partition]) -> dict[SecurityKey, list[Partition]]:
    by_key: dict[SecurityKey, list[Partition]] = {}
    for partition in partitions:
        by_key.setdefault(partition.key, []).append(partition)
    return by_key


def loader_batches(partitions: Sequence[Partition]) -> list[Batch]:
    """The batches a candle asset's run writes for these partitions: each security's candles fed in
    ISS pages (``GUESSED_PAGE_SIZE`` rows) through the loader's own batching (``WriteBatches``)."""
    timeframe = get_timeframe("1m")
    batches: list[Batch] = []
    for key, parts in _by_key(partitions).items():
        span = FetchSpan(
            tuple(parse_candle_partition(timeframe, f"{p.start.date().isoformat()}|{key}") for p in parts)
        )
        cutter = WriteBatches(span)
        candles = pl.concat([p.frame for p in parts])
        pages = (
            candles.slice(start, GUESSED_PAGE_SIZE) for start in range(0, candles.height, GUESSED_PAGE_SIZE)
        )
        for batch in [*(cutter.add(page) for page in pages), cutter.rest()]:
            if batch is not None:
                done, frame = batch
                batches.append((key, [(p.start_naive, p.end_naive) for p in done], frame))
    return batches


def run_loader(engine: sa.Engine, batches: Sequence[Batch]) -> int:
    """As a candle asset's run writes a backfill: each of ``loader_batches`` (cut before the clock
    starts) one ``replace_candles_many``."""
    return sum(replace_candles_many(engine, key, "1m", windows, frame) for key, windows, frame in batches)


def run_batched(engine: sa.Engine, partitions: Sequence[Partition]) -> int:
    written = 0
    for key, parts in _by_key(partitions).items():
        windows = [(p.start, p.end) for p in parts]
        written += replace_candles_many(engine, key, "1m", windows, pl.concat([p.frame for p in parts]))
    return written


def run_publish(engine: sa.Engine, partitions: Sequence[Partition], path: Path) -> int:
    """Copy the partitions from the warehouse to a new publication file, as ``published_candles_1m``
    does in a backfill run: per security, ``PARTITIONS_PER_TRANSACTION`` windows a transaction."""
    published = 0
    for key, parts in _by_key(partitions).items():
        for offset in range(0, len(parts), PARTITIONS_PER_TRANSACTION):
            windows = [(p.start, p.end) for p in parts[offset : offset + PARTITIONS_PER_TRANSACTION]]
            published += sum(publication.sync_windows(engine, path, key, "1m", windows))
    return published


@contextmanager
def sqlite_warehouse(folder: Path) -> Iterator[str]:
    path = folder / f"bench_{uuid.uuid4().hex[:8]}.db"
    try:
        yield f"sqlite:///{path}"
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


@contextmanager
def pg_warehouse(admin_dsn: str) -> Iterator[str]:
    name = f"cp_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(admin_dsn).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(
    dsn: str, mode: str, partitions: Sequence[Partition], profile: bool, folder: Path
) -> tuple[int, float, pstats.Stats | None]:
    engine = create_warehouse_engine(dsn)
    try:
        migrate(engine)
        if mode.startswith("overwrite"):
            run_partition(engine, partitions)
        if mode == "publish":
            run_batched(engine, partitions)
            return _measure_publish(
                engine, partitions, profile, folder / f"publication_{uuid.uuid4().hex[:8]}.db"
            )
        if mode == "overwrite-changed":
            partitions = changed(partitions, every=1)
        elif mode == "overwrite-1pct":
            partitions = changed(partitions, every=100)
        work: Callable[[], int]
        if mode == "loader":
            work = functools.partial(run_loader, engine, loader_batches(partitions))
        elif mode == "batched":
            work = functools.partial(run_batched, engine, partitions)
        else:
            work = functools.partial(run_partition, engine, partitions)
        profiler = cProfile.Profile() if profile else None
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        written = work()
        if profiler is not None:
            profiler.disable()
        seconds = time.perf_counter() - started
        stored = count_candles(engine)
        if stored != written:
            raise SystemExit(f"{mode}: wrote {written} candles but the warehouse holds {stored}")
        return written, seconds, pstats.Stats(profiler) if profiler is not None else None
    finally:
        engine.dispose()


def _measure_publish(
    engine: sa.Engine, partitions: Sequence[Partition], profile: bool, path: Path
) -> tuple[int, float, pstats.Stats | None]:
    try:
        publication.ensure_schema(path)
        profiler = cProfile.Profile() if profile else None
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        published = run_publish(engine, partitions, path)
        if profiler is not None:
            profiler.disable()
        seconds = time.perf_counter() - started
        with closing(sqlite3.connect(path)) as conn:
            (stored,) = conn.execute("SELECT count(*) FROM candles").fetchone()
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    in_warehouse = count_candles(engine)
    if not published == stored == in_warehouse:
        raise SystemExit(
            f"publish: {published} candles copied, {stored} in the publication, "
            f"{in_warehouse} in the warehouse"
        )
    return published, seconds, pstats.Stats(profiler) if profiler is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="candles in total (default 1,000,000)")
    parser.add_argument("--securities", type=int, default=10, help="securities to spread them over")
    parser.add_argument("--per-day", type=int, default=1_000, help="candles per security-day partition")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {','.join(MODES)}")
    parser.add_argument(
        "--pg-admin-dsn", default=DEFAULT_PG_ADMIN_DSN, help="creates/drops the bench database"
    )
    parser.add_argument(
        "--sqlite-dir", type=Path, default=None, help="folder for the SQLite files (default: temp)"
    )
    parser.add_argument(
        "--profile", default="", help="cProfile these backends (comma-separated) and print the top"
    )
    args = parser.parse_args(argv)

    backends = [b for b in args.backends.split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    profiled = {b for b in args.profile.split(",") if b}
    unknown = (set(backends) - {"sqlite", "postgresql"}) | (set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown backend/mode: {', '.join(sorted(unknown))}")

    started = time.perf_counter()
    partitions = generate(args.rows, args.securities, args.per_day)
    total = sum(p.frame.height for p in partitions)
    print(
        f"generated {total:,} candles in {len(partitions):,} security-day partitions "
        f"({args.securities} securities) in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    print(f"{'backend':<11} {'mode':<17} {'rows':>10} {'seconds':>8} {'candles/s':>11}")
    with tempfile.TemporaryDirectory(prefix="cp_bench_", dir=args.sqlite_dir) as folder:
        for backend in backends:
            for mode in modes:
                warehouse = (
                    sqlite_warehouse(Path(folder)) if backend == "sqlite" else pg_warehouse(args.pg_admin_dsn)
                )
                with warehouse as dsn:
                    rows, seconds, stats = measure(dsn, mode, partitions, backend in profiled, Path(folder))
                print(
                    f"{backend:<11} {mode:<17} {rows:>10,} {seconds:>8.2f} {rows / seconds:>11,.0f}",
                    flush=True,
                )
                if stats is not None:
                    stats.sort_stats("cumulative").print_stats(25)
    if "postgresql" in backends:
        print(f"postgresql admin DSN: {redact_dsn(args.pg_admin_dsn)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
