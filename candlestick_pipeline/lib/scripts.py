"""The console scripts of this environment, found also when its ``bin`` folder is not on PATH."""

import shutil
import sys
from pathlib import Path


def console_script(name: str) -> list[str]:
    """The argv that runs ``name`` of this environment: the script beside this interpreter (a venv run
    without activating it), else the one on PATH, else ``python -m name``."""
    script = Path(sys.executable).with_name(name)
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", name]
