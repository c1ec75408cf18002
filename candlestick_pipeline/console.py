"""The ``candlestick`` console script: imports the CLI with the garbage collector off, then runs it.

Importing the CLI (Dagster, SQLAlchemy, polars, alembic) creates about a million objects that live
as long as the process. The collections that their creation sets off free almost nothing and took
0.15-0.2 s of every command's start-up (docs/benchmarks.md, session 8). Frozen once imported, they
are skipped by later full collections too, in the command and in the workers it forks.
"""

import gc
from collections.abc import Callable
from typing import NoReturn


def import_cli() -> Callable[[], NoReturn]:
    """``cli.entry_point``, imported with the collector off; the collector is as it was afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        from candlestick_pipeline.cli import entry_point
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    return entry_point


def entry_point() -> NoReturn:
    """The ``candlestick`` console script (``candlestick_pipeline.cli``)."""
    import_cli()()
