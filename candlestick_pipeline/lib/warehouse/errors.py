"""Errors raised by the warehouse."""

from __future__ import annotations


class WarehouseError(RuntimeError):
    """The warehouse cannot do what was asked (bad DSN, unsupported backend, schema out of date...)."""


class WarehouseConnectionError(WarehouseError):
    """The warehouse database cannot be reached; the message names the DSN with its password redacted."""
