"""Every benchmark script runs at a tiny size, so none of them rots (no timings are asserted).

The four scripts start at once as subprocesses (each also starts its own processes: the ISS
stand-in, ``candlestick load``, ``dagster-webserver``); each test then waits for its script and
checks that it exited 0 and printed its figures. Full-size figures live in docs/benchmarks.md.

B1/B2 also run the way issue 5 is checked, against an ISS stand-in that somebody else started
(``--iss-url``): here ours, in a process of its own that the script does not control.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from candlestick_pipeline_tests.conftest import ADMIN_DSN, REPO_ROOT, stop_process

BENCHMARKS = REPO_ROOT / "benchmarks"
TIMEOUT_SECONDS = 300
EXTERNAL_NOW = "2025-06-10 15:00:00"
EXTERNAL_LATENCY_MS = "5"

SMOKE_COMMANDS: dict[str, list[str]] = {
    "bench_backfill.py": [
        "--securities", "2", "--days", "2", "--months", "1", "--concurrency", "4",
        "--layouts", "one-process", "--latency-ms", "5",
    ],
    "bench_memory.py": ["--days", "2", "--latency-ms", "0"],
    "bench_dagster_scale.py": ["--securities", "3", "--years", "0.03"],
    "bench_warehouse_write.py": ["--rows", "20000", "--securities", "2"],  # loader: 4+4+2 days
}  # fmt: skip

# B1/B2 against an ISS stand-in that somebody else runs (its URL is added when it has started).
EXTERNAL_ISS_COMMAND = [
    "--securities", "2", "--days", "2", "--months", "1", "--concurrency", "4", "--layouts", "one-process",
    "--storage", "sqlite", "--latency-ms", EXTERNAL_LATENCY_MS, "--now", EXTERNAL_NOW,
    "--keys", "GAZP.TQBR", "CNYRUB_TOM.CETS",
]  # fmt: skip

EXPECTED_OUTPUT: dict[str, list[str]] = {
    "bench_backfill.py": [
        "Dagster's floor (sqlite storage, best of 3)",
        "Dagster's floor (postgres storage, best of 3)",
        "B1 1m 2sec x 2d one-process",
        "B1 1h 1sec x 1mo",
        "s the pipeline's own start and end",
        "B2 1m",
        "B2/B1 wall",
    ],
    "bench_memory.py": ["2 days", "peak RSS MB"],
    "bench_dagster_scale.py": ["partition_states", "sensor tick: freshness_sensor", "PartitionHealthQuery"],
    "bench_warehouse_write.py": ["candles/s", "postgresql", "sqlite", "loader"],
}
EXTERNAL_ISS_OUTPUT = [
    "B1 1m 2sec x 2d one-process/sqlite C=4",
    "B1 1h 1sec x 1mo one-process/sqlite C=4",
    "B2/B1 wall",
]


@dataclass
class Started:
    process: subprocess.Popen[str]
    output: Path

    def finish(self) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout=TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = -9
        return code, self.output.read_text(errors="replace")


@pytest.fixture(scope="module")
def started() -> Iterator[dict[str, Started]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CANDLESTICK_", "DAGSTER_", "ISS_"))}
    env["PYTHONWARNINGS"] = "ignore"
    with tempfile.TemporaryDirectory(prefix="cp_bench_smoke_") as folder:
        runs: dict[str, Started] = {}
        for script, arguments in SMOKE_COMMANDS.items():
            output = Path(folder) / f"{script}.out"
            with output.open("w") as sink:
                process = subprocess.Popen(
                    [sys.executable, str(BENCHMARKS / script), *arguments, "--pg-admin-dsn", ADMIN_DSN],
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            runs[script] = Started(process, output)
        try:
            yield runs
        finally:
            for run in runs.values():
                if run.process.poll() is None:
                    run.process.kill()
                    run.process.wait()


@pytest.mark.parametrize("script", list(SMOKE_COMMANDS))
def test_benchmark_runs_at_a_tiny_size(started: dict[str, Started], script: str) -> None:
    code, output = started[script].finish()
    assert code == 0, f"{script} exited {code}:\n{output[-4000:]}"
    for expected in EXPECTED_OUTPUT[script]:
        assert expected in output, f"{script} printed no {expected!r}:\n{output[-4000:]}"


@pytest.fixture
def external_iss(tmp_path: Path) -> Iterator[str]:
    """Our stand-in started as somebody else's would be: its own process, its own clock and latency."""
    command = [sys.executable, "-m", "candlestick_pipeline.standin", "--port", "0"]
    command += ["--latency-ms", EXTERNAL_LATENCY_MS, "--now", EXTERNAL_NOW]
    errors = tmp_path / "standin.err"
    with (
        errors.open("w") as sink,
        subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=sink, text=True) as process,
    ):
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().strip()  # it prints its URL once it listens
            assert base_url.startswith("http://127.0.0.1:"), (
                f"the stand-in printed {base_url!r}: {errors.read_text()}"
            )
            yield base_url
        finally:
            stop_process(process, timeout=30)


def test_backfill_benchmark_runs_against_an_iss_it_did_not_start(external_iss: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CANDLESTICK_", "DAGSTER_", "ISS_"))}
    env["PYTHONWARNINGS"] = "ignore"
    command = [sys.executable, str(BENCHMARKS / "bench_backfill.py"), *EXTERNAL_ISS_COMMAND]
    command += ["--iss-url", external_iss, "--pg-admin-dsn", ADMIN_DSN]
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"exited {done.returncode}:\n{output[-4000:]}"
    for expected in EXTERNAL_ISS_OUTPUT:
        assert expected in output, f"printed no {expected!r}:\n{output[-4000:]}"
    figures = re.findall(r"^(B[12] .+?)\s+runs=\s*\d+\s+pages=(\d+)\s+candles=(\d+)", output, re.M)
    assert len(figures) == 4, f"expected B1 and B2 for 1m and 1h:\n{output[-4000:]}"
    for label, pages, candles in figures:
        assert int(pages) > 0 and int(candles) > 0, (
            f"{label}: pages={pages} candles={candles}\n{output[-4000:]}"
        )
    # Every page the script reports (B1's from its runs' metadata, B2's from its own loop) was asked
    # of the ISS it was given, besides its warm-up: none came from a stand-in of its own.
    served = httpx.get(f"{external_iss}/_standin/stats", timeout=10).json()["candle_requests"]
    reported = sum(int(pages) for _, pages, _ in figures)
    assert served >= reported, (
        f"the external stand-in served {served} candle pages, the script reports {reported}"
    )
