"""B1 + B2: a backfill through Dagster against the ISS stand-in, beside the old service's way.

B1 runs the real thing: ``candlestick load`` processes (each run recorded in a throw-away Dagster
instance that uses the repo's ``dagster.yaml`` (SQLite storage, the embedded default) and again
one that uses ``deploy/postgres/dagster.yaml`` (PostgreSQL storage, production's); ``--storage``
picks one) against the stand-in with ``--latency-ms`` per request, at ISS concurrency
C (``ISS_MAX_CONCURRENCY``) for each C in ``--concurrency``. Two workloads:

* ``1m``: ``--securities`` securities x ``--days`` days of 1-minute candles (daily partitions);
* ``1h``: one security x ``--months`` months of 1-hour candles (monthly partitions).

Layouts (``--layouts``), all keeping at most C ISS requests in flight in total:

* ``sequential``: one ``candlestick load KEY`` process per security, one after another;
* ``serial-runs``: one ``candlestick load -j 1 KEY1 KEY2 ...`` process, runs one after another;
* ``one-process``: one ``candlestick load KEY1 KEY2 ...`` process: the user's command, whose runs go
  in forked worker processes (up to C at once) that share one budget of C ISS requests in flight;
* ``parallel``: ``--processes`` P processes at once (securities dealt round-robin), each with ISS
  concurrency C / P, so that one run's Dagster bookkeeping overlaps another's fetching.

Figures: ISS pages (candle requests counted by the stand-in), candles, wall time, the ISS-bound
ideal ``pages x latency / C`` and wall / ideal (target <= 1.25), candles/s, runs launched, and where
the rest went (process start-up, run bookkeeping, the load step, the checks step), read from the
run and step records of the instance.

Before the workloads it measures **Dagster's floor** on this box and storage
(``benchmarks/_dagster_floor.py``, skip with ``--no-floor``): a fresh process that imports Dagster,
opens the same kind of instance and materializes one asset that does nothing. No process that
records a run can finish sooner, so each B1 line is also given against ``ideal + floor``. What is
left beyond that is split into the ISS window's excess over the ideal (the stand-in's own time per
request, idle slots) and the rest, the pipeline's own start and end (its imports, planning, the last
writes, events and checks).

B2 is the old service, implemented here with plain httpx: per security, the whole range paged one
request after another, a new HTTP session per request, every candle held in memory and written
with one SQLAlchemy insert in one transaction at the end. Printed beside B1 as B2 / B1.

The stand-in's synthetic data is generated (and a finished day's rows encoded) once before timing,
as real ISS has its data ready: a page is then a slice of them. The stand-in still parses every
request and sends every answer on the same 2 cores, which is counted against us.

    uv run python benchmarks/bench_backfill.py                         # full size (docs/benchmarks.md)
    uv run python benchmarks/bench_backfill.py --securities 1 --days 2 --months 1 --concurrency 4 \
        --layouts one-process                                          # smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BIN,
    DEFAULT_NOW,
    DEFAULT_PG_ADMIN_DSN,
    ExternalISS,
    ProjectHome,
    StandInProcess,
    bytecode_state,
    project_home,
    register_securities,
    timed,
)

from candlestick_pipeline.defs.candles.loading import plan_spans
from candlestick_pipeline.defs.candles.partitions import (
    date_keys_between,
    multi_key,
    parse_candle_partition,
)
from candlestick_pipeline.defs.iss.client import ISSClient
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import Timeframe, get_timeframe, window_to_iss_dates

# Stand-in securities with long sessions (shares incl. weekends, FX, a future): ~1,000 minutes a day.
CATALOG = ("SBER.TQBR", "GAZP.TQBR", "SBER.SMAL", "CNYRUB_TOM.CETS", "SiZ5.RFUD")
LAYOUTS = ("sequential", "serial-runs", "one-process", "parallel")


@dataclass(frozen=True)
class Workload:
    name: str
    timeframe: Timeframe
    keys: tuple[str, ...]
    first: dt.date
    last: dt.date


@dataclass
class Result:
    label: str
    concurrency: int
    runs: int
    pages: int
    candles: int
    seconds: float
    latency_ms: float
    cpu_seconds: float = 0.0
    breakdown: str = ""
    iss_window: float | None = None  # first request to last answer, as the stand-in saw it

    @property
    def ideal(self) -> float:
        return self.pages * self.latency_ms / 1000 / self.concurrency

    def line(self) -> str:
        ratio = self.seconds / self.ideal if self.ideal else float("nan")
        return (
            f"{self.label:<28} C={self.concurrency:<2} runs={self.runs:<3} pages={self.pages:<6} "
            f"candles={self.candles:<8} wall={self.seconds:7.2f}s ideal={self.ideal:6.2f}s "
            f"ratio={ratio:5.2f} {self.candles / self.seconds:9,.0f} candles/s cpu={self.cpu_seconds:6.1f}s"
        )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


ISS = StandInProcess | ExternalISS


def warm_up(standin: ISS, workloads: Sequence[Workload]) -> None:
    """Fetch every window once at zero latency, so the stand-in has generated its data."""
    standin.set_latency(0)
    with ISSClient(standin.base_url, max_concurrency=2) as client:
        for work in workloads:
            for raw in work.keys:
                key = SecurityKey.parse(raw)
                info = client.get_security(key.secid, key.board)
                parts = [
                    parse_candle_partition(work.timeframe, str(multi_key(key, date_key)))
                    for date_key in date_keys_between(work.timeframe, work.first, work.last)
                ]
                # The stand-in caches what it generated by day, whatever the span of a request.
                for span in plan_spans(parts):
                    date_from, date_till = window_to_iss_dates(span.start, span.end)
                    for _ in client.stream_candles(info, work.timeframe.iss_interval, date_from, date_till):
                        pass


_PHASES = {
    "ASSET_MATERIALIZATION_PLANNED": "planned",
    "RUN_START": "start",
    "STEP_START": "step",
    "ASSET_MATERIALIZATION": "materialized",
    "ASSET_CHECK_EVALUATION": "checked",
    "RUN_SUCCESS": "end",
}


def _timeline(project: ProjectHome, started: float) -> str:
    """Each run's phases, in seconds after the command started (wall clock), from its events:
    created, first-last planned event, run start, each step's start, first-last materialization,
    first-last check evaluation, run end."""
    import dagster as dg

    project.apply()
    lines = []
    with dg.DagsterInstance.get() as instance:
        for record in sorted(instance.get_run_records(), key=lambda r: r.create_timestamp):
            seen: dict[str, list[float]] = {}
            for entry in instance.all_logs(record.dagster_run.run_id):
                kind = entry.dagster_event_type.name if entry.dagster_event_type else None
                if kind in _PHASES:
                    seen.setdefault(_PHASES[kind], []).append(entry.timestamp - started)
            parts = [f"created {record.create_timestamp.timestamp() - started:5.2f}"]
            for phase in dict.fromkeys(_PHASES.values()):
                times = seen.get(phase)
                if not times:
                    continue
                if len(times) == 1:
                    parts.append(f"{phase} {times[0]:5.2f}")
                else:
                    parts.append(f"{phase} {min(times):5.2f}-{max(times):5.2f} ({len(times)})")
            lines.append(f"    run {record.dagster_run.run_id[:8]}: " + ", ".join(parts))
    return "\n".join(lines)


def _breakdown(project: ProjectHome, wall: float) -> tuple[int, int, str]:
    """Runs launched, ISS pages they fetched, and where the wall time went, from the instance."""
    import dagster as dg

    project.apply()
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records()
        failed = [
            r.dagster_run.run_id for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS
        ]
        if failed:
            raise SystemExit(f"runs failed: {failed}")
        run_seconds = load_seconds = check_seconds = 0.0
        pages = 0
        for record in records:
            run_seconds += (record.end_time or 0) - record.create_timestamp.timestamp()
            materialized = instance.get_records_for_run(
                run_id=record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=1
            ).records
            for event in materialized:
                meta = event.event_log_entry.asset_materialization.metadata  # type: ignore[union-attr]
                pages += int(meta["run_iss_pages"].value)  # type: ignore[arg-type]
            for step in instance.get_run_step_stats(record.dagster_run.run_id):
                seconds = (step.end_time or 0) - (step.start_time or 0)
                if step.step_key.endswith("_checks"):
                    check_seconds += seconds
                else:
                    load_seconds += seconds
    runs = len(records)
    bookkeeping = run_seconds - load_seconds - check_seconds
    # Runs that overlap (parallel workers) add up to more than the wall: nothing is "outside" them.
    outside = (
        f"outside runs (process start-up, serial layouts) {wall - run_seconds:.2f}s"
        if run_seconds <= wall
        else f"the runs overlapped ({run_seconds / wall:.1f} at once on average over the wall)"
    )
    text = (
        f"    sum over runs: run {run_seconds:.2f}s = load step {load_seconds:.2f}s + checks step "
        f"{check_seconds:.2f}s + run bookkeeping {bookkeeping:.2f}s ({bookkeeping / max(runs, 1):.2f}s/run); "
        + outside
    )
    return runs, pages, text


def run_b1(
    standin: ISS,
    work: Workload,
    concurrency: int,
    layout: str,
    latency_ms: float,
    storage: str,
    warehouse_kind: str,
    pg_admin_dsn: str,
    log: Path | None,
    extra_env: dict[str, str],
    processes: int,
    timeline: bool = False,
) -> Result:
    with project_home(storage, warehouse_kind, pg_admin_dsn) as project:
        project.extra_env.update(extra_env)
        project.apply()
        register_securities(standin.base_url, work.keys)
        standin.set_latency(latency_ms)
        standin.reset_stats()
        window = [
            "-t",
            work.timeframe.name,
            "--from",
            work.first.isoformat(),
            "--till",
            work.last.isoformat(),
        ]
        candlestick = str(BIN / "candlestick")
        env = project.env(ISS_BASE_URL=standin.base_url, ISS_MAX_CONCURRENCY=str(concurrency))
        cpu_before = _children_cpu()
        started_epoch = time.time()
        started = time.perf_counter()
        if layout in ("one-process", "serial-runs"):
            jobs = ["-j", "1"] if layout == "serial-runs" else []
            _, code = timed([candlestick, "load", *work.keys, *window, *jobs], env, log)
            codes = [code]
        elif layout == "sequential":
            codes = [timed([candlestick, "load", key, *window], env, log)[1] for key in work.keys]
        else:
            # P processes, the securities dealt round-robin, ISS concurrency split so the total is C.
            groups = [work.keys[i::processes] for i in range(min(processes, len(work.keys)))]
            share = max(1, concurrency // len(groups))
            env = project.env(ISS_BASE_URL=standin.base_url, ISS_MAX_CONCURRENCY=str(share))
            with open(log, "ab") if log else open(os.devnull, "wb") as out:
                procs = [
                    subprocess.Popen([candlestick, "load", *group, *window], env=env, stdout=out, stderr=out)
                    for group in groups
                ]
                codes = [proc.wait() for proc in procs]
            layout = f"parallel{len(groups)}x{share}"
        seconds = time.perf_counter() - started
        cpu = _children_cpu() - cpu_before
        if any(codes):
            raise SystemExit(f"candlestick load failed ({codes}); see {log or 'rerun with --log'}")
        engine = warehouse.create_warehouse_engine(project.warehouse_dsn)
        try:
            candles = warehouse.count_candles(engine)
        finally:
            engine.dispose()
        runs, run_pages, breakdown = _breakdown(project, seconds)
        if timeline:
            breakdown += "\n" + _timeline(project, started_epoch)
        counted = standin.candle_requests()
        pages = run_pages if counted is None else counted
        utilisation = standin.utilisation()
        iss_window = None if utilisation is None else utilisation[1]
        if utilisation is not None:
            breakdown += (
                f"\n    ISS: {utilisation[0]:.2f} requests in flight on average (C={concurrency}) from the "
                f"first request to the last answer, {utilisation[1]:.2f}s"
            )
    label = f"B1 {work.name} {layout}/{storage}"
    return Result(label, concurrency, runs, pages, candles, seconds, latency_ms, cpu, breakdown, iss_window)


# --- B2: the old service ------------------------------------------------------------------------


def _old_service_security(
    base_url: str, key: SecurityKey, work: Workload
) -> tuple[list[dict[str, object]], int]:
    """One security's whole range, one page after another, a new HTTP session per request.

    Returns the candles and the candle pages requested."""
    info = httpx.get(f"{base_url}/iss/securities/{key.secid}.json", params={"iss.meta": "off"}).json()
    boards = info["boards"]
    rows = (dict(zip(boards["columns"], values, strict=True)) for values in boards["data"])
    row = next(row for row in rows if row["boardid"] == key.board)
    url = (
        f"{base_url}/iss/engines/{row['engine']}/markets/{row['market']}/boards/{key.board}"
        f"/securities/{key.secid}/candles.json"
    )
    candles: list[dict[str, object]] = []
    start = pages = 0
    while True:
        params = {
            "from": work.first.isoformat(),
            "till": work.last.isoformat(),
            "interval": str(work.timeframe.iss_interval),
            "start": str(start),
            "iss.meta": "off",
        }
        block = httpx.get(url, params=params, timeout=30).json()["candles"]  # a new session every time
        pages += 1
        if not block["data"]:
            return candles, pages
        columns = block["columns"]
        for values in block["data"]:
            item = dict(zip(columns, values, strict=True))
            candles.append(
                {
                    "secid": key.secid,
                    "board": key.board,
                    "timeframe": work.timeframe.name,
                    "begin": dt.datetime.fromisoformat(item["begin"]),
                    "end": dt.datetime.fromisoformat(item["end"]),
                    "open": float(item["open"]),
                    "high": float(item["high"]),
                    "low": float(item["low"]),
                    "close": float(item["close"]),
                    "value": float(item["value"]),
                    "volume": int(item["volume"]),
                }
            )
        start += len(block["data"])


def run_b2(standin: ISS, work: Workload, latency_ms: float, warehouse_kind: str, pg_admin_dsn: str) -> Result:
    standin.set_latency(latency_ms)
    standin.reset_stats()
    with project_home("sqlite", warehouse_kind, pg_admin_dsn) as project:
        engine = warehouse.create_warehouse_engine(project.warehouse_dsn)
        try:
            warehouse.migrate(engine)
            started = time.perf_counter()
            history: list[dict[str, object]] = []
            pages = 0
            for raw in work.keys:
                rows, used = _old_service_security(standin.base_url, SecurityKey.parse(raw), work)
                history.extend(rows)
                pages += used
            with engine.begin() as conn:  # everything in one transaction at the end
                conn.execute(sa.insert(warehouse.candles), history)
            seconds = time.perf_counter() - started
            candles = warehouse.count_candles(engine)
        finally:
            engine.dispose()
    counted = standin.candle_requests()
    pages = pages if counted is None else counted
    return Result(f"B2 {work.name} old service", 1, 0, pages, candles, seconds, latency_ms)


def per_run_startup(
    standin: StandInProcess, keys: Sequence[str], storage: str, warehouse_kind: str, pg_admin_dsn: str
) -> None:
    """What a run costs before and after its ISS work: process start-up, and a run of one partition."""
    day = "2025-06-02"
    with project_home(storage, warehouse_kind, pg_admin_dsn) as project:
        project.apply()
        register_securities(standin.base_url, keys)
        standin.set_latency(0)
        env = project.env(ISS_BASE_URL=standin.base_url)
        candlestick = str(BIN / "candlestick")
        one_day = ["-t", "1m", "--from", day, "--till", day]
        dry, _ = timed([candlestick, "load", keys[0], *one_day, "--dry-run"], env)
        print(f"  process start-up (`candlestick load --dry-run`, imports + status query): {dry:.2f}s")
        seconds, code = timed([candlestick, "load", *keys[1:], *one_day], env)
        per_run = (seconds - dry) / (len(keys) - 1)
        print(
            f"  {len(keys) - 1} one-partition runs in one `candlestick load` ({seconds:.2f}s): "
            f"{per_run:.2f}s a run beyond start-up (latency 0)"
        )
        seconds, code2 = timed(
            [
                str(BIN / "dagster"),
                "asset",
                "materialize",
                "-m",
                "candlestick_pipeline.definitions",
                "--select",
                "candles_1m",
                "--partition",
                f"{day}|{keys[0]}",
            ],
            env,
        )
        print(f"  `dagster asset materialize --partition` (one run, one partition): {seconds:.2f}s")
        if code or code2:
            raise SystemExit("a start-up probe failed")


_FLOOR_RUNS = 3
_FLOOR_MARKS = ("imported", "instance", "body", "end")


@dataclass(frozen=True)
class Floor:
    """Dagster's floor on this box (benchmarks/_dagster_floor.py): seconds after the process started
    until Dagster was imported, the instance open, the asset's body running and the process done."""

    imported: float
    instance: float
    body: float
    end: float

    def line(self, storage: str) -> str:
        return (
            f"Dagster's floor ({storage} storage, best of {_FLOOR_RUNS}): a fresh process that imports "
            f"Dagster ({self.imported:.2f}s), opens the instance ({self.instance:.2f}s) and materializes "
            f"one asset that does nothing reaches its body at {self.body:.2f}s and exits at {self.end:.2f}s"
        )


