"""The publication file as a Dagster resource."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from candlestick_pipeline import config
from candlestick_pipeline.lib import publication
from candlestick_pipeline.lib.securities import SecurityKey

PUBLICATION_PATH_ENV = "CANDLESTICK_PUBLICATION_PATH"


class PublicationResource(dg.ConfigurableResource):
    """The SQLite file Datasette serves (``candlestick serve``): a read-only copy of the warehouse.

    Every write is one SQLite transaction in WAL mode, so Datasette (which keeps the file open,
    read-only) sees each partition either before or after a sync, never half-written.
    """

    path: str = Field(description="Path of the publication SQLite file ($CANDLESTICK_PUBLICATION_PATH).")

    def ensure_schema(self) -> bool:
        return publication.ensure_schema(self.path)

    def sync_windows(
        self,
        engine: sa.Engine,
        key: SecurityKey,
        timeframe: str,
        windows: Sequence[tuple[dt.datetime, dt.datetime]],
    ) -> list[int]:
        """Copy the windows of one series from the warehouse in one transaction; rows per window."""
        return publication.sync_windows(engine, self.path, key, timeframe, windows)

    def sync_securities(self, engine: sa.Engine) -> int:
        return publication.sync_securities(engine, self.path)

    def rebuild(self, engine: sa.Engine) -> publication.RebuildResult:
        return publication.rebuild(engine, self.path)


def build_publication_resource() -> PublicationResource:
    """The publication at ``$CANDLESTICK_PUBLICATION_PATH`` or ``<data dir>/publication.db``."""
    if os.environ.get(PUBLICATION_PATH_ENV):
        return PublicationResource(path=dg.EnvVar(PUBLICATION_PATH_ENV))
    return PublicationResource(path=str(config.publication_path()))
