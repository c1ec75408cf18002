"""The whole code location loads, and has the shape the README promises."""

from __future__ import annotations

import dagster as dg

from candlestick_pipeline.definitions import defs
from candlestick_pipeline.lib.timeframes import TIMEFRAMES


def test_definitions_load_and_validate() -> None:
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    assert {"securities", *(tf.asset_name for tf in TIMEFRAMES.values())} <= keys


def test_every_candle_asset_is_single_run_and_in_the_iss_pool() -> None:
    repo = defs.get_repository_def()
    for tf in TIMEFRAMES.values():
        node = repo.asset_graph.get(dg.AssetKey(tf.asset_name))
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
        assets_def = node.assets_def
        assert assets_def.descriptions_by_key[assets_def.key]
        partitions_def = node.partitions_def
        assert isinstance(partitions_def, dg.MultiPartitionsDefinition)
        assert [d.name for d in partitions_def.partitions_defs] == ["date", "security"]
