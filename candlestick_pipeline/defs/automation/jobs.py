"""One asset job per timeframe, so sensors and schedules can launch range runs of one asset."""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from candlestick_pipeline.lib.timeframes import TIMEFRAMES, Timeframe


def job_name(timeframe: Timeframe) -> str:
    return f"{timeframe.asset_name}_job"


def _build_job(timeframe: Timeframe) -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name=job_name(timeframe),
        selection=dg.AssetSelection.assets(timeframe.asset_name),
        description=(
            f"Load {timeframe.title} candles (and run their checks) for one security and a range of windows."
        ),
    )


candle_jobs = [_build_job(tf) for tf in TIMEFRAMES.values()]
