"""B4: Datasette read latency over a large publication, against raw sqlite3.

Builds a publication (``lib.publication`` schema) of synthetic 1-minute candles - by default
20 securities x 500 days x 1,000 minutes = 10,000,000 candles plus a daily series each - directly
with sqlite3 (the warehouse is not involved: this measures serving), starts Datasette with the
production command (``defs.publish.serve.datasette_command``: mutable mode, plugins, guard) and
measures, with one keep-alive HTTP client and random starting days:

* (a) canned: ``/publication/candle_series.json?...&from=<day>&_shape=array`` (1000 candles);
* (b) table: ``/publication/candles.json?secid=..&board=..&timeframe=1m&begin__gte=<day>&_size=1000
  &_shape=array``, then the page its ``Link: rel=next`` header points to (keyset ``_next``);
  both the first page and the ``_next`` page are reported;
* (c) ISS route: ``/iss/.../candles.json?interval=1&from=<day>&till=<day+2>&iss.meta=off``
  (500 candles a page, like ISS) and the same with ``start=1000``;
* the same SQL run directly with sqlite3 (``mode=ro``, fetchall) as the floor.

Prints p50/p95 in ms and candles/s for each, then the B4 target of each Datasette request: p95 at
most 2 x the raw sqlite3 p50 of the same SQL + 5 ms; exits 0.

The requests are those of a paging client: ``_shape=array`` (rows as JSON objects, no envelope)
and the ``Link`` header for the next page. The server is the production one, so these pages take
the plugin's short way through Datasette (``defs.publish.serve``, same bytes as Datasette's own
views); ``CANDLESTICK_DATASETTE_FAST_JSON=0 uv run python benchmarks/bench_datasette.py ...``
measures Datasette's own views instead (still with the plugin's faster ``.json`` renderer).

    uv run python benchmarks/bench_datasette.py                    # 10M candles (build ~1-2 min)
    uv run python benchmarks/bench_datasette.py --rows 3000000      # moderate
    uv run python benchmarks/bench_datasette.py --rows 50000 --requests 20   # smoke run
    uv run python benchmarks/bench_datasette.py --path /tmp/pub.db --keep    # reuse a built file
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import math
import random
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import urlencode

import httpx

from candlestick_pipeline.defs.publish.serve import datasette_command
from candlestick_pipeline.lib import publication

MINUTES_PER_DAY = 1000
FIRST_DAY = dt.date(2022, 1, 3)


def _days(count: int) -> list[dt.date]:
    """``count`` weekdays from FIRST_DAY."""
    days: list[dt.date] = []
    day = FIRST_DAY
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day += dt.timedelta(days=1)
    return days


def _rows(secid: str, days: list[dt.date]) -> Iterator[tuple[object, ...]]:
    price = 100.0 + hash(secid) % 200
    for day in days:
        start = dt.datetime(day.year, day.month, day.day, 7, 0)
        for minute in range(MINUTES_PER_DAY):
            begin = start + dt.timedelta(minutes=minute)
            open_ = price
            close = round(price * (1 + math.sin(minute / 13.0) * 0.001), 2)
            volume = 100 + minute % 500
            yield (
                secid,
                "TQBR",
                "1m",
                begin.strftime("%Y-%m-%d %H:%M:%S"),
                (begin + dt.timedelta(seconds=59)).strftime("%Y-%m-%d %H:%M:%S"),
                open_,
                max(open_, close) + 0.05,
                min(open_, close) - 0.05,
                close,
                round(close * volume, 2),
                volume,
            )
            price = close


def build(path: Path, rows: int, securities: int) -> tuple[list[str], list[dt.date]]:
    """Write ``rows`` 1m candles (plus a daily series per security) into a fresh publication."""
    secids = [f"S{i:03d}" for i in range(securities)]
    day_count = max(1, rows // (securities * MINUTES_PER_DAY))
    days = _days(day_count)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    publication.ensure_schema(path)
    started = time.perf_counter()
    insert = f"INSERT INTO candles VALUES ({', '.join('?' for _ in publication.CANDLE_COLUMNS)})"
    with closing(publication.connect(path)) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        for number, secid in enumerate(secids, 1):
            with publication.write_transaction(conn):
                conn.executemany(insert, _rows(secid, days))
                daily = [
                    (secid, "TQBR", "1d", f"{d} 00:00:00", f"{d} 23:59:59", 1.0, 2.0, 0.5, 1.5, 10.0, 7)
                    for d in days
                ]
                conn.executemany(insert, daily)
            print(f"  built {secid} ({number}/{securities})", end="\r", flush=True)
        with publication.write_transaction(conn):
            conn.execute(
                "INSERT OR REPLACE INTO series SELECT secid, board, timeframe, min(begin), max(begin),"
                " count(*), datetime('now') FROM candles GROUP BY secid, board, timeframe"
            )
            conn.execute(
                "INSERT OR REPLACE INTO securities (secid, board, engine, market, shortname, is_primary,"
                " is_traded, added_at, updated_at) SELECT DISTINCT secid, board, 'stock', 'shares', secid,"
                " 1, 1, datetime('now'), datetime('now') FROM series"
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        total = conn.execute("SELECT sum(candles) FROM series").fetchone()[0]
    seconds = time.perf_counter() - started
    size = path.stat().st_size / 2**20
    print()
    print(f"built {total:,} candles in {seconds:.1f} s ({total / seconds:,.0f}/s), {size:,.0f} MiB: {path}")
    return secids, days


def existing(path: Path) -> tuple[list[str], list[dt.date]]:
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        secids = [r[0] for r in conn.execute("SELECT DISTINCT secid FROM series WHERE timeframe = '1m'")]
        days = [
            dt.date.fromisoformat(r[0][:10])
            for r in conn.execute(
                "SELECT begin FROM candles WHERE secid = ? AND board = 'TQBR' AND timeframe = '1d'",
                (secids[0],),
            )
        ]
        total = conn.execute("SELECT sum(candles) FROM series").fetchone()[0]
    print(f"reusing {path}: {total:,} candles, {len(secids)} securities x {len(days)} days")
    return secids, days


@contextmanager
def run_datasette(path: Path) -> Iterator[str]:
    """``datasette serve`` with the production flags on a free port; yields the base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        datasette_command(path, "127.0.0.1", port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(
                    f"datasette exited: {process.stderr.read().decode() if process.stderr else ''}"
                )
            try:
                if httpx.get(f"{base}/-/versions.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("datasette did not start within 60 s")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p95 in ms."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.95) - 1)]
    return statistics.median(ordered) * 1000, p95 * 1000


