"""``candlestick``: add and remove securities, load ranges of candles, run the UI and the stand-in.

The seed service's command keeps working: ``candlestick create-security SU26238RMFS4 TQOB``.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import gc
import importlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import NoReturn

import click
import dagster as dg
import sqlalchemy as sa

from candlestick_pipeline import config
from candlestick_pipeline.defs.candles.partitions import SECURITIES_PARTITIONS, date_keys_between, multi_key
from candlestick_pipeline.defs.iss import gate as iss_gate
from candlestick_pipeline.defs.iss.client import ISSClient, shared_ssl_context
from candlestick_pipeline.defs.iss.errors import ISSError
from candlestick_pipeline.defs.iss.resource import ensure_iss_pool
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.scripts import console_script
from candlestick_pipeline.lib.securities import InvalidSecurityKeyError, SecurityInfo, SecurityKey
from candlestick_pipeline.lib.timeframes import (
    MOSCOW,
    TIMEFRAMES,
    Timeframe,
    UnknownTimeframeError,
    get_timeframe,
)

# Dagster's console logger levels; its DEBUG lines are one per event (a 120-partition run prints
# 130), which drowns what a terminal user wants: the loader's own lines, warnings and the outcome.
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

_Borders = dict[int, tuple[dt.datetime, dt.datetime]]  # ISS interval -> (first begin, last end)


class _UserError(click.ClickException):
    """An error the user can fix; printed without a traceback, exit code 2."""

    exit_code = 2


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except (
        ISSError,
        InvalidSecurityKeyError,
        UnknownTimeframeError,
        config.ConfigError,
        warehouse.WarehouseError,
        ValueError,
    ) as exc:
        raise _UserError(str(exc)) from exc


def _instance() -> dg.DagsterInstance:
    os.environ.setdefault("DAGSTER_HOME", str(config.dagster_home()))
    return dg.DagsterInstance.get()


def _engine() -> sa.Engine:
    engine = warehouse.create_warehouse_engine(config.warehouse_dsn())
    warehouse.migrate(engine)
    return engine


@click.group()
def main() -> None:
    """MOEX candles pipeline: manage securities and load candles."""


@main.command("create-security")
@click.argument("secid")
@click.argument("board", required=False)
def create_security(secid: str, board: str | None) -> None:
    """Add SECID (on BOARD, or its primary board) after checking it with ISS.

    Writes the reference row to the warehouse and adds the ``securities`` partition to the Dagster
    instance. An unknown secid or a board it does not trade on is an error and writes nothing.
    """
    with _user_errors():
        instance = _instance()  # fail on a bad DAGSTER_HOME before anything is written
        with ISSClient.from_settings(config.ISSSettings.from_env()) as client:
            info = client.get_security(secid, board)
        engine = _engine()
        try:
            stored = warehouse.get_security(engine, info.key) is not None
            warehouse.upsert_security(engine, info)
        finally:
            engine.dispose()
        key = info.key.partition_key
        partitioned = instance.has_dynamic_partition(SECURITIES_PARTITIONS, key)
        if not partitioned:
            instance.add_dynamic_partitions(SECURITIES_PARTITIONS, [key])
        registered = stored and partitioned
        # The sensors then request this security's first runs all at once.
        ensure_iss_pool(instance)
    primary = "primary board" if info.is_primary else "not its primary board"
    what = "refreshed (registered already)" if registered else "added"
    click.echo(
        f"{what} {key}: {info.shortname or info.name or info.secid} "
        f"({info.engine}/{info.market}, {primary}); partition key {key}"
    )
    if not info.is_traded:
        till = f" (listed till {info.listed_till})" if info.listed_till else ""
        click.echo(
            f"note: ISS lists {info.secid} as no longer traded on {info.board}{till}: "
            "its history loads, later days stay empty",
            err=True,
        )


@main.command("remove-security")
@click.argument("key")
@click.option("--delete-candles", is_flag=True, help="Also delete its candles from the warehouse.")
def remove_security(key: str, delete_candles: bool) -> None:
    """Remove the security KEY (SECID.BOARD): its partition, its reference row, optionally its candles."""
    with _user_errors():
        security = SecurityKey.parse(key)
        instance = _instance()
        engine = _engine()
        try:
            deleted = warehouse.delete_security(engine, security, delete_candles=delete_candles)
        finally:
            engine.dispose()
        if instance.has_dynamic_partition(SECURITIES_PARTITIONS, security.partition_key):
            instance.delete_dynamic_partition(SECURITIES_PARTITIONS, security.partition_key)
    click.echo(f"removed {security}" + (f" and {deleted} candles" if delete_candles else ""))


@main.command("list-securities")
def list_securities() -> None:
    """List registered securities: partition key, names, engine/market."""
    with _user_errors():
        instance = _instance()
        registered = set(instance.get_dynamic_partitions(SECURITIES_PARTITIONS))
        engine = _engine()
        try:
            infos = warehouse.list_securities(engine)
        finally:
            engine.dispose()
    for info in infos:
        key = info.key.partition_key
        flag = "" if key in registered else "  (no Dagster partition: run create-security again)"
        click.echo(f"{key:24} {info.engine}/{info.market:10} {info.shortname or ''}{flag}")
    for key in sorted(registered - {info.key.partition_key for info in infos}):
        click.echo(f"{key:24} (partition without a warehouse row: run create-security again)")


def _parse_date(value: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _UserError(f"--{name} {value!r} is not a YYYY-MM-DD date") from None


def _run_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options of commands that execute runs: ``--parallel`` and ``--log-level``."""
    parallel = click.option(
        "--parallel",
        "-j",
        type=click.IntRange(min=1),
        default=None,
        help="Runs at once, in worker processes (default: one per security, up to ISS_MAX_CONCURRENCY); "
        "they share ISS_MAX_CONCURRENCY requests in flight.",
    )
    log_level = click.option(
        "--log-level",
        type=click.Choice(_LOG_LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
        help="The least level of the runs' log lines printed here (Dagster's console logger; debug "
        "shows every event). The Dagster UI keeps every event of a run whatever this is.",
    )
    return parallel(log_level(command))


@main.command("load")
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
@click.option("--timeframe", "-t", "timeframe_name", required=True, help=f"One of {', '.join(TIMEFRAMES)}.")
@click.option("--from", "date_from", required=True, help="First day (YYYY-MM-DD, Moscow).")
@click.option("--till", "date_till", required=True, help="Last day, inclusive (YYYY-MM-DD).")
@click.option("--refresh", is_flag=True, help="Fetch every partition again, even final ones.")
@click.option("--dry-run", is_flag=True, help="Only print which partitions would be loaded.")
@_run_options
def load(
    keys: tuple[str, ...],
    timeframe_name: str,
    date_from: str,
    date_till: str,
    refresh: bool,
    dry_run: bool,
    parallel: int | None,
    log_level: str,
) -> None:
    """Load the candles of KEY (SECID.BOARD; several KEYs at once) for a range, fetching only the
    partitions that are not loaded yet.

    Records each run in the Dagster instance, like ``dagster asset materialize --partition-range``
    but skipping what is already final. A run covers one security; give all the securities of a
    backfill in one call: their runs go in parallel (forked worker processes, ``--parallel``), so
    that one run's Dagster bookkeeping overlaps another's ISS requests, and they share one budget of
    ``ISS_MAX_CONCURRENCY`` requests in flight, so ISS never sees more than one run would.
    """
    from candlestick_pipeline.defs.candles.status import contiguous_runs, partition_states_many

    first, last = _parse_date(date_from, "from"), _parse_date(date_till, "till")
    with _user_errors():
        timeframe = get_timeframe(timeframe_name)
        securities = list(dict.fromkeys(SecurityKey.parse(key) for key in keys))
        instance = _instance()
        for security in securities:
            if not instance.has_dynamic_partition(SECURITIES_PARTITIONS, security.partition_key):
                raise _UserError(
                    f"{security} is not registered: run `candlestick create-security "
                    f"{security.secid} {security.board}` first"
                )
        all_keys = date_keys_between(timeframe, first, last)
        if not all_keys:
            raise _UserError(f"no {timeframe.name} partitions between {first} and {last}")
        plans: list[tuple[SecurityKey, list[list[str]]]] = []
        # One status query for all the securities: 300 securities x 3 years took 36 s one by one,
        # 20 s together (benchmark B6).
        states_by_security = partition_states_many(instance, timeframe, securities, all_keys)
        for security in securities:
            states = states_by_security[security]
            wanted = all_keys if refresh else [s.date_key for s in states if s.needs_load]
            runs = contiguous_runs(wanted, all_keys)
            click.echo(
                f"{security} {timeframe.name}: {len(all_keys)} partition(s), "
                f"{len(all_keys) - len(wanted)} already loaded, {len(wanted)} to load in {len(runs)} run(s)"
            )
            plans.append((security, runs))
        if dry_run:
            return
        work = [(security, run) for security, runs in plans for run in runs]
        failed = _execute_work(instance, timeframe.asset_name, work, parallel, log_level)
    if failed:
        raise _UserError(f"{failed} run(s) failed; see the Dagster UI or `dagster run list`")


@main.command("update-candles")
@click.argument("keys", nargs=-1)
@click.option(
    "--timeframe",
    "-t",
    "timeframe_names",
    multiple=True,
    help="Only this timeframe (repeatable; default: the enabled ones, CANDLESTICK_TIMEFRAMES).",
)
@click.option("--dry-run", is_flag=True, help="Only print which partitions would be loaded.")
@_run_options
def update_candles(
    keys: tuple[str, ...],
    timeframe_names: tuple[str, ...],
    dry_run: bool,
    parallel: int | None,
    log_level: str,
) -> None:
    """Bring the candles of every registered security (or of each KEY) up to date: the old
    service's ``update-candles``.

    For every enabled timeframe, loads each partition that is missing or not final, from where
    ISS's candle borders start (not before CANDLESTICK_EARLIEST_DATE) to today by ISS's clock: what
    the Dagster daemon's sensors and schedules keep doing, in one command (e.g. for cron, without
    the daemon). Today's partitions are loaded again while their period is open. Runs are recorded
    in the Dagster instance, as ``load``'s are.
    """
    from candlestick_pipeline.defs.automation.sensors import registered_securities

    with _user_errors():
        timeframes = [get_timeframe(name) for name in (timeframe_names or config.enabled_timeframes())]
        instance = _instance()
        registered = registered_securities(instance)
        securities = list(dict.fromkeys(SecurityKey.parse(key) for key in keys)) or registered
        unknown = [str(key) for key in securities if key not in registered]
        if unknown:
            raise _UserError(f"not registered: {', '.join(unknown)}; run `candlestick create-security` first")
        settings = config.ISSSettings.from_env()
        with ISSClient.from_settings(settings) as client:
            now = client.server_time() or dt.datetime.now(MOSCOW)
            borders, skipped = _candle_borders(client, securities, settings.max_concurrency)
        failed = skipped
        for timeframe in timeframes:
            work = _update_plan(instance, timeframe, borders, now)
            if not dry_run:
                failed += _execute_work(instance, timeframe.asset_name, work, parallel, log_level)
    if failed:
        raise _UserError(f"{failed} run(s) or securities failed; see above and the Dagster UI")


def _update_plan(
    instance: dg.DagsterInstance,
    timeframe: Timeframe,
    borders: dict[SecurityKey, _Borders],
    now: dt.datetime,
) -> list[tuple[SecurityKey, list[str]]]:
    """The runs that bring ``timeframe`` up to date, printed for each security that has any (a cron
    job's output stays short when most are up to date), then a total."""
    from candlestick_pipeline.defs.automation.planning import RunPlan, history_start, plan_update

    starts = {key: history_start(found, timeframe.iss_interval) for key, found in borders.items()}
    plans = plan_update(instance, timeframe, starts, now)
    by_security: dict[SecurityKey, list[RunPlan]] = {}
    for plan in plans:
        by_security.setdefault(plan.security, []).append(plan)
    for key, mine in by_security.items():
        count = sum(len(plan.date_keys) for plan in mine)
        click.echo(
            f"{key} {timeframe.name}: from {starts[key]}, {count} partition(s) to load in {len(mine)} run(s)"
        )
    click.echo(f"{timeframe.name}: {len(starts) - len(by_security)} of {len(starts)} securities up to date")
    return [(plan.security, list(plan.date_keys)) for plan in plans]


def _candle_borders(
    client: ISSClient, securities: list[SecurityKey], concurrency: int
) -> tuple[dict[SecurityKey, _Borders], int]:
    """Each security's candle borders from ISS (``concurrency`` requests at once: one a security,
    300 securities would otherwise wait out 300 round trips), and how many had to be skipped."""
    engine = _engine()
    try:
        stored = {info.key: info for info in warehouse.list_securities(engine)}  # one query for all
    finally:
        engine.dispose()
    for key in (key for key in securities if key not in stored):
        click.echo(f"{key}: no warehouse row; run `candlestick create-security` again", err=True)
    known = [stored[key] for key in securities if key in stored]

    def borders_of(info: SecurityInfo) -> _Borders | None:
        try:
            return client.get_candle_borders(info)
        except ISSError as exc:
            click.echo(f"{info.key}: skipped, ISS's candle borders are unavailable ({exc})", err=True)
            return None

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        found = dict(zip((info.key for info in known), pool.map(borders_of, known), strict=True))
    borders = {key: value for key, value in found.items() if value is not None}
    return borders, len(securities) - len(borders)


def _execute_work(
    instance: dg.DagsterInstance,
    asset_name: str,
    work: list[tuple[SecurityKey, list[str]]],
    parallel: int | None,
    log_level: str,
) -> int:
    """Execute one run per (security, partition range), ``parallel`` at once; the number that failed.

    Their events go in batches: DAGSTER_EVENT_BATCH_SIZE, set by the package (__init__.py).
    """
    if not work:
        return 0
    concurrency = config.ISSSettings.from_env().max_concurrency
    workers = max(1, min(len(work), parallel or concurrency))
    if workers == 1:
        outcomes = [
            _execute_run(asset_name, str(key), run, concurrency, log_level, instance) for key, run in work
        ]
        return sum(not ok for ok in outcomes)
    # The workers share one budget of ISS_MAX_CONCURRENCY requests in flight (defs/iss/gate.py), so
    # ISS sees no more than one run alone would, and no slot idles while its worker does Dagster
    # bookkeeping or has run out of pages. Worker processes, not threads: Dagster's SQLite storage
    # deadlocks between threads of one process. Forked, they start without importing anything again
    # (about 1.5 s a process) and inherit the shared budget.
    ensure_iss_pool(instance)  # before the runs start together (Dagster 1.13 races on it)
    iss_gate.share_between_processes(concurrency)
    shared_ssl_context()  # built once here, inherited by every worker's ISS client
    # Imported once here, not by each worker on its way to its first run: the job's modules, and
    # httpcore, which httpx imports when the first client opens (0.1 s a worker on a slow core).
    importlib.import_module("candlestick_pipeline.definitions")
    importlib.import_module("httpcore")
    # The parent's objects (Dagster's imports: about a million) live as long as the command. Frozen,
    # a worker's full collections skip them: each worker's first one took 130-170 ms, on the way to
    # its first ISS request, and wrote to (so copied) most of the pages it shares with the parent.
    gc.freeze()
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
        with pool:
            args = [(asset_name, str(security), run, concurrency, log_level) for security, run in work]
            return sum(not ok for ok in pool.map(_execute_run, *zip(*args, strict=True)))
    finally:
        iss_gate.stop_sharing()


@functools.cache
def _job_for(asset_name: str, iss_max_concurrency: int) -> dg.JobDefinition:
    from candlestick_pipeline.definitions import build_definitions

    # Built now, not at import: the environment (ISS URL, DSN) is the one this command runs with.
    defs = build_definitions(iss_max_concurrency=iss_max_concurrency)
    job = defs.resolve_implicit_job_def_def_for_assets([dg.AssetKey(asset_name)])
    if job is None:  # pragma: no cover - every candle asset has an implicit job
        raise _UserError(f"no job can materialize {asset_name}")
    return job


@functools.cache
def _worker_instance() -> dg.DagsterInstance:
    """A worker process's own instance, opened once for all the runs it executes (never the parent's)."""
    return _instance()


def _execute_run(
    asset_name: str,
    security: str,
    run: list[str],
    iss_max_concurrency: int,
    log_level: str,
    instance: dg.DagsterInstance | None = None,
) -> bool:
    """One run of ``asset_name`` over ``run`` (date keys) of ``security``; whether it succeeded."""
    key = SecurityKey.parse(security)
    tags = {
        "dagster/asset_partition_range_start": str(multi_key(key, run[0])),
        "dagster/asset_partition_range_end": str(multi_key(key, run[-1])),
    }
    # Forked workers start their runs one at a time, each until its first ISS request (gate.py).
    with iss_gate.start_up_in_turn():
        result = _job_for(asset_name, iss_max_concurrency).execute_in_process(
            instance=instance or _worker_instance(),
            run_config={"loggers": {"console": {"config": {"log_level": log_level.upper()}}}},
            tags=tags,
            asset_selection=[dg.AssetKey(asset_name)],
            raise_on_error=False,
        )
    status = "ok" if result.success else "FAILED"
    click.echo(f"  {key} {run[0]} .. {run[-1]} ({len(run)} partition(s)): {status}, run {result.run_id}")
    return result.success


@main.command("dev", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def dev(ctx: click.Context) -> None:
    """Start the Dagster UI and daemon (``dagster dev``) with DAGSTER_HOME set to this project."""
    with _user_errors():
        home = config.dagster_home()
        workspace = config.workspace_file()
    os.environ["DAGSTER_HOME"] = str(home)
    # Dagster's daemon creates the runs of backfills and sensors: it inherits DAGSTER_EVENT_BATCH_SIZE
    # (set by this package unless the user did), so their planned events go in batches too.
    args = [*console_script("dagster"), "dev", "-w", str(workspace), *ctx.args]
    click.echo(f"DAGSTER_HOME={home}; warehouse {warehouse.redact_dsn(config.warehouse_dsn())}", err=True)
    os.execvp(args[0], args)


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8001, type=int, show_default=True)
def serve(host: str, port: int) -> None:
    """Serve the SQLite publication read-only with Datasette (see docs/datasette.md)."""
    from candlestick_pipeline.defs.publish.serve import datasette_command
    from candlestick_pipeline.lib import publication

    with _user_errors():
        path = config.publication_path()
        publication.ensure_schema(path)
        argv = datasette_command(path, host, port)
    os.execvp(argv[0], argv)


@main.command("publication-rebuild")
def publication_rebuild() -> None:
    """Rebuild the whole publication from the warehouse, in place (readers see old or new partitions)."""
    from candlestick_pipeline.lib import publication

    with _user_errors():
        engine = _engine()
        try:
            publication.rebuild(engine, config.publication_path())
        finally:
            engine.dispose()
    click.echo(f"rebuilt {config.publication_path()}")


@main.command("standin", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def standin(ctx: click.Context) -> None:
    """Run the offline ISS stand-in (see ``candlestick standin --help``)."""
    args = [sys.executable, "-m", "candlestick_pipeline.standin", *ctx.args]
    os.execv(sys.executable, args)


def entry_point() -> NoReturn:
    """The ``candlestick`` console script: :func:`main`, then an exit without the interpreter's teardown."""
    try:
        main()
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    _exit_without_teardown(code)


def _exit_without_teardown(code: int | str | None) -> NoReturn:
    # Python's teardown of the modules Dagster, polars and SQLAlchemy load takes 0.3 s at the end of
    # every command. By now the command is over: its runs ended, its workers were joined, its writes
    # committed, its thread pools shut down. What of the teardown matters still happens: the atexit
    # callbacks (logging's flush among them), then stdout and stderr are flushed. Under a profiler or
    # a tracer (cProfile, coverage) the usual exit, so that they write their results.
    if sys.getprofile() is not None or sys.gettrace() is not None:
        raise SystemExit(code)
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
        status = 1
    else:
        status = code or 0
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    entry_point()
