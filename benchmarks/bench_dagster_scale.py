"""B6: Dagster at scale: ``--securities`` securities x ``--years`` years of daily ``candles_1m`` partitions.

Dagster's storage is PostgreSQL (``deploy/postgres/dagster.yaml`` with a throw-away database; SQLite
storage writes only ~60 events/s). ``CANDLESTICK_PARTITIONS_START`` is set so that the daily time
dimension holds exactly ``--years`` years up to today, and the automation is limited to ``1m``
(``CANDLESTICK_TIMEFRAMES=1m``). Timed, each target < 10 s:

1. registering the securities as ``candlestick create-security`` does (has / add dynamic partition,
   one security at a time; plus the warehouse row), and in one ``add_dynamic_partitions`` call;
2. (set-up, not a target) materializations of ``--share`` of the partitions, the latest days of
   each security (from share/3 to 5*share/3 of its days: securities came at different times),
   written with ``store_event_batch`` as runs of 92 partitions would write them, with the metadata
   and tags our asset's materializations carry (13 metadata entries, ``final`` among them);
3. which partitions are missing: our ``status.partition_states`` for one security (the whole
   history, what ``candlestick load`` asks) and for every security one by one, our
   ``partition_states_many`` over everything in one call, and Dagster's own
   ``get_materialized_partitions`` and ``get_status_by_partition`` (cold: builds the status cache;
   warm: reads it);
4. one tick of each automation sensor and of the ``candles_1m`` closed-periods schedule
   (``build_sensor_context`` / ``build_schedule_context`` against the ISS stand-in);
5. the Partitions page: ``dagster-webserver`` started as a subprocess, and the GraphQL query the UI's
   Partitions tab sends (``PartitionHealthQuery``, copied from the webserver's bundle), first with
   the asset's status cache wiped (it is rebuilt from the event log), then again.

    uv run python benchmarks/bench_dagster_scale.py                               # 300 x 3 years
    uv run python benchmarks/bench_dagster_scale.py --securities 5 --years 0.1    # smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BIN, DEFAULT_PG_ADMIN_DSN, REPO_ROOT, ProjectHome, project_home

T = TypeVar("T")
TARGET_SECONDS = 10.0
RUN_SIZE = 92  # partitions per history run (automation's MAX_PARTITIONS_PER_RUN for daily grain)

PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
        ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey primaryDimEndKey primaryDimStartTime primaryDimEndTime
            secondaryDim {
              ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
              ... on DefaultPartitionStatuses {
                materializedPartitions materializingPartitions failedPartitions
              }
            }
          }
        }
      }
    }
  }
}
"""


def timed(label: str, fn: Callable[[], T], target: float | None = TARGET_SECONDS) -> T:
    started = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - started
    verdict = "" if target is None else ("  ok" if seconds < target else f"  OVER {target:g} s")
    print(f"  {label:<72} {seconds:8.2f} s{verdict}", flush=True)
    return value


def _security_keys(count: int) -> list[str]:
    return [f"B{number:03d}.TQBR" for number in range(count)]


def register(instance: Any, keys: Sequence[str], dsn: str) -> None:
    """What ``candlestick create-security`` does per security, minus the ISS lookup."""
    import dagster as dg

    from candlestick_pipeline.defs.candles.partitions import SECURITIES_PARTITIONS
    from candlestick_pipeline.lib import warehouse
    from candlestick_pipeline.lib.securities import SecurityInfo

    engine = warehouse.create_warehouse_engine(dsn)
    warehouse.migrate(engine)

    def _one_by_one() -> None:
        for key in keys:
            secid, board = key.split(".")
            info = SecurityInfo(
                secid=secid,
                board=board,
                engine="stock",
                market="shares",
                shortname=secid,
                name=None,
                isin=None,
                decimals=2,
                currency="SUR",
                is_primary=True,
                is_traded=True,
                listed_from=None,
                listed_till=None,
                history_from=None,
                history_till=None,
            )
            warehouse.upsert_security(engine, info)
            if not instance.has_dynamic_partition(SECURITIES_PARTITIONS, key):
                instance.add_dynamic_partitions(SECURITIES_PARTITIONS, [key])

    try:
        timed(f"register {len(keys)} securities one by one (warehouse row + dynamic partition)", _one_by_one)
    finally:
        engine.dispose()
    probe = "bench_probe"
    timed(
        f"add {len(keys)} dynamic partitions in one add_dynamic_partitions call",
        lambda: instance.add_dynamic_partitions(probe, list(keys)),
    )
    for key in keys:
        instance.delete_dynamic_partition(probe, key)
    assert len(instance.get_dynamic_partitions(SECURITIES_PARTITIONS)) == len(keys)
    del dg


