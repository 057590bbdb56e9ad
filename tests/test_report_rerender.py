"""A report is a function of the stored study: rendered twice from one MLflow store (a
multi-method study with seeds, so the seed-level bootstrap runs), it is byte-identical but for
the line that says when it was written, and so are its figures' names."""

from __future__ import annotations

from conftest import run_study_dict

STUDY = {
    "name": "rerender",
    "scale": "smoke",
    "repeats": 2,
    "methods": {
        "knn": {"retriever": "pixels-knn"},
        "raw": {"retriever": "pixels-knn", "params": {"center": False}},
        "rand": {"retriever": "random"},
    },
    "space": {"method": ["knn", "raw", "rand"]},
    "objective": {"metric": "MAP@10"},
    "report": {"equivalence_margin": 0.05},
    "mlflow": {"log_index": False},
}


def _without_timestamp(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("| report written |"))


def test_a_report_rerendered_from_its_store_is_identical(tmp_path):
    from bench.report import write_report

    outcome, uri = run_study_dict(tmp_path, STUDY)
    assert outcome.complete == 3
    first = write_report("rerender", tracking_uri=uri, out_dir=tmp_path / "a")
    second = write_report("rerender", tracking_uri=uri, out_dir=tmp_path / "b")
    text = first.read_text()
    assert "### " not in text and "## Paired comparisons" in text and "| report written |" in text
    assert _without_timestamp(text) == _without_timestamp(second.read_text())
    figures = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert figures and figures == sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png")
    )
