"""partition_states_many reads the ``final`` flags in chunks (Dagster fetches <= 10,000 records at once)."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from candlestick_pipeline.defs.candles import status
from candlestick_pipeline.defs.candles.partitions import SECURITIES_PARTITIONS, multi_key
from candlestick_pipeline.lib.securities import SecurityKey
from candlestick_pipeline.lib.timeframes import MOSCOW, TIMEFRAMES

SECURITIES = [SecurityKey("SBER", "TQBR"), SecurityKey("GAZP", "TQBR")]
DAYS = ["2025-06-02", "2025-06-03", "2025-06-04", "2025-06-05"]
NOW = dt.datetime(2025, 6, 10, 12, tzinfo=MOSCOW)


def test_final_flags_read_in_chunks_give_the_same_states(monkeypatch: pytest.MonkeyPatch) -> None:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SECURITIES_PARTITIONS, [s.partition_key for s in SECURITIES])
        for number, (security, day) in enumerate((s, d) for s in SECURITIES for d in DAYS[:3]):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    "candles_1m", partition=str(multi_key(security, day)), metadata={"final": number % 2 == 0}
                )
            )
        whole = status.partition_states_many(instance, TIMEFRAMES["1m"], SECURITIES, DAYS, now=NOW)
        monkeypatch.setattr(status, "_MAX_RECORDS_PER_FETCH", 2)
        chunked = status.partition_states_many(instance, TIMEFRAMES["1m"], SECURITIES, DAYS, now=NOW)
    assert chunked == whole
    assert [s.state for s in whole[SECURITIES[0]]] == [
        status.LoadState.FINAL,
        status.LoadState.STALE,
        status.LoadState.FINAL,
        status.LoadState.MISSING,
    ]
    assert [s.state for s in whole[SECURITIES[1]]][:3] == [
        status.LoadState.STALE,
        status.LoadState.FINAL,
        status.LoadState.STALE,
    ]
