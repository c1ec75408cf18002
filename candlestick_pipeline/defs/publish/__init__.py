"""The publication: Dagster assets and a sensor that copy the warehouse into Datasette's SQLite file.

``publication_definitions()`` returns everything this package adds to the code location; merge it
with ``dg.Definitions.merge(...)``. The imports are inside the function so that the Datasette
plugin (which imports ``candlestick_pipeline.defs.publish.datasette_plugin``) does not load Dagster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg


def publication_definitions() -> dg.Definitions:
    """Assets ``published_candles_<tf>`` and ``published_securities``, their jobs
    ``publish_candles_<tf>``/``publish_securities``, ``publication_sensor``, and the ``publication``
    resource (the ``warehouse`` resource comes from the main definitions)."""
    import dagster as dg

    from candlestick_pipeline.defs.publish.assets import (
        publish_jobs,
        published_candle_assets,
        published_securities,
    )
    from candlestick_pipeline.defs.publish.resource import build_publication_resource
    from candlestick_pipeline.defs.publish.sensor import publication_sensor

    return dg.Definitions(
        assets=[*published_candle_assets, published_securities],
        jobs=publish_jobs,
        sensors=[publication_sensor],
        resources={"publication": build_publication_resource()},
    )


__all__ = ["publication_definitions"]
