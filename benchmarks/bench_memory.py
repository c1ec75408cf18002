"""B5: peak RSS of a real backfill run of one security's 1-minute candles, by range length.

Each range (``--months``, default 1, 3 and 12) is one ``candlestick load SBER.TQBR -t 1m`` process
(one Dagster run) in a fresh throw-away project (the repo's ``dagster.yaml``, SQLite storage and
warehouse by default) against the ISS stand-in running in its own process. The figure is the
process's peak resident set (``ru_maxrss`` from ``wait4``), beside a ``--dry-run`` of the same
command (imports and start-up only), so the part that grows with the range is visible.
Target: under 400 MB and flat in the length of the range.

    uv run python benchmarks/bench_memory.py                         # 1, 3 and 12 months
    uv run python benchmarks/bench_memory.py --months 1 --days 5     # smoke: a few days only
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BIN,
    DEFAULT_NOW,
    DEFAULT_PG_ADMIN_DSN,
    REPO_ROOT,
    StandInProcess,
    project_home,
    register_securities,
)

from candlestick_pipeline.lib import warehouse

SECURITY = "SBER.TQBR"


def _run(command: list[str], env: dict[str, str], log: Path | None) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one process."""
    started = time.perf_counter()
    with open(log, "ab") if log else open(os.devnull, "wb") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}; see {log or 'rerun with --log'}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024  # KiB on Linux


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--months", type=int, nargs="+", default=[1, 3, 12], help="range lengths")
    parser.add_argument("--days", type=int, default=None, help="use this many days instead (smoke)")
    parser.add_argument("--concurrency", type=int, default=4, help="ISS_MAX_CONCURRENCY")
    parser.add_argument("--latency-ms", type=float, default=10.0, help="stand-in latency per request")
    parser.add_argument("--storage", default="sqlite", choices=["sqlite", "postgres"], help="Dagster storage")
    parser.add_argument("--warehouse", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--now", default=DEFAULT_NOW, help="the stand-in's clock (Moscow)")
    parser.add_argument("--pg-admin-dsn", default=DEFAULT_PG_ADMIN_DSN)
    parser.add_argument("--log", type=Path, default=None, help="append the runs' output to this file")
    args = parser.parse_args(argv)

    last = dt.datetime.fromisoformat(args.now).date() - dt.timedelta(days=1)
    lengths = [(f"{args.days} days", args.days)] if args.days else [(f"{m} months", m) for m in args.months]
    print(
        f"{SECURITY} 1m, ISS concurrency {args.concurrency}, stand-in latency {args.latency_ms:g} ms, "
        f"Dagster storage {args.storage}, warehouse {args.warehouse}; load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    header = ("range", "partitions", "candles", "seconds", "peak RSS MB", "dry-run MB")
    print("{:<10} {:>10} {:>9} {:>8} {:>12} {:>11}".format(*header))
    with StandInProcess(args.now) as standin:
        for label, amount in lengths:
            first = last - dt.timedelta(days=amount - 1) if args.days else _months_back(last, amount)
            with project_home(args.storage, args.warehouse, args.pg_admin_dsn) as project:
                project.apply()
                register_securities(standin.base_url, [SECURITY])
                standin.set_latency(args.latency_ms)
                env = project.env(ISS_BASE_URL=standin.base_url, ISS_MAX_CONCURRENCY=str(args.concurrency))
                command = [str(BIN / "candlestick"), "load", SECURITY, "-t", "1m", "--from", str(first)]
                command += ["--till", str(last)]
                _, dry_mb = _run([*command, "--dry-run"], env, args.log)
                seconds, peak_mb = _run(command, env, args.log)
                engine = warehouse.create_warehouse_engine(project.warehouse_dsn)
                try:
                    candles = warehouse.count_candles(engine)
                finally:
                    engine.dispose()
            days = (last - first).days + 1
            print(
                f"{label:<10} {days:>10} {candles:>9,} {seconds:>8.1f} {peak_mb:>12.0f} {dry_mb:>11.0f}",
                flush=True,
            )
    return 0


def _months_back(last: dt.date, months: int) -> dt.date:
    """The day ``months`` calendar months before the day after ``last`` (12 -> one year)."""
    day = last + dt.timedelta(days=1)
    month = day.month - months
    year = day.year + (month - 1) // 12
    month = (month - 1) % 12 + 1
    return day.replace(year=year, month=month)


if __name__ == "__main__":
    sys.exit(main())
