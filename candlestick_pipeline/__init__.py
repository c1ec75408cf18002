"""MOEX ISS candles pipeline."""

import os as _os

# Dagster writes the events of a run over a partition range (a planned event and a materialization
# per partition) in batches only when its own switch is set, and only the storages of
# lib/dagster_storage.py write the planned ones in one statement. Every process that creates or
# executes this code location's runs imports this package first (the `candlestick` CLI, `dagster
# asset materialize`, the code server and run workers; `candlestick dev` passes it on to Dagster's
# daemon), so the default is set here. A value the user set wins; 0 turns batching off.
_os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
