"""Initial warehouse: securities and candles.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types (a migration must not change when lib code changes):
# timestamps are TEXT "YYYY-MM-DD HH:MM:SS" on SQLite.
_MOSCOW_TIMESTAMP = sa.DateTime(timezone=False).with_variant(sa.Text(), "sqlite")
_UTC_TIMESTAMP = sa.DateTime(timezone=True).with_variant(sa.Text(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "securities",
        sa.Column("secid", sa.Text(), nullable=False),
        sa.Column("board", sa.Text(), nullable=False),
        sa.Column("engine", sa.Text(), nullable=False),
        sa.Column("market", sa.Text(), nullable=False),
        sa.Column("shortname", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("isin", sa.Text(), nullable=True),
        sa.Column("decimals", sa.Integer(), nullable=True),
        sa.Column("currency", sa.Text(), nullable=True),
        sa.Column("is_primary", sa.Boolean(), nullable=False),
        sa.Column("is_traded", sa.Boolean(), nullable=False),
        sa.Column("listed_from", sa.Date(), nullable=True),
        sa.Column("listed_till", sa.Date(), nullable=True),
        sa.Column("history_from", sa.Date(), nullable=True),
        sa.Column("history_till", sa.Date(), nullable=True),
        sa.Column("security_type", sa.Text(), nullable=True),
        sa.Column("security_group", sa.Text(), nullable=True),
        sa.Column("other_boards", sa.Text(), nullable=True),
        sa.Column("added_at", _UTC_TIMESTAMP, nullable=False),
        sa.Column("updated_at", _UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("secid", "board", name="securities_pkey"),
    )
    op.create_table(
        "candles",
        sa.Column("secid", sa.Text(), nullable=False),
        sa.Column("board", sa.Text(), nullable=False),
        sa.Column("timeframe", sa.Text(), nullable=False),
        sa.Column("begin", _MOSCOW_TIMESTAMP, nullable=False),
        sa.Column("end", _MOSCOW_TIMESTAMP, nullable=False),
        sa.Column("open", sa.Double(), nullable=False),
        sa.Column("high", sa.Double(), nullable=False),
        sa.Column("low", sa.Double(), nullable=False),
        sa.Column("close", sa.Double(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("volume", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("secid", "board", "timeframe", "begin", name="candles_pkey"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("candles")
    op.drop_table("securities")
