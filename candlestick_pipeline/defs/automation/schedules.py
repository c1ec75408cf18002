"""Schedules: after the evening session closes, every period that just closed is loaded once."""

import dagster as dg

from candlestick_pipeline import config
from candlestick_pipeline.defs.automation.jobs import job_name
from candlestick_pipeline.defs.automation.planning import plan_recent
from candlestick_pipeline.defs.automation.sensors import (
    in_flight_targets,
    iss_now,
    registered_securities,
    without_in_flight,
)
from candlestick_pipeline.defs.iss.resource import ISSResource
from candlestick_pipeline.lib.timeframes import MOSCOW, TIMEFRAMES, Timeframe


def build_closed_periods_schedule(timeframe: Timeframe) -> dg.ScheduleDefinition:
    """The nightly schedule of one timeframe."""

    @dg.schedule(
        name=f"{timeframe.asset_name}_closed_periods_schedule",
        cron_schedule=config.close_schedule_cron(),
        execution_timezone=MOSCOW.key,
        job_name=job_name(timeframe),
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            f"After the evening session: load the {timeframe.title} periods that have just closed, for "
            "every security (weekends included); periods already loaded and final are not fetched again."
        ),
    )
    def _schedule(
        context: dg.ScheduleEvaluationContext, iss: ISSResource
    ) -> list[dg.RunRequest] | dg.SkipReason:
        securities = registered_securities(context.instance)
        plans = plan_recent(context.instance, timeframe, securities, iss_now(iss), include_open=False)
        plans = without_in_flight(plans, in_flight_targets(context.instance))
        if not plans:
            return dg.SkipReason("every recent period is loaded and final")
        suffix = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
        return [plan.run_request(suffix) for plan in plans]

    return _schedule


def closed_periods_schedules() -> list[dg.ScheduleDefinition]:
    return [build_closed_periods_schedule(TIMEFRAMES[name]) for name in config.enabled_timeframes()]
