"""JSON texts of whole result columns, for the publication's large JSON pages.

A 1000-candle page is 11,000 values. The ``json`` encoder writes each number with ``repr`` and each
string through its escaper, value by value; these helpers do a column at a time. Their callers
(``datasette_plugin.encode_array``, ``iss_route.encode_page``) join the texts into rows and must
write exactly the bytes that the encoder they stand in for writes; the tests compare them.

``float.__repr__`` was two thirds of such a page (0.22 ms a column of 1000 on a slow core). polars
writes the same shortest round-trip text for a whole column in 0.06 ms, except below 1e-4 in
magnitude, where ``repr`` uses an exponent (``1e-05``) and polars does not (``0.00001``): such
columns keep ``repr``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import polars as pl

STR = frozenset({str})
FLOATS = frozenset({float})
NUMBERS = (frozenset({int}), FLOATS, frozenset({int, float}))
_SMALLEST_PLAIN = 1e-4
"""The least magnitude (but 0) of a float that ``repr`` writes without an exponent."""


def kinds_of(values: Sequence[Any]) -> frozenset[type]:
    """The exact types of a column's values (``bool`` is not ``int`` here, as for the encoder)."""
    return frozenset(map(type, values))


def is_plain_text(values: Sequence[str]) -> bool:
    """Whether no character of these strings needs escaping in JSON (printable ASCII, no quote, no
    backslash), so that each is written as it is between quotes."""
    text = "".join(values)
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def finite_numbers(values: Sequence[float]) -> bool:
    """Whether every number of a numeric column is finite (an int too large for a float is not)."""
    try:  # an infinity or a NaN makes the sum one (so does a sum too large: value by value then)
        return math.isfinite(sum(values))
    except OverflowError:
        return False


def number_texts(values: Sequence[Any], kinds: frozenset[type]) -> Sequence[str]:
    """``repr`` of each of these finite numbers (what the ``json`` encoder writes for them), a float
    column formatted by polars where it writes the same text."""
    if kinds == FLOATS:
        column = pl.Series(values=values, dtype=pl.Float64)
        least, most = column.min(), column.max()
        assert isinstance(least, float) and isinstance(most, float)  # a float column without nulls
        # Prices and turnovers are positive: one look at the bounds settles it. Otherwise look again.
        plain = least >= _SMALLEST_PLAIN or most <= -_SMALLEST_PLAIN
        if plain or not column.abs().is_between(0.0, _SMALLEST_PLAIN, closed="none").any():
            return column.cast(pl.String).to_list()
    # ints: ``int.__repr__`` is as quick as polars (0.05 ms for 1000 volumes), and has no range.
    return list(map(repr, values))


def column_texts(
    values: Sequence[Any], escape: Callable[[str], str], encode: Callable[[Any], str]
) -> tuple[Sequence[str], bool]:
    """One column's values as JSON texts, and whether they go between quotes as they are.

    Strings that need no escaping are their own texts; other strings go through ``escape`` (the
    encoder's string escaper), finite numbers through :func:`number_texts`, and any other column
    value by value through ``encode`` (the caller's encoder for one value)."""
    kinds = kinds_of(values)
    if kinds == STR:
        return (values, True) if is_plain_text(values) else (list(map(escape, values)), False)
    if kinds in NUMBERS and finite_numbers(values):
        return number_texts(values, kinds), False
    return list(map(encode, values)), False


Column = tuple[str, Sequence[str], bool]
"""What goes before each value (``'"name": '`` in an object, nothing in an array), the values'
texts, and whether each goes between quotes as it is."""


def join_rows(columns: Sequence[Column], count: int, opening: str, closing: str) -> str:
    """A JSON array of ``count`` rows, each ``opening``, the columns' labels and values separated by
    ``", "``, then ``closing`` (``{}`` for objects, ``[]`` for arrays), as the ``json`` encoder
    separates them (``separators=(", ", ": ")``)."""
    # Per row: opening, label, value, ", ", label, value, ... closing; the constant texts repeat.
    pieces: list[Iterable[str]] = []
    before = opening
    for label, texts, quoted in columns:
        quote = '"' if quoted else ""
        pieces.append(itertools.repeat(before + label + quote, count))
        pieces.append(texts)
        before = quote + ", "
    pieces.append(itertools.repeat(before.removesuffix(", ") + closing, count))
    return "[" + ", ".join(map("".join, zip(*pieces, strict=True))) + "]"
