"""First-use errors of the CLI: each is one `error:` line naming the file or field, exit 2,
before any trial starts (no MLflow or Optuna store is touched)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app


def bench(*args: str, cwd=None):
    res = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    return res.exit_code, res.output


def one_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize("kind", ["directory", "binary", "png"])
def test_study_file_that_is_a_directory_or_binary(tmp_path, kind):
    if kind == "directory":
        path = tmp_path / "studies"
        path.mkdir()
    elif kind == "binary":
        path = tmp_path / "study.yaml"
        path.write_bytes(b"name: x\x00\x01\x02")
    else:
        path = tmp_path / "photo.yaml"
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    code, out = bench("run", str(path), "--check")
    assert code == 2, out
    assert str(path) in one_error(out)


def _write(tmp_path, **data):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "retriever": "pixels-knn", "scale": "smoke", **data}))
    return path


def test_check_prints_the_values_set_on_the_command_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "name": "p", "retriever": "dsi-vit", "scale": "small", "space": {"patch_size": [8, 16, 32]},
        "scales": {"smoke": {"fixed": {"index_epochs": 60}, "space": {"patch_size": [4, 8, 16]}}},
    }))
    code, out = bench("run", str(path), "--scale", "smoke", "--set", "space.patch_size=[16]",
                      "--set", "fixed.index_epochs=5", "--check")
    assert code == 0, out
    assert "index_epochs: 5" in out and "index_epochs: 60" not in out
    assert "1 trials" in out
