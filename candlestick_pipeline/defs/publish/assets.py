"""Publication assets: what Datasette serves, as Dagster assets the user can see and rebuild.

``published_candles_<tf>`` has exactly the partitions of ``candles_<tf>`` (same definition,
identity mapping): materializing a partition copies that security x window from the warehouse to
the publication file, replacing what was there. ``published_securities`` copies the reference
table. A full rebuild is a backfill of these assets (or ``lib.publication.rebuild``).

Why partitioned assets and not one unpartitioned "publication": the UI then shows per partition
whether the published copy is up to date with the warehouse, and a correction of one day is
re-published alone. The ``publication_sensor`` keeps them up to date (see :mod:`.sensor`).
"""

from collections import defaultdict

import dagster as dg

from candlestick_pipeline.defs.candles.assets import add_partition_metadata
from candlestick_pipeline.defs.candles.partitions import (
    CandlePartition,
    InvalidPartitionKeyError,
    parse_candle_partition,
    partitions_for,
)
from candlestick_pipeline.defs.publish.resource import PublicationResource
from candlestick_pipeline.defs.warehouse.resource import WarehouseResource
from candlestick_pipeline.lib.securities import InvalidSecurityKeyError, SecurityKey
from candlestick_pipeline.lib.timeframes import TIMEFRAMES, Timeframe

GROUP = "publication"
PARTITIONS_PER_TRANSACTION = 64
"""A long backfill run is written in transactions of this many partitions (each one whole)."""

SECURITIES_ASSET_KEY = dg.AssetKey("securities")


def published_asset_name(timeframe: Timeframe) -> str:
    return f"published_{timeframe.asset_name}"


def published_asset_key(timeframe: Timeframe) -> dg.AssetKey:
    return dg.AssetKey(published_asset_name(timeframe))


def _run_partitions(context: dg.AssetExecutionContext, timeframe: Timeframe) -> list[CandlePartition]:
    keys = context.partition_keys
    if not keys:
        # A --partition-range across two securities gives a run with no keys (FACTS G3).
        raise dg.Failure(
            "this run selects no partitions: a partition range must start and end on the same "
            "security, e.g. 2025-06-01|SBER.TQBR...2025-06-30|SBER.TQBR"
        )
    try:
        return [parse_candle_partition(timeframe, key) for key in keys]
    except (InvalidPartitionKeyError, InvalidSecurityKeyError) as exc:
        raise dg.Failure(str(exc)) from exc


def build_published_candles_asset(timeframe: Timeframe) -> dg.AssetsDefinition:
    """The published copy of ``candles_<tf>``."""

    @dg.asset(
        name=published_asset_name(timeframe),
        partitions_def=partitions_for(timeframe),
        deps=[dg.AssetDep(timeframe.asset_name, partition_mapping=dg.IdentityPartitionMapping())],
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP,
        kinds={"sqlite"},
        tags={"timeframe": timeframe.name},
        description=(
            f"{timeframe.title} candles as Datasette publishes them: the same partitions as "
            f"`{timeframe.asset_name}`, copied from the warehouse into the publication file (table "
            f"`candles`, timeframe = '{timeframe.name}'). Each partition replaces exactly its window "
            "in one SQLite transaction, so readers never see half of it. Kept up to date by "
            "`publication_sensor`; materialize (or backfill) to republish by hand. Metadata: rows."
        ),
    )
    def _published(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, publication: PublicationResource
    ) -> dg.MaterializeResult:
        parts = _run_partitions(context, timeframe)
        by_security: dict[SecurityKey, list[CandlePartition]] = defaultdict(list)
        for part in parts:
            by_security[part.security].append(part)
        engine = warehouse.get_engine()
        total = 0
        for security, series_parts in sorted(by_security.items()):
            series_parts.sort(key=lambda part: part.start)
            for offset in range(0, len(series_parts), PARTITIONS_PER_TRANSACTION):
                batch = series_parts[offset : offset + PARTITIONS_PER_TRANSACTION]
                counts = publication.sync_windows(
                    engine, security, timeframe.name, [(part.start, part.end) for part in batch]
                )
                for part, rows in zip(batch, counts, strict=True):
                    add_partition_metadata(context, part.key, {"rows": rows})
                total += sum(counts)
            context.log.info(
                f"published {len(series_parts)} partition(s) of {security} {timeframe.name}: "
                f"{series_parts[0].date_key} .. {series_parts[-1].date_key}"
            )
        return dg.MaterializeResult(metadata={"run_partitions": len(parts), "run_rows": total})

    return _published


published_candle_assets: list[dg.AssetsDefinition] = [
    build_published_candles_asset(tf) for tf in TIMEFRAMES.values()
]


def publish_job_name(timeframe: Timeframe) -> str:
    return f"publish_{timeframe.asset_name}"


PUBLISH_SECURITIES_JOB = "publish_securities"


@dg.asset(
    deps=[SECURITIES_ASSET_KEY],
    group_name=GROUP,
    kinds={"sqlite"},
    description=(
        "The securities reference table as Datasette publishes it (table `securities`), replaced "
        "from the warehouse in one transaction. Kept up to date by `publication_sensor`."
    ),
)
def published_securities(
    warehouse: WarehouseResource, publication: PublicationResource
) -> dg.MaterializeResult:
    rows = publication.sync_securities(warehouse.get_engine())
    return dg.MaterializeResult(metadata={"rows": rows})


# One job per asset: a sensor can only target assets of one partitions definition per job, and
# the jobs give the UI a "publish_candles_<tf>" entry to launch a backfill (a rebuild) from.
publish_jobs = [
    dg.define_asset_job(
        publish_job_name(tf),
        selection=[published_asset_key(tf)],
        description=f"Copy {tf.title} candle partitions from the warehouse to the publication.",
    )
    for tf in TIMEFRAMES.values()
] + [
    dg.define_asset_job(
        PUBLISH_SECURITIES_JOB,
        selection=[published_securities.key],
        description="Copy the securities reference table to the publication.",
    )
]
