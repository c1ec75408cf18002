"""The Dagster resource that hands assets, sensors and checks an :class:`ISSClient`."""

from __future__ import annotations

import threading

import dagster as dg
from pydantic import Field, PrivateAttr

from candlestick_pipeline.config import DEFAULT_ISS_BASE_URL, ISSSettings
from candlestick_pipeline.defs.iss.client import ISSClient

ISS_POOL = "iss"
"""The Dagster pool of every step that calls ISS; its limit (``concurrency.pools`` in dagster.yaml)
is how many such steps run at once across all runs."""


def ensure_iss_pool(instance: dg.DagsterInstance) -> None:
    """Give the ``iss`` pool its default limit now, if it has none yet and the instance sets one.

    Dagster does this when the first step of the pool starts. On PostgreSQL storage, Dagster 1.13
    does it racily: two runs that start at the same moment on a fresh instance both insert the
    limit, and one of them fails (UniqueViolation, then InFailedSqlTransaction). Whoever starts
    several runs at once calls this first. Dagster's own call is not idempotent on PostgreSQL
    (its IntegrityError fallback runs in an aborted transaction), hence the check.
    """
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    if instance.global_op_concurrency_default_limit is None:
        return
    if ISS_POOL in storage.get_concurrency_keys():
        return
    storage.initialize_concurrency_limit_to_default(ISS_POOL)


class ISSResource(dg.ConfigurableResource):
    """MOEX ISS (iss.moex.com) or a stand-in: where to fetch candles and reference data, and how politely.

    Each run (per process) gets one pooled HTTP client, created when the run starts and closed
    when it ends. ``max_concurrency`` bounds the requests in flight from that process; retries
    use exponential backoff with full jitter and honour ``Retry-After``. Anonymous ISS data is
    delayed by about 15 minutes.
    """

    base_url: str = Field(
        default=DEFAULT_ISS_BASE_URL,
        description="Root URL of ISS without the /iss path, e.g. https://iss.moex.com or a stand-in's URL.",
    )
    timeout_seconds: float = Field(
        default=30.0, description="Time-out of one HTTP request (connect, read, write, pool), in seconds."
    )
    max_concurrency: int = Field(
        default=4,
        description="Most ISS requests in flight at once from one process (also the HTTP pool size).",
    )
    max_attempts: int = Field(
        default=6,
        description="Attempts per request, the first included, before ISSUnavailableError fails the step.",
    )
    backoff_base_seconds: float = Field(
        default=0.5,
        description="Backoff before retry n: uniform in [0, min(max, base * 2**(n-1))] s (full jitter).",
    )
    backoff_max_seconds: float = Field(
        default=30.0, description="Upper bound of one backoff delay, in seconds."
    )

    _client: ISSClient | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: ISSSettings) -> ISSResource:
        """A resource configured from :class:`ISSSettings` (e.g. ``ISSSettings.from_env()``)."""
        return cls(
            base_url=settings.base_url,
            timeout_seconds=settings.timeout_seconds,
            max_concurrency=settings.max_concurrency,
            max_attempts=settings.max_attempts,
            backoff_base_seconds=settings.backoff_base_seconds,
            backoff_max_seconds=settings.backoff_max_seconds,
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        with self._lock:
            self._client = self._new_client()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def get_client(self) -> ISSClient:
        """The run's client; outside a run (a sensor, a test) one is created on first use and kept."""
        with self._lock:
            if self._client is None or self._client.closed:
                self._client = self._new_client()
            return self._client

    def _new_client(self) -> ISSClient:
        return ISSClient(
            self.base_url,
            timeout_seconds=self.timeout_seconds,
            max_concurrency=self.max_concurrency,
            max_attempts=self.max_attempts,
            backoff_base_seconds=self.backoff_base_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
        )