def dagster_floor(storage: str, warehouse_kind: str, pg_admin_dsn: str) -> Floor:
    """The quickest of ``_FLOOR_RUNS`` one-asset runs, each in a fresh process, in a throw-away
    instance of ``storage`` (after one unmeasured run that creates the instance's tables, as B1's
    ``create-security`` does before its timed command)."""
    probe = [sys.executable, str(Path(__file__).with_name("_dagster_floor.py"))]
    floors: list[Floor] = []
    with project_home(storage, warehouse_kind, pg_admin_dsn) as project:
        env = project.env()
        for attempt in range(_FLOOR_RUNS + 1):
            started = time.time()
            done = subprocess.run(probe, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"the Dagster floor probe failed:\n{done.stderr[-2000:]}")
            marks = json.loads(done.stdout.strip().splitlines()[-1])
            if attempt:
                floors.append(Floor(**{name: marks[name] - started for name in _FLOOR_MARKS}))
    return min(floors, key=lambda floor: floor.end)


def beyond_floor(result: Result, floor: Floor) -> str:
    """B1's wall against ``ideal + floor``, and where the rest went: the ISS window's excess over
    the ideal (the stand-in's own time beyond its latency, and any slot left idle) and the rest, the
    pipeline's own start and end."""
    bound = result.ideal + floor.end
    line = (
        f"    against the ideal plus Dagster's floor ({result.ideal:.2f}s + {floor.end:.2f}s): "
        f"{result.seconds / bound:.2f}x, {result.seconds - bound:.2f}s beyond"
    )
    if result.iss_window is None:
        return line
    in_window = result.iss_window - result.ideal
    return (
        f"{line}: {in_window:.2f}s in the ISS window beyond the ideal, "
        f"{result.seconds - bound - in_window:.2f}s the pipeline's own start and end"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--securities", type=int, default=4, help=f"1m workload: first N of {CATALOG}")
    parser.add_argument(
        "--days", type=int, default=120, help="1m workload: days, ending the day before --now"
    )
    parser.add_argument("--months", type=int, default=12, help="1h workload: closed months before --now")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[4, 8], help="ISS_MAX_CONCURRENCY values"
    )
    parser.add_argument("--layouts", nargs="+", default=["one-process"], choices=LAYOUTS)
    parser.add_argument("--processes", type=int, default=2, help="processes of the parallel layout")
    parser.add_argument("--startup", action="store_true", help="also measure per-run start-up")
    parser.add_argument("--workloads", nargs="+", default=["1m", "1h"], choices=["1m", "1h"])
    parser.add_argument("--latency-ms", type=float, default=50.0, help="stand-in latency per ISS request")
    parser.add_argument(
        "--storage",
        nargs="+",
        default=["sqlite", "postgres"],
        choices=["sqlite", "postgres"],
        help="Dagster storage: the embedded default (SQLite) and production's (PostgreSQL)",
    )
    parser.add_argument("--warehouse", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--no-baseline", action="store_true", help="skip B2")
    parser.add_argument("--now", default=DEFAULT_NOW, help="the stand-in's clock (Moscow)")
    parser.add_argument("--pg-admin-dsn", default=DEFAULT_PG_ADMIN_DSN)
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment of the runs"
    )
    parser.add_argument("--log", type=Path, default=None, help="append the runs' output to this file")
    parser.add_argument(
        "--iss-url",
        default=None,
        help="use an ISS (stand-in) already running there instead of starting ours; give it the same "
        "--latency-ms and --now it runs with. Pages are then counted from our runs' metadata",
    )
    parser.add_argument(
        "--keys", nargs="+", default=None, metavar="SECID.BOARD", help=f"1m securities (default {CATALOG})"
    )
    parser.add_argument("--no-warm-up", action="store_true", help="skip fetching every window once first")
    parser.add_argument(
        "--timeline", action="store_true", help="print each B1 run's phases (seconds from the start)"
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="skip measuring Dagster's floor (a one-asset run) first"
    )
    args = parser.parse_args(argv)
    catalog = tuple(args.keys) if args.keys else CATALOG
    if not 1 <= args.securities <= len(catalog):
        parser.error(f"--securities must be 1..{len(catalog)}")

    today = dt.datetime.fromisoformat(args.now).date()
    last_day = today - dt.timedelta(days=1)
    month_start = today.replace(day=1)
    first_month = month_start
    for _ in range(args.months):
        first_month = (first_month - dt.timedelta(days=1)).replace(day=1)
    workloads = {
        "1m": Workload(
            f"1m {args.securities}sec x {args.days}d",
            get_timeframe("1m"),
            catalog[: args.securities],
            last_day - dt.timedelta(days=args.days - 1),
            last_day,
        ),
        "1h": Workload(
            f"1h 1sec x {args.months}mo",
            get_timeframe("1h"),
            catalog[:1],
            first_month,
            month_start - dt.timedelta(days=1),
        ),
    }
    chosen = [workloads[name] for name in args.workloads]
    print(
        f"stand-in latency {args.latency_ms:g} ms, clock {args.now}; "
        f"Dagster storage {' and '.join(args.storage)}, "
        f"warehouse {args.warehouse}; runner: candlestick load (subprocesses); {bytecode_state()}",
        flush=True,
    )
    floors: dict[str, Floor] = {}
    if not args.no_floor:
        for storage in args.storage:
            floors[storage] = dagster_floor(storage, args.warehouse, args.pg_admin_dsn)
            print(floors[storage].line(storage), flush=True)
    standin: ISS = ExternalISS(args.iss_url) if args.iss_url else StandInProcess(args.now)
    with standin:
        if not args.no_warm_up:
            started = time.perf_counter()
            warm_up(standin, chosen)
            warmed = time.perf_counter() - started
            print(f"every window fetched once in {warmed:.1f}s (not timed)", flush=True)
        if args.startup and isinstance(standin, StandInProcess):
            for storage in args.storage:
                print(f"\n== per-run start-up (Dagster storage {storage})", flush=True)
                per_run_startup(standin, catalog, storage, args.warehouse, args.pg_admin_dsn)
        for work in chosen:
            print(f"\n== {work.name}: {', '.join(work.keys)} {work.first} .. {work.last}", flush=True)
            b1: list[Result] = []
            for storage, concurrency, layout in itertools.product(
                args.storage, args.concurrency, args.layouts
            ):
                result = run_b1(
                    standin,
                    work,
                    concurrency,
                    layout,
                    args.latency_ms,
                    storage,
                    args.warehouse,
                    args.pg_admin_dsn,
                    args.log,
                    dict(item.split("=", 1) for item in args.env),
                    args.processes,
                    args.timeline,
                )
                b1.append(result)
                print(result.line(), flush=True)
                print(result.breakdown, flush=True)
                if storage in floors:
                    print(beyond_floor(result, floors[storage]), flush=True)
            if not args.no_baseline:
                b2 = run_b2(standin, work, args.latency_ms, args.warehouse, args.pg_admin_dsn)
                print(b2.line().replace(" ratio=", " (sequential) ratio="), flush=True)
                for result in b1:
                    if result.candles != b2.candles:
                        raise SystemExit(
                            f"B1 ({result.label}) wrote {result.candles} candles, B2 {b2.candles}"
                        )
                    print(
                        f"    B2/B1 wall ({result.label}, C={result.concurrency}): "
                        f"{b2.seconds / result.seconds:.2f}x",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
