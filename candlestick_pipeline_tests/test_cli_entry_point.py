"""The ``candlestick`` console script exits without Python's teardown, losing no output or exit code."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from candlestick_pipeline_tests.conftest import REPO_ROOT

BIN = Path(sys.executable).parent


def _candlestick(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"DAGSTER_HOME": str(home), "CANDLESTICK_DATA_DIR": str(home / "data"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(BIN / "candlestick"), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    shutil.copy(REPO_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    return tmp_path


def test_output_through_a_pipe_and_exit_code_zero(home: Path) -> None:
    result = _candlestick(home, "load", "--help")
    assert result.returncode == 0
    assert "Load the candles of KEY" in result.stdout  # block-buffered in a pipe: flushed before the exit


def test_user_errors_keep_their_message_and_exit_code(home: Path) -> None:
    result = _candlestick(
        home, "load", "NOSUCH.TQBR", "-t", "1m", "--from", "2025-01-01", "--till", "2025-01-02"
    )
    assert result.returncode == 2
    assert "NOSUCH.TQBR is not registered" in result.stderr


def test_usage_errors_keep_their_exit_code(home: Path) -> None:
    result = _candlestick(home, "no-such-command")
    assert result.returncode == 2
    assert "No such command" in result.stderr


@pytest.mark.parametrize(
    ("code", "status", "stderr"), [(3, 3, ""), (None, 0, ""), ("gave up", 1, "gave up\n")]
)
def test_exit_runs_atexit_callbacks_and_flushes(code: object, status: int, stderr: str) -> None:
    program = (
        "import atexit, sys, candlestick_pipeline.cli as cli\n"
        "atexit.register(lambda: sys.stdout.write('atexit ran\\n'))\n"
        "sys.stdout.write('buffered ')\n"
        f"cli._exit_without_teardown({code!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (status, "buffered atexit ran\n", stderr)


def test_under_a_profiler_the_usual_exit_lets_it_write_its_results(tmp_path: Path) -> None:
    stats = tmp_path / "profile.out"
    program = "import candlestick_pipeline.cli as cli\ncli._exit_without_teardown(4)\n"
    script = tmp_path / "exit.py"
    script.write_text(program)
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(stats), str(script)], capture_output=True, check=True
    )
    assert stats.stat().st_size > 0  # (cProfile itself swallows the exit code: 0)


def _printed_by(probe: str) -> list[str]:
    """The words a fresh interpreter prints running ``probe``."""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.split()


def test_the_cli_is_imported_with_the_collector_off_and_left_on() -> None:
    """The console script imports the CLI without collecting, freezes what the import made (so
    later full collections skip it), and leaves the collector on for the command itself."""
    probe = (
        "import gc, sys\n"
        "seen = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and seen.append(info))\n"
        "from candlestick_pipeline.console import import_cli\n"
        "seen.clear()\n"
        "run = import_cli()\n"
        "assert 'dagster' in sys.modules and run.__module__ == 'candlestick_pipeline.cli'\n"
        "print(len(seen), gc.isenabled(), gc.get_freeze_count())\n"
    )
    collections, enabled, frozen = _printed_by(probe)
    assert collections == "0" and enabled == "True" and int(frozen) > 100_000


def test_the_workers_inherit_the_job_modules_and_httpcore_imported() -> None:
    """``candlestick load`` imports the job's modules and httpcore before it forks its workers, so
    that no worker imports them again on its way to its first run."""
    probe = (
        "import sys\n"
        "import candlestick_pipeline.cli as cli\n"
        "wanted = ('candlestick_pipeline.definitions', 'httpcore')\n"
        "assert not any(name in sys.modules for name in wanted), 'imported already'\n"
        "class Pool:\n"
        "    def __init__(self, **kwargs):\n"
        "        print(*(name in sys.modules for name in wanted))\n"
        "    def __enter__(self):\n"
        "        return self\n"
        "    def __exit__(self, *exc):\n"
        "        return None\n"
        "    def map(self, *args):\n"
        "        return [True]\n"
        "cli.ProcessPoolExecutor = Pool\n"
        "cli.ensure_iss_pool = lambda instance: None\n"
        "work = [(cli.SecurityKey.parse(key), ['2025-01-06']) for key in ('SBER.TQBR', 'GAZP.TQBR')]\n"
        "assert cli._execute_work(None, 'candles_1m', work, 2, 'info') == 0\n"
    )
    assert _printed_by(probe) == ["True", "True"]
