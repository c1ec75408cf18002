"""Assembles the Dagster definitions; every piece lives in its own ``defs/<domain>`` module."""

from __future__ import annotations

import dagster as dg

from candlestick_pipeline.defs.automation import automation_definitions
from candlestick_pipeline.defs.candles.assets import candle_assets
from candlestick_pipeline.defs.candles.checks import candle_checks
from candlestick_pipeline.defs.publish import publication_definitions
from candlestick_pipeline.defs.resources import build_resources
from candlestick_pipeline.defs.securities.assets import securities


def build_definitions(iss_max_concurrency: int | None = None) -> dg.Definitions:
    """The code location, with resources configured from the environment as it is now.

    ``iss_max_concurrency`` overrides ``ISS_MAX_CONCURRENCY`` (``candlestick load --parallel``).
    """
    return dg.Definitions.merge(
        dg.Definitions(
            assets=[securities, *candle_assets],
            asset_checks=candle_checks,
            resources=build_resources(iss_max_concurrency),
            # Each run is one security's asset and its checks, in sequence: a subprocess per step
            # would only add start-up time (11.3 s -> 4.2 s a run, docs/benchmarks.md).
            executor=dg.in_process_executor,
        ),
        automation_definitions(),
        publication_definitions(),
    )


defs = build_definitions()
