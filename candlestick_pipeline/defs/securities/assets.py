"""The ``securities`` asset: reference data of every registered security, refreshed from ISS."""

import dagster as dg

from candlestick_pipeline.defs.candles.partitions import SECURITIES_PARTITIONS
from candlestick_pipeline.defs.iss.errors import ISSError
from candlestick_pipeline.defs.iss.resource import ISS_POOL, ISSResource
from candlestick_pipeline.defs.warehouse.resource import WarehouseResource
from candlestick_pipeline.lib.securities import InvalidSecurityKeyError, SecurityKey


@dg.asset(group_name="reference", kinds={"sql"}, pool=ISS_POOL)
def securities(
    context: dg.AssetExecutionContext, iss: ISSResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Reference data (names, ISIN, engine/market, decimals, listing dates) of every security
    registered as a ``securities`` partition, re-read from ISS ``/iss/securities/{secid}.json``.

    One security that ISS no longer knows does not stop the others: they are all refreshed, then
    the run fails naming the ones that could not be resolved.
    """
    keys = sorted(context.instance.get_dynamic_partitions(SECURITIES_PARTITIONS))
    client = iss.get_client()
    refreshed: list[str] = []
    problems: dict[str, str] = {}
    for raw_key in keys:
        try:
            key = SecurityKey.parse(raw_key)
            info = client.get_security(key.secid, key.board)
        except (InvalidSecurityKeyError, ISSError) as exc:
            problems[raw_key] = str(exc)
            context.log.warning(f"could not refresh {raw_key}: {exc}")
            continue
        warehouse.upsert_security(info)
        refreshed.append(key.partition_key)
    if problems:
        details = "; ".join(f"{k}: {v}" for k, v in problems.items())
        raise dg.Failure(
            description=f"{len(problems)} of {len(keys)} securities could not be refreshed: {details}",
            metadata={"refreshed": len(refreshed), "failed": sorted(problems)},
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(refreshed),
            "securities": dg.MetadataValue.text(", ".join(refreshed) or "(none registered)"),
        }
    )
