"""Security identity: a secid on one board, and its Dagster partition key ``SECID.BOARD``.

A secid can trade on several boards (FXGD on TQTF and TQTD), so a partition key must name both.
The key is ``{secid}.{board}``; neither part may contain ``.``, ``|``, ``,`` or whitespace, which
Dagster multi-partition keys or our own split would misread. Secids keep their case (futures such as
``SiZ5`` are case-sensitive on ISS); boards are upper-case.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

_SECID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,35}$")
_BOARD_RE = re.compile(r"^[A-Z0-9][A-Z0-9_]{1,15}$")


class InvalidSecurityKeyError(ValueError):
    """A secid, board or partition key that cannot name a security."""


def normalize_secid(raw: str) -> str:
    """Strip surrounding white space; refuse characters no ISS secid has. Case is kept."""
    secid = raw.strip()
    if not _SECID_RE.fullmatch(secid):
        raise InvalidSecurityKeyError(f"invalid secid {raw!r}: expected 1-36 letters, digits, '_' or '-'")
    return secid


def normalize_board(raw: str) -> str:
    """Strip white space and upper-case a board id (ISS boards are upper-case: TQBR, TQOB)."""
    board = raw.strip().upper()
    if not _BOARD_RE.fullmatch(board):
        raise InvalidSecurityKeyError(
            f"invalid board {raw!r}: expected 2-16 upper-case letters, digits or '_'"
        )
    return board


@dataclass(frozen=True, order=True)
class SecurityKey:
    """A secid on a board: the unit a candle series belongs to."""

    secid: str
    board: str

    def __post_init__(self) -> None:
        if normalize_secid(self.secid) != self.secid:
            raise InvalidSecurityKeyError(f"secid {self.secid!r} is not normalized")
        if normalize_board(self.board) != self.board:
            raise InvalidSecurityKeyError(f"board {self.board!r} is not normalized")

    @property
    def partition_key(self) -> str:
        return f"{self.secid}.{self.board}"

    @classmethod
    def parse(cls, partition_key: str) -> SecurityKey:
        """Parse ``SECID.BOARD`` back into a key; a malformed key is a clear error."""
        secid, sep, board = partition_key.partition(".")
        if not sep or not secid or not board:
            raise InvalidSecurityKeyError(
                f"invalid security partition key {partition_key!r}: expected SECID.BOARD, e.g. SBER.TQBR"
            )
        return cls(normalize_secid(secid), normalize_board(board))

    def __str__(self) -> str:
        return self.partition_key


@dataclass(frozen=True)
class SecurityInfo:
    """Reference data of a security on one board, as resolved from ``/iss/securities/{secid}.json``."""

    secid: str
    board: str
    engine: str
    market: str
    shortname: str | None
    name: str | None
    isin: str | None
    decimals: int | None
    currency: str | None
    is_primary: bool
    is_traded: bool
    listed_from: dt.date | None
    listed_till: dt.date | None
    history_from: dt.date | None
    history_till: dt.date | None
    security_type: str | None = None
    security_group: str | None = None
    other_boards: tuple[str, ...] = field(default=())

    @property
    def key(self) -> SecurityKey:
        return SecurityKey(self.secid, self.board)
