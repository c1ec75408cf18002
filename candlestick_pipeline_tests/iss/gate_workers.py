"""Run as ``python -m candlestick_pipeline_tests.iss.gate_workers BASE_URL WORKERS [BUDGET [turns]]``.

A fresh process that does what ``candlestick load`` does with its workers: optionally shares a
budget of ISS requests in flight, forks WORKERS processes, and has each fetch five days of SBER at
once through a client that may itself send 4 requests at once. Prints the candles each fetched, as
JSON. With ``turns``, each worker instead starts "a run" in its turn (``start_up_in_turn``): 0.2 s
of start-up, then its requests; the first worker fails during its start-up, before any request.
Prints each worker's (turn taken, first request sent, done, failed) as JSON. A process of its own,
because forking the test process (with the threads earlier tests left behind) can deadlock the
children.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import sys
import time

from candlestick_pipeline.defs.iss import gate
from candlestick_pipeline.defs.iss.client import ISSClient

FIRST_DAY = dt.date(2025, 6, 2)


def _fetch_five_days(base_url: str) -> int:
    with ISSClient(base_url, max_concurrency=4) as client:
        sber = client.get_security("SBER")
        days = [FIRST_DAY + dt.timedelta(days=i) for i in range(5)]
        fetches = client.get_candles_many([(sber, 1, day, day) for day in days])
        return sum(fetch.frame.height for fetch in fetches)


def _start_up_in_turn(base_url: str, worker: int) -> tuple[float, float | None, float, bool]:
    first_request: float | None = None
    try:
        with gate.start_up_in_turn():
            taken = time.monotonic()
            time.sleep(0.2)
            if worker == 0:
                raise RuntimeError("this run fails while it starts up")
            first_request = time.monotonic()
            _fetch_five_days(base_url)
    except RuntimeError:
        return taken, None, time.monotonic(), True
    return taken, first_request, time.monotonic(), False


def main(argv: list[str]) -> None:
    base_url, workers = argv[0], int(argv[1])
    if len(argv) > 2:
        gate.share_between_processes(int(argv[2]))
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        if argv[3:] == ["turns"]:
            starts = pool.starmap(_start_up_in_turn, [(base_url, worker) for worker in range(workers)])
            print(json.dumps(starts))
        else:
            print(json.dumps(pool.map(_fetch_five_days, [base_url] * workers)))


if __name__ == "__main__":
    main(sys.argv[1:])
