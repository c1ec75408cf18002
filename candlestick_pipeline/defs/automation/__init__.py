"""Automation: new securities fill themselves in, closed periods load once, today stays fresh."""

import dagster as dg

from candlestick_pipeline.defs.automation.jobs import candle_jobs
from candlestick_pipeline.defs.automation.schedules import closed_periods_schedules
from candlestick_pipeline.defs.automation.sensors import automation_sensors


def automation_definitions() -> dg.Definitions:
    """Jobs, sensors and schedules of the automation domain."""
    return dg.Definitions(jobs=candle_jobs, sensors=automation_sensors, schedules=closed_periods_schedules())
