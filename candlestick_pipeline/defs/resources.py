"""The resources every asset shares: the ISS client and the warehouse.

Values come from the environment (see the README's configuration table). The warehouse DSN is
passed as ``dg.EnvVar`` when it is set, so a DSN with a password is never baked into the
definitions or shown in the UI; without it the embedded SQLite file is used.
"""

from __future__ import annotations

import dataclasses
import os

import dagster as dg

from candlestick_pipeline.config import ISSSettings, default_warehouse_dsn
from candlestick_pipeline.defs.iss.resource import ISSResource
from candlestick_pipeline.defs.warehouse.resource import WarehouseResource

WAREHOUSE_DSN_ENV = "CANDLESTICK_WAREHOUSE_DSN"


def build_iss_resource(max_concurrency: int | None = None) -> ISSResource:
    """ISS (or a stand-in, via ``ISS_BASE_URL``) with the configured limits.

    ``max_concurrency`` replaces ``ISS_MAX_CONCURRENCY`` for a process that runs several runs at
    once and shares the configured concurrency among them.
    """
    settings = ISSSettings.from_env()
    if max_concurrency is not None:
        settings = dataclasses.replace(settings, max_concurrency=max_concurrency)
    return ISSResource.from_settings(settings)


def build_warehouse_resource() -> WarehouseResource:
    """The warehouse at ``$CANDLESTICK_WAREHOUSE_DSN``, or the embedded SQLite file."""
    if os.environ.get(WAREHOUSE_DSN_ENV):
        return WarehouseResource(dsn=dg.EnvVar(WAREHOUSE_DSN_ENV))
    return WarehouseResource(dsn=default_warehouse_dsn())


def build_resources(iss_max_concurrency: int | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources by the names the assets ask for."""
    return {"iss": build_iss_resource(iss_max_concurrency), "warehouse": build_warehouse_resource()}
