"""Alembic environment of the warehouse, driven programmatically by ``lib.warehouse.migrate``.

There is no ``alembic.ini``: ``migrate`` builds the ``Config`` and hands over an open connection in
``config.attributes["connection"]``, already inside the transaction (and lock) it wants the
migrations to run in. A new revision is a new file in ``versions/`` shaped like
``script.py.mako`` (``revision = "0002"``, ``down_revision = "0001"``); change
``lib/warehouse/schema.py`` to match, and the schema test compares the two.
"""

from __future__ import annotations

from alembic import context

from candlestick_pipeline.lib.warehouse.schema import VERSION_TABLE, metadata

config = context.config
connection = config.attributes.get("connection")

if context.is_offline_mode() or connection is None:
    raise RuntimeError(
        "warehouse migrations run online only, through candlestick_pipeline.lib.warehouse.migrate(engine)"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)

with context.begin_transaction():
    context.run_migrations()
