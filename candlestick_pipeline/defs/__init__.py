"""Dagster definitions, one package per domain.

Backfill policies and partitioned asset checks are beta/preview in Dagster 1.13; this project uses
both on purpose (see the README), so their warnings are not repeated on every load.
"""

import warnings

import dagster as dg

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
