"""ISSResource: configuration, the client's life cycle inside a run, and lazy use outside one."""

from __future__ import annotations

import threading

import dagster as dg
import pytest

from candlestick_pipeline.config import ISSSettings
from candlestick_pipeline.defs.iss.client import ISSClient
from candlestick_pipeline.defs.iss.resource import ISSResource

# Nothing listens on the discard port; no test here sends a request.
UNUSED_URL = "http://127.0.0.1:9"


def test_fields_defaults_and_descriptions() -> None:
    resource = ISSResource()
    assert (resource.base_url, resource.timeout_seconds, resource.max_concurrency) == (
        "https://iss.moex.com",
        30.0,
        4,
    )
    assert (resource.max_attempts, resource.backoff_base_seconds, resource.backoff_max_seconds) == (
        6,
        0.5,
        30.0,
    )
    fields = ISSResource.model_fields
    assert set(fields) == {
        "base_url",
        "timeout_seconds",
        "max_concurrency",
        "max_attempts",
        "backoff_base_seconds",
        "backoff_max_seconds",
    }
    assert all(field.description for field in fields.values())
    assert ISSResource.__doc__ and "ISS" in ISSResource.__doc__


def test_from_settings() -> None:
    settings = ISSSettings(
        base_url=UNUSED_URL,
        timeout_seconds=5.0,
        max_concurrency=2,
        max_attempts=3,
        backoff_base_seconds=0.1,
        backoff_max_seconds=2.0,
    )
    resource = ISSResource.from_settings(settings)
    assert (resource.base_url, resource.max_concurrency, resource.max_attempts) == (UNUSED_URL, 2, 3)


def test_get_client_outside_a_run_is_lazy_shared_and_thread_safe() -> None:
    resource = ISSResource(base_url=UNUSED_URL, max_concurrency=3, max_attempts=2)
    seen: list[ISSClient] = []
    lock = threading.Lock()

    def grab() -> None:
        client = resource.get_client()
        with lock:
            seen.append(client)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in seen}) == 1
    client = seen[0]
    assert (client.base_url, client.max_concurrency, client.max_attempts) == (UNUSED_URL, 3, 2)
    client.close()
    # A closed client is replaced rather than handed out again.
    assert resource.get_client() is not client
    resource.get_client().close()


def _run(resource: ISSResource, *, fail: bool = False, run_config: dict | None = None) -> list[ISSClient]:
    clients: list[ISSClient] = []

    @dg.asset
    def uses_iss(iss: ISSResource) -> int:
        client = iss.get_client()
        assert iss.get_client() is client and not client.closed
        clients.append(client)
        if fail:
            raise RuntimeError("asset failed on purpose")
        return client.max_attempts

    result = dg.materialize(
        [uses_iss], resources={"iss": resource}, run_config=run_config, raise_on_error=False
    )
    assert result.success is not fail
    return clients


def test_a_run_gets_its_own_client_closed_at_the_end() -> None:
    resource = ISSResource(base_url=UNUSED_URL, max_attempts=5)
    clients = _run(resource)
    assert len(clients) == 1 and clients[0].closed and clients[0].max_attempts == 5
    # The configured resource itself was never set up; a sensor using it gets a fresh client.
    outside = resource.get_client()
    assert outside is not clients[0] and not outside.closed
    outside.close()


def test_the_client_is_closed_when_the_asset_fails() -> None:
    clients = _run(ISSResource(base_url=UNUSED_URL), fail=True)
    assert len(clients) == 1 and clients[0].closed


def test_run_config_overrides_reach_the_client() -> None:
    clients = _run(
        ISSResource(base_url=UNUSED_URL),
        run_config={"resources": {"iss": {"config": {"max_attempts": 2, "max_concurrency": 7}}}},
    )
    assert (clients[0].max_attempts, clients[0].max_concurrency) == (2, 7)


def test_bad_configuration_fails_when_the_client_is_made() -> None:
    with pytest.raises(ValueError, match="max_concurrency must be at least 1"):
        ISSResource(base_url=UNUSED_URL, max_concurrency=0).get_client()
