"""Engines, DSN handling, write transactions and migrations of the warehouse."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError as AlembicError
from sqlalchemy.engine import URL, make_url

from candlestick_pipeline.lib.warehouse.errors import WarehouseConnectionError, WarehouseError
from candlestick_pipeline.lib.warehouse.schema import VERSION_TABLE

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

_WRITE_LOCK_OPTION = "candlestick_write_lock"
_PG_CONNECT_TIMEOUT_SECONDS = 10
_SQLITE_BUSY_TIMEOUT_MS = 30_000
# Session-level advisory lock id of "the warehouse migration" (an arbitrary constant).
_MIGRATION_LOCK_ID = 7_362_415_029_001
# "password=..." as a libpq keyword or a URL query parameter.
_PASSWORD_PARAM = re.compile(r"(password\s*=\s*)('[^']*'|[^\s&]+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***``, safe to log or show in an error.

    Works on the text, not on a parsed URL, so that a malformed DSN (an unescaped ``@`` in the
    password, a bad port) is redacted too: everything between the user name and the last ``@`` goes.
    """
    redacted = _PASSWORD_PARAM.sub(r"\1***", dsn)
    scheme, separator, rest = redacted.partition("://")
    if not separator or rest.startswith("/"):  # no URL, or no authority part (sqlite:////path)
        return redacted
    userinfo, at, host_and_rest = rest.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return redacted
    return f"{scheme}://{user}:***@{host_and_rest}"


def _normalize_url(dsn: str) -> URL:
    try:
        url = make_url(dsn)
    except (sa.exc.ArgumentError, ValueError):
        raise WarehouseError(f"not a SQLAlchemy URL: {redact_dsn(dsn)}") from None
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql"):
        # SQLAlchemy 2.1 maps postgresql:// to psycopg 3 already (G1), but a DSN shared with
        # dagster-postgres may say +psycopg2; the bulk path needs psycopg 3's COPY API either way.
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url
    raise WarehouseError(
        f"unsupported warehouse backend {backend!r} in {redact_dsn(dsn)}: use sqlite or postgresql"
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module (its legacy mode starts no transaction
    # for SELECT or DDL); _sqlite_on_begin emits the BEGIN instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        # WAL lets Datasette and checks read while a load writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # A writer takes the write lock up front (waiting up to busy_timeout): a deferred transaction
    # that upgrades to a writer later fails at once with "database is locked" under contention.
    mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITE_LOCK_OPTION) else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def _sqlite_engine(url: URL) -> sa.Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000})
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _postgres_engine(url: URL) -> sa.Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_SECONDS
    if "application_name" not in url.query:
        connect_args["application_name"] = "candlestick-warehouse"
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def create_warehouse_engine(dsn: str) -> sa.Engine:
    """An Engine for the warehouse at ``dsn`` (SQLite file or PostgreSQL), checked by one connection.

    ``postgresql://`` and ``postgres://`` (and any other PostgreSQL driver) become
    ``postgresql+psycopg://``. A SQLite file's folder is created; its connections use WAL,
    ``busy_timeout=30000`` and ``synchronous=NORMAL``. A DSN that does not connect raises
    :class:`WarehouseConnectionError`, whose message has the password redacted.
    """
    url = _normalize_url(dsn)
    try:
        engine = _sqlite_engine(url) if url.get_backend_name() == "sqlite" else _postgres_engine(url)
    except (sa.exc.ArgumentError, OSError) as exc:
        raise WarehouseError(f"cannot create an engine for {redact_dsn(dsn)}: {_redact(exc, url)}") from None
    sa.event.listen(engine, "handle_error", _ConnectionFailure(dsn, url))
    try:
        with engine.connect():
            pass
    except WarehouseConnectionError as exc:
        engine.dispose()
        # "from None": the chained driver exception could carry connection parameters.
        raise WarehouseConnectionError(str(exc)) from None
    return engine


class _ConnectionFailure:
    """``handle_error`` hook: a failure to connect becomes :class:`WarehouseConnectionError`.

    Not only at start-up: an engine outlives a database that goes away, and its next connection
    (a step retry, say) must fail as clearly as the first one would have, not as a bare
    ``OperationalError``. Errors on a connection already open are left to the callers, which say
    what was being done (``candle_store`` names the write that was rolled back).
    """

    def __init__(self, dsn: str, url: URL) -> None:
        self._dsn = dsn
        self._url = url

    def __call__(self, context: sa.engine.ExceptionContext) -> BaseException | None:
        if context.connection is not None or context.is_pre_ping:
            return None
        reason = _redact(context.original_exception, self._url)
        return WarehouseConnectionError(f"cannot connect to the warehouse {redact_dsn(self._dsn)}: {reason}")


def _redact(exc: BaseException, url: URL) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if url.password:
        text = text.replace(str(url.password), "***")
    return text


def is_postgres(bind: sa.Engine | sa.Connection) -> bool:
    """Whether ``bind`` talks to PostgreSQL (else SQLite)."""
    return bind.dialect.name == "postgresql"


@contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One write transaction, committed on success and rolled back on any exception.

    On SQLite it starts with ``BEGIN IMMEDIATE``, so writers queue on the database write lock
    (for up to ``busy_timeout``) instead of failing when a second writer appears.
    """
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE_LOCK_OPTION: True})
        with conn.begin():
            yield conn


def advisory_key(*parts: str) -> int:
    """A signed 64-bit key for ``pg_advisory_xact_lock`` derived from ``parts``."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_key(conn: sa.Connection, *parts: str) -> None:
    """Serialize transactions on ``parts`` until this transaction ends.

    PostgreSQL: a transaction-level advisory lock. SQLite: nothing to do, the transaction already
    holds the database write lock (see :func:`write_transaction`).
    """
    if is_postgres(conn):
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(advisory_key(*parts))))


def _alembic_config(conn: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if conn is not None:
        config.attributes["connection"] = conn
    return config


def head_revision() -> str:
    """The newest migration revision shipped with this code."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise WarehouseError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def _is_known_revision(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(_alembic_config()).get_revision(revision) is not None
    except AlembicError:
        return False


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at, ``None`` for a database never migrated."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def migrate(engine: sa.Engine) -> str:
    """Upgrade the warehouse schema to the newest revision and return that revision.

    Cheap when the database is up to date (one read, no lock). Safe when several processes call it
    at once: the upgrade runs in one transaction under a lock (PostgreSQL: an advisory lock,
    SQLite: the write lock), and whoever comes second finds the schema already at head.
    """
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return head
    if current is not None and not _is_known_revision(current):
        raise WarehouseError(
            f"the warehouse schema is at revision {current!r}, which this code does not know "
            f"(newest here: {head!r}); upgrade the code before using this database"
        )
    with write_transaction(engine) as conn:
        if is_postgres(conn):
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))
        # Alembic sees the transaction already begun and runs every step inside it (both
        # backends have transactional DDL), so a failed upgrade leaves nothing half-done.
        command.upgrade(_alembic_config(conn), "head")
    return head