def write_materializations(instance: Any, keys: Sequence[str], date_keys: Sequence[str], share: float) -> int:
    """The latest ``share`` of every security's days, materialized as history runs would write them."""
    import dagster as dg
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry

    from candlestick_pipeline.defs.candles.partitions import multi_key
    from candlestick_pipeline.lib.securities import SecurityKey

    asset_key = dg.AssetKey("candles_1m")
    today = date_keys[-1]
    written = 0
    batch: list[EventLogEntry] = []
    now = time.time()
    for number, raw in enumerate(keys):
        security = SecurityKey.parse(raw)
        # Securities came at different times: their loaded spans start on different days (the
        # share varies from share/3 to 5*share/3, averaging share), as history loads leave them.
        fraction = share * (1 / 3 + (4 / 3) * number / max(1, len(keys) - 1))
        loaded = date_keys[len(date_keys) - min(len(date_keys), round(len(date_keys) * fraction)) :]
        for first in range(0, len(loaded), RUN_SIZE):
            run_id = str(uuid.uuid4())
            run_keys = loaded[first : first + RUN_SIZE]
            # What our asset writes on each partition: its own metadata, the run's summary, and
            # Dagster's data-version and partition tags.
            run_summary = {
                "run_partitions": len(run_keys),
                "run_rows": 950 * len(run_keys),
                "run_iss_pages": 3 * len(run_keys),
                "run_iss_retries": 0,
            }
            for date_key in run_keys:
                metadata: dict[str, Any] = {
                    "dagster/row_count": 950,
                    "rows": 950,
                    "first_begin": f"{date_key} 06:50:00",
                    "last_begin": f"{date_key} 23:49:00",
                    "iss_pages": 3,
                    "iss_requests": 3,
                    "iss_retries": 0,
                    "final": date_key != today,
                    "window": f"{date_key} 00:00:00 .. next day 00:00:00 MSK",
                    **run_summary,
                }
                tags = {
                    "dagster/code_version": run_id,
                    "dagster/input_data_version/securities": "INITIAL",
                    "dagster/input_event_pointer/securities": "NULL",
                    "dagster/data_version": uuid.uuid4().hex * 2,
                    "dagster/partition/date": date_key,
                    "dagster/partition/security": raw,
                }
                materialization = dg.AssetMaterialization(
                    asset_key, partition=str(multi_key(security, date_key)), metadata=metadata, tags=tags
                )
                event = DagsterEvent(
                    event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                    job_name="candles_1m_job",
                    step_key="candles_1m",
                    event_specific_data=StepMaterializationData(materialization),
                )
                batch.append(
                    EventLogEntry(
                        error_info=None,
                        level=logging.DEBUG,
                        user_message="",
                        run_id=run_id,
                        timestamp=now,
                        step_key="candles_1m",
                        job_name="candles_1m_job",
                        dagster_event=event,
                    )
                )
            instance.event_log_storage.store_event_batch(batch)
            written += len(batch)
            batch = []
    return written


def status_queries(instance: Any, keys: Sequence[str], date_keys: Sequence[str]) -> None:
    import dagster as dg

    from candlestick_pipeline.defs.candles.partitions import security_x_daily_partition
    from candlestick_pipeline.defs.candles.status import partition_states, partition_states_many
    from candlestick_pipeline.lib.securities import SecurityKey
    from candlestick_pipeline.lib.timeframes import TIMEFRAMES

    minutes = TIMEFRAMES["1m"]
    securities = [SecurityKey.parse(raw) for raw in keys]
    asset_key = dg.AssetKey("candles_1m")
    states = timed(
        f"partition_states: 1 security x {len(date_keys)} days (candlestick load)",
        lambda: partition_states(instance, minutes, securities[0], date_keys),
    )
    missing = sum(s.needs_load for s in states)
    print(f"    -> {missing} of {len(states)} partitions to load", flush=True)
    timed(
        f"partition_states: {len(securities)} securities one by one",
        lambda: [partition_states(instance, minutes, security, date_keys) for security in securities],
    )
    recent = date_keys[-8:]  # the freshness sensor's lookback for daily partitions
    timed(
        f"partition_states_many: {len(securities)} x {len(recent)} recent days (a sensor's query)",
        lambda: partition_states_many(instance, minutes, securities, recent),
    )
    timed(
        f"partition_states_many: {len(securities)} x {len(date_keys)} in one call",
        lambda: partition_states_many(instance, minutes, securities, date_keys),
    )
    timed(
        "Dagster get_materialized_partitions (all keys)",
        lambda: instance.get_materialized_partitions(asset_key),
    )
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        all_keys = security_x_daily_partition.get_partition_keys()
    print(f"    ({len(all_keys):,} partition keys in the asset)", flush=True)
    for attempt in ("cold: builds the status cache", "warm"):
        timed(
            f"Dagster get_status_by_partition, all keys ({attempt})",
            lambda: instance.get_status_by_partition(asset_key, all_keys, security_x_daily_partition),
        )


