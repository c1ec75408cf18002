"""Sensors: a new security fills itself in; recent periods stay complete and today stays fresh."""

import datetime as dt
import json

import dagster as dg

from candlestick_pipeline import config
from candlestick_pipeline.defs.automation.jobs import candle_jobs
from candlestick_pipeline.defs.automation.planning import (
    RunPlan,
    history_start,
    is_trading_time,
    plan_history,
    plan_recent,
)
from candlestick_pipeline.defs.candles.partitions import SECURITIES_PARTITIONS
from candlestick_pipeline.defs.iss.errors import ISSError
from candlestick_pipeline.defs.iss.resource import ISSResource
from candlestick_pipeline.defs.warehouse.resource import WarehouseResource
from candlestick_pipeline.lib.securities import InvalidSecurityKeyError, SecurityKey
from candlestick_pipeline.lib.timeframes import MOSCOW, get_timeframe

# New securities handled per tick: each costs one ISS request and a status query per timeframe.
_NEW_SECURITIES_PER_TICK = 20

# Only runs that have not started count as pending. A started run may have been killed (the
# default run launcher cannot tell), and must not block its security forever; a second run of the
# same partitions is harmless, because a partition is replaced atomically and idempotently.
_PENDING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]


def iss_now(iss: ISSResource) -> dt.datetime:
    """ISS's clock (its ``Date`` header), or ours when ISS does not answer."""
    return iss.get_client().server_time() or dt.datetime.now(MOSCOW)


def registered_securities(instance: dg.DagsterInstance) -> list[SecurityKey]:
    keys = []
    for raw in instance.get_dynamic_partitions(SECURITIES_PARTITIONS):
        try:
            keys.append(SecurityKey.parse(raw))
        except InvalidSecurityKeyError:
            continue  # cannot be created by our CLI; never worth a run
    return keys


def in_flight_targets(instance: dg.DagsterInstance) -> set[tuple[str, str]]:
    """(job name, security) of runs waiting in the queue: not worth requesting again."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=_PENDING))
    return {(run.job_name, run.tags.get("candlestick/security", "")) for run in runs}


def without_in_flight(plans: list[RunPlan], busy: set[tuple[str, str]]) -> list[RunPlan]:
    return [p for p in plans if (f"{p.timeframe.asset_name}_job", str(p.security)) not in busy]


@dg.sensor(
    jobs=candle_jobs,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def new_securities_sensor(
    context: dg.SensorEvaluationContext, iss: ISSResource, warehouse: WarehouseResource
) -> dg.SensorResult | dg.SkipReason:
    """Backfills the history of every newly registered security, for every enabled timeframe,
    from where ISS's candle borders start (or ``CANDLESTICK_EARLIEST_DATE``), missing partitions
    only, as a few range runs per timeframe. A security ISS cannot answer for is retried next tick
    and never holds up the others.
    """
    handled = set(json.loads(context.cursor)) if context.cursor else set()
    current = {str(key) for key in registered_securities(context.instance)}
    new = sorted(current - handled)[:_NEW_SECURITIES_PER_TICK]
    if not new:
        return dg.SkipReason("no new securities")
    now = iss_now(iss)
    client = iss.get_client()
    requests: list[dg.RunRequest] = []
    done: list[str] = []
    for raw in new:
        key = SecurityKey.parse(raw)
        info = warehouse.get_security(key)
        if info is None:
            context.log.warning(f"{key} has a partition but no warehouse row; run create-security again")
            continue
        try:
            borders = client.get_candle_borders(info)
        except ISSError as exc:
            context.log.warning(f"{key}: candle borders unavailable ({exc}); will retry next tick")
            continue
        for name in config.enabled_timeframes():
            timeframe = get_timeframe(name)
            start = history_start(borders, timeframe.iss_interval)
            plans = plan_history(context.instance, timeframe, key, start, now)
            requests.extend(plan.run_request(f"{now:%Y%m%dT%H%M%S}") for plan in plans)
        done.append(raw)
    cursor = sorted((handled & current) | set(done))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor))


@dg.sensor(
    jobs=candle_jobs,
    minimum_interval_seconds=config.freshness_minutes() * 60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def freshness_sensor(
    context: dg.SensorEvaluationContext, iss: ISSResource
) -> dg.SensorResult | dg.SkipReason:
    """Keeps recent history complete and today fresh, every ``CANDLESTICK_FRESHNESS_MINUTES``.

    * Recent periods that have closed (by ISS's clock) but are missing or were loaded before they
      closed (``final: false``) are loaded again, so partial bars never stay.
    * During trading hours the period that is still open (today, this month, this year) is loaded
      for the timeframes in ``CANDLESTICK_FRESH_TIMEFRAMES``; it is marked ``final: false``.

    Runs still queued for the same security and timeframe are not requested again.
    """
    securities = registered_securities(context.instance)
    if not securities:
        return dg.SkipReason("no securities registered")
    now = iss_now(iss)
    trading = is_trading_time(now)
    fresh = set(config.fresh_timeframes())
    plans: list[RunPlan] = []
    for name in config.enabled_timeframes():
        timeframe = get_timeframe(name)
        plans.extend(
            plan_recent(context.instance, timeframe, securities, now, include_open=trading and name in fresh)
        )
    plans = without_in_flight(plans, in_flight_targets(context.instance))
    if not plans:
        return dg.SkipReason("everything recent is loaded and nothing is trading")
    suffix = f"{now:%Y%m%dT%H%M}"
    return dg.SensorResult(run_requests=[plan.run_request(suffix) for plan in plans])


automation_sensors = [new_securities_sensor, freshness_sensor]
