"""Exceptions raised by the ISS client and parsers.

Every exception keeps its constructor arguments as attributes and pickles back to an equal
exception (``__reduce__``), because Dagster may move errors between processes.
"""

from __future__ import annotations

from typing import Any


class ISSError(Exception):
    """Base class of everything the ISS client raises about ISS itself."""


class ISSUnavailableError(ISSError):
    """ISS could not be reached or kept failing; raised after the last retry."""

    def __init__(self, url: str, attempts: int, last_error: str | BaseException) -> None:
        self.url = url
        self.attempts = attempts
        self.last_error = last_error if isinstance(last_error, str) else _describe(last_error)
        plural = "attempt" if attempts == 1 else "attempts"
        super().__init__(
            f"ISS is unavailable: {url} failed after {attempts} {plural}; last error: {self.last_error}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url, self.attempts, self.last_error))


class ISSResponseError(ISSError):
    """A response that cannot be parsed or has the wrong shape (or a non-retryable HTTP status)."""

    def __init__(self, message: str, url: str | None = None, status: int | None = None) -> None:
        self.message = message
        self.url = url
        self.status = status
        where = f" (from {url})" if url else ""
        super().__init__(f"bad ISS response{where}: {message}")

    def with_url(self, url: str) -> ISSResponseError:
        """The same error, naming the URL it came from (parsers do not know it)."""
        if self.url is not None:
            return self
        return type(self)(self.message, url=url, status=self.status)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.url, self.status))


class UnknownSecurityError(ISSError, LookupError):
    """ISS answers with no boards for the secid: it does not know the security."""

    def __init__(self, secid: str) -> None:
        self.secid = secid
        super().__init__(f"ISS has no security {secid!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.secid,))


class WrongBoardError(ISSError, LookupError):
    """The security exists but is not listed on the board that was asked for."""

    def __init__(self, secid: str, board: str, boards: tuple[str, ...]) -> None:
        self.secid = secid
        self.board = board
        self.boards = tuple(boards)
        listed = ", ".join(self.boards) if self.boards else "no board"
        super().__init__(f"security {secid!r} does not trade on board {board!r}; ISS lists it on: {listed}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.secid, self.board, self.boards))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
