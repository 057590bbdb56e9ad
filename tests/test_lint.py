"""`ruff check` passes over the code (pyproject.toml's [tool.ruff] settings: line length 110, E501
enforced); `make test` runs it, so CI enforces the lint."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["vitdsi", "bench", "tests", "scripts"]


def ruff_command() -> list[str] | None:
    """ruff as a module of this interpreter, else the `ruff` beside it (or on PATH); None if absent."""
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    beside = Path(sys.executable).parent / "ruff"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ruff")
    return [found] if found else None


def test_ruff_check_passes():
    cmd = ruff_command()
    if cmd is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    done = subprocess.run([*cmd, "check", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"ruff check failed:\n{done.stdout}\n{done.stderr}"
