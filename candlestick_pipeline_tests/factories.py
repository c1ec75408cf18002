"""Test data shared across the suite."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from candlestick_pipeline.lib.securities import SecurityInfo, SecurityKey


def security_info(
    key: SecurityKey, shortname: str, engine: str = "stock", market: str = "shares", **changes: Any
) -> SecurityInfo:
    """A plausible reference row for ``key`` (a primary, traded share unless ``changes`` say otherwise)."""
    info = SecurityInfo(
        secid=key.secid,
        board=key.board,
        engine=engine,
        market=market,
        shortname=shortname,
        name=f"{shortname} (test)",
        isin=None,
        decimals=2,
        currency="SUR",
        is_primary=True,
        is_traded=True,
        listed_from=dt.date(2010, 1, 1),
        listed_till=None,
        history_from=dt.date(2011, 1, 1),
        history_till=None,
        security_type="common_share",
        security_group="stock_shares",
        other_boards=(),
    )
    return dataclasses.replace(info, **changes)
