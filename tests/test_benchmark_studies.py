"""The quality benchmarks that were script modes are studies: each runs at smoke scale through
the harness and reports (scripts/ keeps only speed micro-benchmarks)."""

from __future__ import annotations

from pathlib import Path

import pytest

STUDIES = Path(__file__).parent.parent / "studies"


@pytest.mark.parametrize(
    "name",
    ["memorisation", "dsi_retrieval", "baselines", pytest.param("pretrained", marks=pytest.mark.heavy)],
)
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


@pytest.mark.heavy
def test_text_to_image_study_runs_at_smoke_and_reports_captions(tmp_path):
    """The text-query study: every text retriever on coco-mosaic captions under the text protocol,
    two seeds, and a report whose query grid prints each caption above its row."""
    from bench.config import load_study
    from bench.report import write_report
    from bench.study import RunOptions, run

    study = load_study(
        STUDIES / "text_to_image.yaml",
        scale="smoke",
        overrides=["mlflow.log_index=false", f"dataset.root={tmp_path / 'data'}"],
    )
    assert study.dataset.protocol == "text" and study.repeats == 2
    assert {m.retriever for m in study.methods.values()} == {
        "dsi-text",
        "text-dual-encoder",
        "text-embedding-knn",
    }
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run(study, RunOptions(tracking_uri=uri, storage=f"sqlite:///{tmp_path / 'optuna.db'}"))
    assert outcome.complete == study.n_trials == 4
    report = write_report("text_to_image", tracking_uri=uri, out_dir=tmp_path / "reports")
    text = report.read_text()
    n_indexed = 60  # n_total 120, split_ratio 0.5
    assert f"R@1 (chance {1 / n_indexed:.4f})" in text and "nDCG@10 (chance" in text
    assert "text: queries are captions of indexed images" in text
    assert text.count("corpus captions + pretrained") >= 4
    assert "(image captioned in training)" in text and "Caption → top-5 for the chosen trial" in text
    assert (tmp_path / "reports" / "text_to_image" / "query_grid.png").is_file()
    assert '--text "CAPTION"' in text
