"""Dagster's own floor for B1: a process that imports Dagster, opens the instance of DAGSTER_HOME and
materializes one asset that does nothing. Prints, as Unix times (JSON) from which the caller
subtracts its own start, when Dagster was imported, the instance open, the asset's body running and
the run ended.

Nothing of the pipeline runs except what the instance needs (the storage classes ``dagster.yaml``
names). Like ``candlestick``, it imports with the garbage collector off and exits without
teardown, so the figure is the least a process that records one run in this instance can cost:
whatever a backfill takes beyond ``ISS-bound ideal + this floor`` is the pipeline's own.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

gc.disable()

import dagster as dg  # noqa: E402 - after the collector is off, as the CLI does

_MARKS: dict[str, float] = {}


@dg.asset
def floor_probe() -> None:
    """Does nothing: the run around it is what is measured."""
    _MARKS["body"] = time.time()


def main() -> None:
    imported = time.time()
    instance = dg.DagsterInstance.get()
    opened = time.time()
    result = dg.materialize([floor_probe], instance=instance)
    if not result.success:
        raise SystemExit("the floor probe's run failed")
    print(json.dumps({"imported": imported, "instance": opened, "body": _MARKS["body"], "end": time.time()}))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