def automation_ticks(instance: Any, resources: dict[str, Any]) -> None:
    import dagster as dg

    from candlestick_pipeline.defs.automation.schedules import build_closed_periods_schedule
    from candlestick_pipeline.defs.automation.sensors import freshness_sensor, new_securities_sensor
    from candlestick_pipeline.lib.timeframes import MOSCOW, TIMEFRAMES

    def _sensor(sensor: dg.SensorDefinition) -> str:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = sensor.evaluate_tick(context)
        return f"{len(result.run_requests or [])} run request(s)" + (
            f", skipped: {result.skip_message}" if result.skip_message else ""
        )

    for sensor in (new_securities_sensor, freshness_sensor):
        outcome = timed(f"sensor tick: {sensor.name}", functools.partial(_sensor, sensor))
        print(f"    -> {outcome}", flush=True)
    schedule = build_closed_periods_schedule(TIMEFRAMES["1m"])
    tick = dt.datetime.now(MOSCOW).replace(hour=0, minute=30, second=0, microsecond=0)

    def _schedule() -> str:
        with dg.build_schedule_context(
            instance=instance, resources=resources, scheduled_execution_time=tick
        ) as context:
            result = schedule.evaluate_tick(context)
        return f"{len(result.run_requests or [])} run request(s)" + (
            f", skipped: {result.skip_message}" if result.skip_message else ""
        )

    outcome = timed(f"schedule tick: {schedule.name}", _schedule)
    print(f"    -> {outcome}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return dict(json.loads(response.read()))


@contextmanager
def webserver(env: dict[str, str], log: Path | None) -> Iterator[str]:
    port = _free_port()
    out = open(log, "ab") if log else open(os.devnull, "wb")  # noqa: SIM115 - closed below
    command = [str(BIN / "dagster-webserver"), "-m", "candlestick_pipeline.definitions"]
    proc = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=out,
        stderr=out,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                body = _post(f"{base}/graphql", {"query": "{ version }"}, timeout=5)
                if "data" in body:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("dagster-webserver did not start; rerun with --log")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def partitions_page(project: ProjectHome, env: dict[str, str], log: Path | None) -> None:
    import dagster as dg

    with webserver(env, log) as base:
        variables = {"assetKey": {"path": ["candles_1m"]}}
        with dg.DagsterInstance.get() as instance:  # the worst case: the status cache is rebuilt
            instance.event_log_storage.wipe_asset_cached_status(dg.AssetKey("candles_1m"))
        for attempt in ("first, status cache wiped", "second"):
            body = timed(
                f"GraphQL PartitionHealthQuery candles_1m ({attempt})",
                lambda: _post(f"{base}/graphql", {"query": PARTITION_HEALTH_QUERY, "variables": variables}),
            )
            if body.get("errors"):
                raise SystemExit(f"GraphQL errors: {body['errors']}")
        statuses = body["data"]["assetNodeOrError"]["assetPartitionStatuses"]
        print(
            f"    -> {len(statuses.get('ranges', []))} primary-dimension range(s), "
            f"{len(json.dumps(body)) / 1e6:.1f} MB of JSON",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--securities", type=int, default=300)
    parser.add_argument("--years", type=float, default=3.0, help="length of the daily time dimension")
    parser.add_argument("--share", type=float, default=0.3, help="share of partitions materialized")
    parser.add_argument("--pg-admin-dsn", default=DEFAULT_PG_ADMIN_DSN)
    parser.add_argument("--skip-webserver", action="store_true")
    parser.add_argument("--log", type=Path, default=None, help="append the webserver's output to this file")
    args = parser.parse_args(argv)

    today = dt.date.today()  # the time dimension ends at the real today (end_offset=1)
    start = today - dt.timedelta(days=round(365.25 * args.years) - 1)
    keys = _security_keys(args.securities)
    print(
        f"B6: {args.securities} securities x {(today - start).days + 1} daily partitions of candles_1m "
        f"({start} .. {today}), {args.share:.0%} materialized; Dagster storage PostgreSQL; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    from _common import StandInProcess

    with StandInProcess(now=f"{today} 15:00:00") as standin, project_home("postgres", "sqlite") as project:
        project.extra_env.update(
            CANDLESTICK_PARTITIONS_START=start.isoformat(),
            CANDLESTICK_TIMEFRAMES="1m",
            ISS_BASE_URL=standin.base_url,
        )
        project.apply()
        import dagster as dg

        from candlestick_pipeline.defs.candles.partitions import date_keys_between
        from candlestick_pipeline.defs.iss.resource import ISSResource
        from candlestick_pipeline.defs.warehouse.resource import WarehouseResource
        from candlestick_pipeline.lib.timeframes import TIMEFRAMES

        date_keys = date_keys_between(TIMEFRAMES["1m"], start, today)
        with dg.DagsterInstance.get() as instance:
            print("1. securities", flush=True)
            register(instance, keys, project.warehouse_dsn)
            print("2. materializations (set-up, not a target)", flush=True)
            written = timed(
                "store_event_batch",
                lambda: write_materializations(instance, keys, date_keys, args.share),
                target=None,
            )
            print(f"    -> {written:,} materializations", flush=True)
            print("3. which partitions are missing", flush=True)
            status_queries(instance, keys, date_keys)
            print("4. automation", flush=True)
            resources = {
                "iss": ISSResource(base_url=standin.base_url),
                "warehouse": WarehouseResource(dsn=project.warehouse_dsn),
            }
            automation_ticks(instance, resources)
        if not args.skip_webserver:
            print("5. the Partitions page", flush=True)
            partitions_page(project, project.env(), args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
