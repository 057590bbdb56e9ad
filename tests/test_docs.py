"""The project carries its own design notes, and nothing points at files outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tracked(*suffixes: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.split() if f.endswith(suffixes)]


def test_design_notes_exist_and_cover_the_design():
    text = (ROOT / "docs" / "design.md").read_text()
    for section in ("Architecture", "retriever interface", "Data sources and splits", "Id schemes",
                    "DSI model", "Metrics and chance levels", "Optuna and MLflow", "Latency", "Reports",
                    "Scale presets", "Fair comparison"):
        assert re.search(rf"^## .*{section}", text, re.M | re.I), section


def test_no_reference_to_a_missing_design_file_or_outside_the_repository():
    bad = []
    for path in tracked(".py", ".md", ".yaml", "Makefile"):
        rel = str(path.relative_to(ROOT))
        if not path.exists() or path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if "DESIGN.md" in line or "../shared" in line:
                bad.append(f"{rel}:{n}: {line.strip()}")
    assert not bad, "point at docs/design.md instead:\n" + "\n".join(bad)
