"""Configuration, read from environment variables in one place.

Every variable is documented in the README's configuration table. Nothing here holds a secret:
DSNs with passwords come from the environment only (and are passed to Dagster as ``dg.EnvVar``).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ISS_BASE_URL = "https://iss.moex.com"


class ConfigError(RuntimeError):
    """The environment does not describe a usable configuration."""


def dagster_home() -> Path:
    """``$DAGSTER_HOME``, or the current folder when it holds this project's ``dagster.yaml``."""
    env = os.environ.get("DAGSTER_HOME")
    if env:
        return Path(env).expanduser().resolve()
    cwd = Path.cwd()
    if (cwd / "dagster.yaml").is_file() and (cwd / "workspace.yaml").is_file():
        return cwd
    raise ConfigError(
        "DAGSTER_HOME is not set: run from the project folder or `export DAGSTER_HOME=/path/to/project`"
    )


def workspace_file() -> Path:
    """This project's ``workspace.yaml``: in the current folder, or beside the package (a clone)."""
    for folder in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (folder / "workspace.yaml").is_file():
            return folder / "workspace.yaml"
    raise ConfigError("workspace.yaml not found: run from the project folder")


def data_dir() -> Path:
    """Where the embedded SQLite warehouse and the publication live (``$CANDLESTICK_DATA_DIR``)."""
    env = os.environ.get("CANDLESTICK_DATA_DIR")
    path = Path(env).expanduser().resolve() if env else dagster_home() / "data"
    return path


def default_warehouse_dsn() -> str:
    """The embedded default: a SQLite file in :func:`data_dir`."""
    return f"sqlite:///{data_dir() / 'warehouse.db'}"


def warehouse_dsn() -> str:
    """``$CANDLESTICK_WAREHOUSE_DSN`` or the embedded SQLite default."""
    return os.environ.get("CANDLESTICK_WAREHOUSE_DSN") or default_warehouse_dsn()


def _int_env(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}")
    return value


def _float_env(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}")
    return value


@dataclass(frozen=True)
class ISSSettings:
    """How to reach ISS (or a stand-in) and how politely."""

    base_url: str
    timeout_seconds: float
    max_concurrency: int
    max_attempts: int
    backoff_base_seconds: float
    backoff_max_seconds: float

    @classmethod
    def from_env(cls) -> ISSSettings:
        return cls(
            base_url=os.environ.get("ISS_BASE_URL") or DEFAULT_ISS_BASE_URL,
            timeout_seconds=_float_env("ISS_TIMEOUT_SECONDS", 30.0, minimum=0.1),
            max_concurrency=_int_env("ISS_MAX_CONCURRENCY", 4, minimum=1),
            max_attempts=_int_env("ISS_MAX_ATTEMPTS", 6, minimum=1),
            backoff_base_seconds=_float_env("ISS_BACKOFF_BASE_SECONDS", 0.5),
            backoff_max_seconds=_float_env("ISS_BACKOFF_MAX_SECONDS", 30.0),
        )


DEFAULT_PARTITIONS_START = "2022-01-01"


def partitions_start() -> str:
    """First date of every candle partitions definition (``$CANDLESTICK_PARTITIONS_START``).

    Kept as one setting for all timeframes so that partition keys stay predictable; earlier history
    needs an earlier start (changing it only adds partition keys, it never loses materializations).
    """
    raw = os.environ.get("CANDLESTICK_PARTITIONS_START") or DEFAULT_PARTITIONS_START
    try:
        parsed = dt.date.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"CANDLESTICK_PARTITIONS_START={raw!r} is not a YYYY-MM-DD date") from None
    return parsed.isoformat()


def final_after_minutes() -> int:
    """How long after a period closes its candles count as final (ISS delays data ~15 minutes)."""
    return _int_env("CANDLESTICK_FINAL_AFTER_MINUTES", 30)


def fetch_span_max() -> int | None:
    """The most partitions one ISS candle query covers (unset: all the adjacent ones of a run)."""
    raw = os.environ.get("CANDLESTICK_FETCH_SPAN_MAX")
    return _int_env("CANDLESTICK_FETCH_SPAN_MAX", 1, minimum=1) if raw else None


def publication_path() -> Path:
    """The SQLite file Datasette serves (``$CANDLESTICK_PUBLICATION_PATH``)."""
    env = os.environ.get("CANDLESTICK_PUBLICATION_PATH")
    return Path(env).expanduser().resolve() if env else data_dir() / "publication.db"


def enabled_timeframes() -> tuple[str, ...]:
    """Timeframes the automation keeps loaded (``$CANDLESTICK_TIMEFRAMES``, comma-separated)."""
    from candlestick_pipeline.lib.timeframes import TIMEFRAMES, get_timeframe

    raw = os.environ.get("CANDLESTICK_TIMEFRAMES")
    if not raw:
        return tuple(TIMEFRAMES)
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    try:
        for name in names:
            get_timeframe(name)
    except ValueError as exc:
        raise ConfigError(f"CANDLESTICK_TIMEFRAMES: {exc}") from None
    return names


def fresh_timeframes() -> tuple[str, ...]:
    """Timeframes whose open period is re-loaded during trading (``$CANDLESTICK_FRESH_TIMEFRAMES``).

    Each is one run per security per freshness tick, so the default keeps to the intraday and
    daily bars; an empty value turns intraday freshness off.
    """
    raw = os.environ.get("CANDLESTICK_FRESH_TIMEFRAMES")
    names = (
        ("1m", "10m", "1h", "1d") if raw is None else tuple(n.strip() for n in raw.split(",") if n.strip())
    )
    return tuple(name for name in names if name in enabled_timeframes())


def earliest_date() -> dt.date:
    """History starts here unless ISS's candle borders start later (``$CANDLESTICK_EARLIEST_DATE``)."""
    raw = os.environ.get("CANDLESTICK_EARLIEST_DATE")
    if not raw:
        return dt.date.fromisoformat(partitions_start())
    try:
        value = dt.date.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"CANDLESTICK_EARLIEST_DATE={raw!r} is not a YYYY-MM-DD date") from None
    return max(value, dt.date.fromisoformat(partitions_start()))


def freshness_minutes() -> int:
    """How stale today's candles may get during trading (``$CANDLESTICK_FRESHNESS_MINUTES``)."""
    return _int_env("CANDLESTICK_FRESHNESS_MINUTES", 10, minimum=1)


def close_schedule_cron() -> str:
    """When the closed-periods schedule runs, Moscow time (``$CANDLESTICK_CLOSE_CRON``).

    Default 00:30: the evening session ends at 23:50 and anonymous ISS data lags ~15 minutes.
    """
    return os.environ.get("CANDLESTICK_CLOSE_CRON") or "30 0 * * *"


def run_retries() -> int:
    """Times a failed candle step is retried by Dagster (``$CANDLESTICK_RUN_RETRIES``)."""
    return _int_env("CANDLESTICK_RUN_RETRIES", 2)


def run_retry_delay_seconds() -> float:
    """First delay before a step retry; it doubles, with jitter (``$CANDLESTICK_RUN_RETRY_DELAY_SECONDS``)."""
    return _float_env("CANDLESTICK_RUN_RETRY_DELAY_SECONDS", 30.0)