def _stats(name: str, samples: list[float], candles: int) -> str:
    p50, p95 = _percentiles(samples)
    rate = candles / statistics.mean(samples)
    return (
        f"{name:<44} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   "
        f"{candles:5d} candles/request   {rate:>10,.0f} candles/s"
    )


def measure(
    requests: int, makes: dict[str, Callable[[random.Random], tuple[float, int]]]
) -> dict[str, tuple[list[float], int]]:
    """``requests`` rounds of one call of each ``make``, interleaved: whatever else the machine does
    (a neighbour on the host, a GC pause) falls on every kind of request alike, so that Datasette and
    raw sqlite3 are compared under the same conditions. Samples in seconds, and candles per call."""
    rngs = {label: random.Random(label) for label in makes}
    samples: dict[str, list[float]] = {label: [] for label in makes}
    candles: dict[str, int] = dict.fromkeys(makes, 0)
    # The client's own garbage collections would land inside the timed calls: collect between
    # rounds instead, outside them.
    gc.disable()
    try:
        for _ in range(requests):
            for label, make in makes.items():
                seconds, candles[label] = make(rngs[label])
                samples[label].append(seconds)
            gc.collect(0)
    finally:
        gc.enable()
    return {label: (samples[label], candles[label]) for label in makes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="1m candles to build (default 10M)")
    parser.add_argument("--securities", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500, help="requests of each kind, interleaved")
    parser.add_argument("--path", type=Path, help="publication file (reused if it exists and --keep)")
    parser.add_argument("--keep", action="store_true", help="keep/reuse the file at --path")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bench-datasette-"))
    path = args.path or folder / "publication.db"
    if args.keep and path.exists():
        secids, days = existing(path)
    else:
        secids, days = build(path, args.rows, args.securities)
    last_days = days[:-3] or days[:-1] or days  # two pages of 1000 after the day picked

    def pick(rng: random.Random) -> tuple[str, dt.date]:
        return rng.choice(secids), rng.choice(last_days)

    canned_sql = (
        'select secid, board, timeframe, begin, "end", open, high, low, close, value, volume from candles'
        " where secid = ? and board = 'TQBR' and timeframe = '1m' and begin >= ? order by begin limit 1000"
    )
    iss_sql = (
        'SELECT open, close, high, low, value, volume, begin, "end" FROM candles WHERE secid = ? AND board = '
        "'TQBR' AND timeframe = '1m' AND begin >= ? AND begin <= ? ORDER BY begin LIMIT 500 OFFSET ?"
    )
    raw = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)

    results: list[str] = []
    with run_datasette(path) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        # Warm the page cache and the connection.
        for _ in range(5):
            client.get(
                "/publication/candle_series.json",
                params={"secid": secids[0], "board": "TQBR", "timeframe": "1m", "_shape": "array"},
            )

        def timed_get(url: str) -> tuple[float, httpx.Response]:
            started = time.perf_counter()
            response = client.get(url)
            seconds = time.perf_counter() - started
            if response.status_code != 200:
                raise SystemExit(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
            return seconds, response

        def canned(rng: random.Random) -> tuple[float, int]:
            secid, day = pick(rng)
            query = {
                "secid": secid,
                "board": "TQBR",
                "timeframe": "1m",
                "from": day.isoformat(),
                "_shape": "array",
            }
            seconds, response = timed_get("/publication/candle_series.json?" + urlencode(query))
            return seconds, len(response.json())

        next_samples: list[float] = []

        def table(rng: random.Random) -> tuple[float, int]:
            secid, day = pick(rng)
            query = {
                "secid": secid,
                "board": "TQBR",
                "timeframe": "1m",
                "begin__gte": day.isoformat(),
                "_size": "1000",
                "_shape": "array",
            }
            seconds, response = timed_get("/publication/candles.json?" + urlencode(query))
            follow = response.links["next"]["url"]
            next_seconds, next_response = timed_get(follow)
            next_samples.append(next_seconds)
            assert len(next_response.json()) == 1000
            return seconds, len(response.json())

        def iss(rng: random.Random, start: int = 0) -> tuple[float, int]:
            secid, day = pick(rng)
            query = {
                "interval": "1",
                "from": day.isoformat(),
                "till": (day + dt.timedelta(days=6)).isoformat(),
                "iss.meta": "off",
                "start": str(start),
            }
            url = (
                f"/iss/engines/stock/markets/shares/boards/TQBR/securities/{secid}/candles.json?"
                + urlencode(query)
            )
            seconds, response = timed_get(url)
            return seconds, len(response.json()["candles"]["data"])

        def raw_canned(rng: random.Random) -> tuple[float, int]:
            secid, day = pick(rng)
            started = time.perf_counter()
            rows = raw.execute(canned_sql, (secid, day.isoformat())).fetchall()
            return time.perf_counter() - started, len(rows)

        def raw_iss(rng: random.Random) -> tuple[float, int]:
            secid, day = pick(rng)
            started = time.perf_counter()
            bounds = (secid, f"{day} 00:00:00", f"{day + dt.timedelta(days=6)} 23:59:59", 0)
            rows = raw.execute(iss_sql, bounds).fetchall()
            return time.perf_counter() - started, len(rows)

        measured = measure(
            args.requests,
            {
                "(a) canned candle_series, 1000 candles": canned,
                "(b) table filters, first page of 1000": table,
                "(c) ISS route, page of 500 (start=0)": iss,
                "(c) ISS route, page of 500 (start=1000)": lambda r: iss(r, 1000),
                "raw sqlite3, canned SQL, 1000 candles": raw_canned,
                "raw sqlite3, ISS SQL, 500 candles": raw_iss,
            },
        )
        measured["(b) table filters, the _next page of 1000"] = (next_samples, 1000)
        order = sorted(measured, key=lambda label: (label.startswith("raw"), label))
        samples = {label: measured[label][0] for label in order}
        results.extend(_stats(label, *measured[label]) for label in order)
    raw.close()
    raw_p50 = {
        "(a)": _percentiles(samples["raw sqlite3, canned SQL, 1000 candles"])[0],
        "(b)": _percentiles(samples["raw sqlite3, canned SQL, 1000 candles"])[0],
        "(c)": _percentiles(samples["raw sqlite3, ISS SQL, 500 candles"])[0],
    }
    targets = []
    for label, values in samples.items():
        if label.startswith("raw"):
            continue
        target = 2 * raw_p50[label[:3]] + 5
        p95 = _percentiles(values)[1]
        verdict = "ok" if p95 <= target else f"MISSED by {p95 - target:.1f} ms"
        targets.append(f"{label:<44} p95 {p95:7.1f} ms <= {target:5.1f} ms: {verdict}")

    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        total = conn.execute("SELECT sum(candles) FROM series").fetchone()[0]
    print(
        f"\nB4 Datasette over {total:,} candles ({len(secids)} securities), "
        f"{args.requests} requests of each kind, interleaved:"
    )
    for line in results:
        print("  " + line)
    print("Target: p95 <= 2 x raw sqlite3 p50 of the same SQL + 5 ms:")
    for line in targets:
        print("  " + line)
    if not args.keep and args.path is None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        folder.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
