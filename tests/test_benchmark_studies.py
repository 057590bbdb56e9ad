"""The quality benchmarks that were script modes are studies: each runs at smoke scale through
the harness and reports (scripts/ keeps only speed micro-benchmarks)."""

from __future__ import annotations

from pathlib import Path

import pytest

STUDIES = Path(__file__).parent.parent / "studies"


@pytest.mark.parametrize("name", ["memorisation", "dsi_retrieval", "baselines", "pretrained"])
def test_benchmark_study_runs_at_smoke_and_reports(name, tmp_path):
    from bench.config import load_study
    from bench.report import write_report
    from bench.study import RunOptions, run

    study = load_study(STUDIES / f"{name}.yaml", scale="smoke", overrides=["mlflow.log_index=false"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run(study, RunOptions(tracking_uri=uri, storage=f"sqlite:///{tmp_path / 'optuna.db'}"))
    assert outcome.complete == study.n_trials
    text = write_report(name, tracking_uri=uri, out_dir=tmp_path / "reports").read_text()
    assert "## Results" in text and f"Chosen trial (best {study.metric} on the" in text
