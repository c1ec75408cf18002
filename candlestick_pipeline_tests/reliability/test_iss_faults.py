"""ISS misbehaving: a storm of every fault at once, ISS down for good, ISS down mid-run, ISS hanging.

In-process Dagster runs (``dg.materialize``) against a persistent test instance, the ISS stand-in
over real HTTP, and each warehouse backend.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import dagster as dg
import pytest

from candlestick_pipeline.config import run_retries
from candlestick_pipeline.defs.candles.partitions import multi_key
from candlestick_pipeline.defs.candles.status import LoadState, partition_states
from candlestick_pipeline.lib import warehouse
from candlestick_pipeline.lib.securities import SecurityInfo
from candlestick_pipeline.lib.timeframes import TIMEFRAMES
from candlestick_pipeline.standin.server import FAULT_KINDS, ISSStandIn
from candlestick_pipeline_tests.reliability.conftest import (
    ASSETS,
    NOW,
    assert_exact,
    classify_days,
    day_window,
    days,
    engine_for,
    failure_message,
    month_window,
    preload,
    range_tags,
    register,
    resources,
    source,
    stored,
)

STORM = {
    "p_5xx": 0.10,
    "p_429": 0.05,
    "retry_after_seconds": 0.05,
    "p_truncated": 0.02,
    "p_html_502": 0.02,
    "p_error_200": 0.02,
    "p_reset": 0.01,
    "p_slow": 0.02,
    "slow_seconds": 1.0,
    "seed": 0,
    # The first requests get one fault of each kind for sure; the rates above take over after them.
    "fail_next": list(FAULT_KINDS),
}
STORM_TIMEOUT_SECONDS = 0.5  # the client's per-request time-out: every "slow" answer (1 s) times out
STORM_MAX_ATTEMPTS = 10  # P(10 faults in a row) = 0.24**10 ~ 6e-7 per request: the run cannot give up
STORM_RUNS = (  # asset, first partition, last partition, partitions: one range run each
    ("candles_1m", "2025-05-12", "2025-06-08", 28),
    ("candles_10m", "2025-01-01", "2025-05-01", 5),
    ("candles_1h", "2025-01-01", "2025-05-01", 5),
)


def _metadata(mat: dg.AssetMaterialization) -> dict[str, int | str | bool]:
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def test_a_backfill_through_every_iss_fault_at_once_loads_exactly_the_source(
    instance: dg.DagsterInstance, standin: ISSStandIn, warehouse_dsn: str
) -> None:
    standin.set_now(NOW)
    key = register(instance, standin, warehouse_dsn)
    standin.set_faults(**STORM)
    standin.reset_stats()
    res = resources(
        standin, warehouse_dsn, timeout_seconds=STORM_TIMEOUT_SECONDS, max_attempts=STORM_MAX_ATTEMPTS
    )
    started = time.monotonic()
    runs = {
        (asset, count): dg.materialize(
            [ASSETS[asset]], instance=instance, resources=res, tags=range_tags(key, first, last)
        )
        for asset, first, last, count in STORM_RUNS
    }
    elapsed = time.monotonic() - started
    assert all(run.success for run in runs.values())

    rows_checked = 0
    for day in days(dt.date(2025, 5, 12), 28):
        window = day_window(day)
        rows_checked += assert_exact(
            stored(warehouse_dsn, key, "1m", *window), source(standin, key, 1, *window)
        )
    for month in range(1, 6):
        window = month_window(dt.date(2025, month, 1))
        for timeframe, interval in (("10m", 10), ("1h", 60)):
            rows_checked += assert_exact(
                stored(warehouse_dsn, key, timeframe, *window), source(standin, key, interval, *window)
            )

    # Retries happened, each partition's are bounded, and the run totals add up.
    partitions = retries = requests = worst = 0
    for (asset, count), run in runs.items():
        metas = [_metadata(m) for m in run.asset_materializations_for_node(asset)]
        assert len(metas) == count
        run_retries = 0
        # The partitions of one fetch span share its figures; count each fetch once.
        fetches = {meta["iss_fetch"]: meta for meta in metas}
        assert all(meta["run_partitions"] == count for meta in metas)
        assert {meta["run_iss_fetches"] for meta in metas} == {len(fetches)}
        for meta in fetches.values():
            pages, tries, sent = (int(meta[name]) for name in ("iss_pages", "iss_retries", "iss_requests"))
            assert sent == pages + tries and tries <= (STORM_MAX_ATTEMPTS - 1) * pages
            run_retries += tries
            requests += sent
            worst = max(worst, tries)
        assert {meta["run_iss_retries"] for meta in metas} == {run_retries}
        partitions += count
        retries += run_retries

    stats = standin.stats.snapshot()
    faults = stats["faults_injected"]
    injected = sum(faults.values())
    assert set(faults) == set(FAULT_KINDS)
    assert 0 < retries <= requests // 2
    # Every injected fault cost exactly one retry; a retry with no fault behind it would be a client
    # bug (a keep-alive connection the stand-in closed after a fault may cost one more, rarely).
    assert injected <= retries <= injected + 3
    assert stats["candle_requests"] == requests == stats["total_requests"]
    print(  # the figures quoted in docs/reliability.md
        "\nFAULT-STORM "
        + json.dumps(
            {
                "warehouse": warehouse_dsn.split(":", 1)[0],
                "partitions": partitions,
                "rows_checked": rows_checked,
                "iss_requests": requests,
                "iss_retries": retries,
                "most_retries_in_one_fetch": worst,
                "faults_injected": dict(sorted(faults.items())),
                "seconds": round(elapsed, 1),
            }
        )
    )


def _status(instance: dg.DagsterInstance, asset: str, keys: list[str]) -> dict[str, str]:
    statuses = instance.get_status_by_partition(
        dg.AssetKey(asset),
        keys,
        ASSETS[asset].partitions_def,  # type: ignore[arg-type]
    )
    assert statuses is not None
    return {key: (status.value if status is not None else "MISSING") for key, status in statuses.items()}


def test_iss_down_for_good_fails_naming_iss_keeps_old_rows_and_a_rerun_completes(
    instance: dg.DagsterInstance, standin: ISSStandIn, warehouse_dsn: str
) -> None:
    standin.set_now(NOW)
    key = register(instance, standin, warehouse_dsn)
    res = resources(standin, warehouse_dsn, max_attempts=3)
    week = days(dt.date(2025, 6, 2), 5)
    keys = [str(multi_key(key, day.isoformat())) for day in week]
    # Three days are loaded and final; then ISS corrects its prices and goes down.
    assert dg.materialize(
        [ASSETS["candles_1m"]],
        instance=instance,
        resources=res,
        tags=range_tags(key, "2025-06-02", "2025-06-04"),
    ).success
    standin.set_revision(1)
    standin.set_faults(down=True)
    standin.reset_stats()

    started = time.monotonic()
    failed = dg.materialize(
        [ASSETS["candles_1m"]],
        instance=instance,
        resources=res,
        tags=range_tags(key, "2025-06-02", "2025-06-06"),
        raise_on_error=False,
    )
    assert not failed.success and time.monotonic() - started < 30
    message = failure_message(failed)
    assert "ISS is unavailable" in message and "failed after 3 attempts" in message
    assert (
        f"{standin.base_url}/iss/engines/stock/markets/shares/boards/TQBR/securities/SBER/candles.json"
        in message
    )
    # Bounded: per step attempt (1 + CANDLESTICK_RUN_RETRIES), the query's first pages (as many as
    # ISS concurrency, 4) are tried max_attempts (3) times at most, and the first give-up stops the
    # others' retries.
    bound = 4 * 3 * (1 + run_retries())
    assert 0 < standin.candle_requests() <= bound
    print(f"\nISS-DOWN candle requests={standin.candle_requests()} (bound {bound})")
    # Nothing of the failed run is marked loaded, and nothing it did reached the warehouse.
    assert failed.asset_materializations_for_node("candles_1m") == []
    assert instance.get_materialized_partitions(dg.AssetKey("candles_1m")) == set(keys[:3])
    status = _status(instance, "candles_1m", keys)
    assert status == {k: "FAILED" for k in keys}
    states = partition_states(instance, TIMEFRAMES["1m"], key, [d.isoformat() for d in week], now=NOW)
    assert [s.state for s in states] == [LoadState.FINAL] * 3 + [LoadState.MISSING] * 2
    for day in week[:3]:
        assert_exact(
            stored(warehouse_dsn, key, "1m", *day_window(day)), source(standin, key, 1, *day_window(day), 0)
        )
    for day in week[3:]:
        assert stored(warehouse_dsn, key, "1m", *day_window(day)).is_empty()

    # ISS is back: the same range completes, exactly the corrected source.
    standin.set_faults(down=False)
    assert dg.materialize(
        [ASSETS["candles_1m"]],
        instance=instance,
        resources=res,
        tags=range_tags(key, "2025-06-02", "2025-06-06"),
    ).success
    for day in week:
        assert_exact(
            stored(warehouse_dsn, key, "1m", *day_window(day)), source(standin, key, 1, *day_window(day), 1)
        )
    assert _status(instance, "candles_1m", keys) == {k: "MATERIALIZED" for k in keys}


def test_iss_going_down_mid_range_leaves_every_day_whole_and_a_rerun_completes(
    instance: dg.DagsterInstance, standin: ISSStandIn, warehouse_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin.set_now(NOW)
    key = register(instance, standin, warehouse_dsn)
    week = days(dt.date(2025, 6, 2), 7)
    preload(warehouse_dsn, standin, key, week, revision=0)
    standin.set_revision(1)
    original = warehouse.replace_candles_many
    written: list[object] = []

    def replace_then_iss_dies(*args: object, **kwargs: object) -> int:
        rows = original(*args, **kwargs)  # type: ignore[arg-type]
        written.append(args[3])
        standin.set_faults(down=True)  # ISS dies right after the first partition is written
        return rows

    monkeypatch.setattr(warehouse, "replace_candles_many", replace_then_iss_dies)
    # One partition per ISS query, one request at a time, so the partitions after the second are
    # never fetched.
    monkeypatch.setenv("CANDLESTICK_FETCH_SPAN_MAX", "1")
    res = resources(standin, warehouse_dsn, max_concurrency=1, max_attempts=2)
    failed = dg.materialize(
        [ASSETS["candles_1m"]],
        instance=instance,
        resources=res,
        tags=range_tags(key, "2025-06-02", "2025-06-08"),
        raise_on_error=False,
    )
    assert not failed.success and "ISS is unavailable" in failure_message(failed)
    assert failed.asset_materializations_for_node("candles_1m") == []
    assert instance.get_materialized_partitions(dg.AssetKey("candles_1m")) == set()
    state = classify_days(warehouse_dsn, standin, key, week, old=0, new=1)
    assert "MIXED" not in state.values()
    assert state[week[0]] == "new" and all(state[day] == "old" for day in week[2:])
    assert 1 <= len(written) <= 2

    monkeypatch.setattr(warehouse, "replace_candles_many", original)
    standin.set_faults(down=False)
    assert dg.materialize(
        [ASSETS["candles_1m"]],
        instance=instance,
        resources=res,
        tags=range_tags(key, "2025-06-02", "2025-06-08"),
    ).success
    assert set(classify_days(warehouse_dsn, standin, key, week, old=0, new=1).values()) == {"new"}


def test_a_hanging_iss_fails_the_run_in_bounded_time(
    instance: dg.DagsterInstance, standin: ISSStandIn, sqlite_dsn: str
) -> None:
    warehouse_dsn = sqlite_dsn  # about ISS, not the warehouse: one backend is enough
    standin.set_now(NOW)
    key = register(instance, standin, warehouse_dsn)
    standin.set_faults(p_slow=1.0, slow_seconds=3.0)  # every answer comes too late
    res = resources(standin, warehouse_dsn, timeout_seconds=0.3, max_attempts=2)
    started = time.monotonic()
    failed = dg.materialize(
        [ASSETS["candles_1d"]],
        instance=instance,
        resources=res,
        partition_key=str(multi_key(key, "2025-01-01")),
        raise_on_error=False,
    )
    elapsed = time.monotonic() - started
    message = failure_message(failed)
    assert not failed.success and "ISS is unavailable" in message and "ReadTimeout" in message
    # (1 + step retries) x max_attempts x time-out, plus backoffs: seconds, not forever.
    assert elapsed < 15
    assert standin.candle_requests() == (1 + run_retries()) * 2


def test_a_board_iss_has_no_candles_for_ends_with_zero_rows_and_others_still_load(
    instance: dg.DagsterInstance, standin: ISSStandIn, sqlite_dsn: str
) -> None:
    """The old updater hung forever on one unsupported board; here that board's run simply ends."""
    warehouse_dsn = sqlite_dsn
    standin.set_now(NOW)
    key = register(instance, standin, warehouse_dsn)
    with engine_for(warehouse_dsn) as engine:
        info = warehouse.get_security(engine, key)
        assert info is not None
        odd = SecurityInfo(**{**info.__dict__, "board": "NOTABOARD"})
        warehouse.upsert_security(engine, odd)
    instance.add_dynamic_partitions("securities", [odd.key.partition_key])
    res = resources(standin, warehouse_dsn)
    started = time.monotonic()
    odd_run = dg.materialize(
        [ASSETS["candles_1m"]],
        instance=instance,
        resources=res,
        tags=range_tags(odd.key, "2025-06-02", "2025-06-06"),
    )
    assert odd_run.success and time.monotonic() - started < 10
    assert {m.metadata["rows"].value for m in odd_run.asset_materializations_for_node("candles_1m")} == {0}  # type: ignore[union-attr]
    # The run's one query: its first page and up to three sent beside it (ISS concurrency 4), all
    # empty; nothing more, and no loop. A request whose thread starts after the first empty page
    # came back is dropped unsent (on a busy box it happens), so 1 to 4.
    assert res["iss"].max_concurrency == 4  # type: ignore[attr-defined]
    assert 1 <= standin.candle_requests(board="NOTABOARD") <= 4
    assert dg.materialize(
        [ASSETS["candles_1m"]],
        instance=instance,
        resources=res,
        partition_key=str(multi_key(key, "2025-06-02")),
    ).success
    window = day_window(dt.date(2025, 6, 2))
    assert_exact(stored(warehouse_dsn, key, "1m", *window), source(standin, key, 1, *window))
