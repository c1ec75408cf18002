"""Candle assets, one per timeframe (``candles_1m`` ... ``candles_1q``), partitioned security x window.

A run covers one security and a contiguous range of windows (Dagster splits backfills that way
under ``BackfillPolicy.single_run()``). Each partition's candles replace exactly that security x
timeframe x window in the warehouse, so reruns and corrections never duplicate. Partition status is
the record of what is loaded: nothing else tracks "loaded spans".
"""

import datetime as dt
from collections.abc import Mapping

import dagster as dg

from candlestick_pipeline.config import final_after_minutes, run_retries, run_retry_delay_seconds
from candlestick_pipeline.defs.candles.loading import PartitionLoad, load_partitions
from candlestick_pipeline.defs.candles.partitions import (
    CandlePartition,
    InvalidPartitionKeyError,
    parse_candle_partition,
    partitions_for,
)
from candlestick_pipeline.defs.iss.resource import ISS_POOL, ISSResource
from candlestick_pipeline.defs.securities.assets import securities
from candlestick_pipeline.defs.warehouse.resource import WarehouseResource
from candlestick_pipeline.lib.securities import InvalidSecurityKeyError, SecurityInfo
from candlestick_pipeline.lib.timeframes import TIMEFRAMES, Timeframe


def _run_partitions(context: dg.AssetExecutionContext, timeframe: Timeframe) -> list[CandlePartition]:
    keys = context.partition_keys
    if not keys:
        # Dagster turns a --partition-range across two securities into a run with no keys (G3).
        raise dg.Failure(
            allow_retries=False,
            description="this run selects no partitions: a partition range must start and end on the same "
            "security, e.g. 2025-06-01|SBER.TQBR...2025-06-30|SBER.TQBR",
        )
    try:
        parts = [parse_candle_partition(timeframe, key) for key in keys]
    except (InvalidPartitionKeyError, InvalidSecurityKeyError) as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    securities_in_run = {part.security for part in parts}
    if len(securities_in_run) != 1:
        names = ", ".join(sorted(str(s) for s in securities_in_run))
        raise dg.Failure(f"a run must cover one security, this one covers {names}", allow_retries=False)
    return sorted(parts, key=lambda part: part.start)


def _registered_security(warehouse: WarehouseResource, part: CandlePartition) -> SecurityInfo:
    info = warehouse.get_security(part.security)
    if info is None:
        raise dg.Failure(
            f"{part.security} is not registered in the warehouse; add it with "
            f"`candlestick create-security {part.security.secid} {part.security.board}`",
            allow_retries=False,
        )
    return info


def _summary(loads: list[PartitionLoad]) -> dict[str, int]:
    # The partitions of one fetch span share its ISS figures: count each fetch once.
    fetches = {load.fetch: load for load in loads}.values()
    return {
        "run_partitions": len(loads),
        "run_rows": sum(load.rows for load in loads),
        "run_iss_fetches": len(fetches),
        "run_iss_pages": sum(load.pages for load in fetches),
        "run_iss_retries": sum(load.retries for load in fetches),
    }


def add_partition_metadata(
    context: dg.AssetExecutionContext, partition_key: str, metadata: Mapping[str, object]
) -> None:
    """``context.add_asset_metadata(metadata, partition_key=partition_key)`` in constant time.

    Dagster's method checks ``partition_key`` against the run's range by rebuilding the whole list
    of keys (and querying the instance for the dynamic dimension) on every call, so N calls cost
    O(N^2): 4.9 ms a call in a 120-partition run and 6.4 ms in a 365-partition run on SQLite
    storage (16 ms on a busy machine), against 0.02 ms here (docs/benchmarks.md). Our keys come
    from ``context.partition_keys``, so that check cannot fail; the metadata goes to the step's
    metadata accumulator, exactly where Dagster's method puts it (Dagster 1.13). Should a Dagster
    upgrade rename that attribute, the public method is used, and
    ``test_partition_metadata_fast_path`` fails so that someone looks.
    """
    step = context.get_step_execution_context()
    accumulator = getattr(step, "_metadata_accumulator", None)
    if accumulator is None or not hasattr(accumulator, "with_additional_asset_metadata"):
        context.add_asset_metadata(metadata, partition_key=partition_key)
        return
    step._metadata_accumulator = accumulator.with_additional_asset_metadata(
        asset_key=context.asset_key, partition_key=partition_key, metadata=metadata
    )


def _retry_policy() -> dg.RetryPolicy:
    # ISS outages outlast the client's own retries; a later step retry often gets through.
    return dg.RetryPolicy(
        max_retries=run_retries(),
        delay=run_retry_delay_seconds(),
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )


def build_candles_asset(timeframe: Timeframe) -> dg.AssetsDefinition:
    """The candle asset of one timeframe."""

    @dg.asset(
        name=timeframe.asset_name,
        partitions_def=partitions_for(timeframe),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[securities],
        group_name="candles",
        pool=ISS_POOL,
        retry_policy=_retry_policy(),
        kinds={"sql"},
        tags={"timeframe": timeframe.name},
        description=(
            f"{timeframe.title} candles (ISS interval {timeframe.iss_interval}) of one security on one "
            f"board, one partition per {timeframe.grain.value} (Moscow time). Rows live in the "
            f"warehouse table `candles` with timeframe = '{timeframe.name}'; each partition replaces "
            "exactly its window. Metadata: rows, first/last begin, ISS pages, and `final` (false when "
            "the period had not closed yet when it was loaded)."
        ),
    )
    def _candles(
        context: dg.AssetExecutionContext, iss: ISSResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        parts = _run_partitions(context, timeframe)
        info = _registered_security(warehouse, parts[0])
        context.log.info(
            f"loading {len(parts)} partition(s) of {info.key} {timeframe.name}: "
            f"{parts[0].date_key} .. {parts[-1].date_key}"
        )

        def _record(load: PartitionLoad) -> None:
            add_partition_metadata(context, load.partition.key, load.metadata())

        loads = load_partitions(
            iss.get_client(),
            warehouse.get_engine(),
            info,
            timeframe,
            parts,
            concurrency=iss.max_concurrency,
            final_after=dt.timedelta(minutes=final_after_minutes()),
            on_loaded=_record,
        )
        return dg.MaterializeResult(metadata=_summary(loads))

    return _candles


candle_assets: list[dg.AssetsDefinition] = [build_candles_asset(tf) for tf in TIMEFRAMES.values()]
