"""Console scripts are found beside the interpreter, so commands work without an activated venv."""

import sys
from pathlib import Path

import pytest

from candlestick_pipeline.lib.scripts import console_script


def test_the_environments_own_script_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert console_script("dagster") == [str(Path(sys.executable).with_name("dagster"))]
    assert console_script("datasette") == [str(Path(sys.executable).with_name("datasette"))]


def test_without_a_script_the_module_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert console_script("no_such_tool_here") == [sys.executable, "-m", "no_such_tool_here"]
