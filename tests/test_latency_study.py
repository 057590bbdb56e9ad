"""The shipped latency study (studies/latency_scaling.yaml) at smoke scale: every trial
records its quality (IA@1, MAP@10) beside its latencies, the k and beam both were measured with,
a DSI's id length, the model the grow rule gave it and the per-image add time; the report's
training table, Pareto fronts and measurement table agree with what MLflow stored."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

STUDIES = Path(__file__).parent.parent / "studies"


def _table(text: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """The pipe table whose header starts with `first_header`: its header cells and rows."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return header, rows


@pytest.mark.heavy
def test_latency_scaling_runs_at_smoke_and_records_quality_beside_latency(tmp_path):
    from mlflow import MlflowClient

    from bench.config import load_study
    from bench.kinds.latency.measure import pareto_front
    from bench.report import write_report
    from bench.study import RunOptions, run

    study = load_study(STUDIES / "latency_scaling.yaml", scale="smoke", overrides=["mlflow.log_index=false"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run(study, RunOptions(tracking_uri=uri, storage=f"sqlite:///{tmp_path / 'optuna.db'}"))
    assert outcome.complete == study.n_trials == 6
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("latency_scaling").experiment_id], "tags.`vitdsi.kind` = 'trial'"
    )
    stored = {(r.data.tags["method"], int(r.data.metrics["n_indexed"])): r.data for r in runs}
    assert sorted(stored) == [
        (m, n) for m in ("dsi-clustered", "dual-encoder-ivfpq", "embedding-pixels-flat") for n in (64, 256)
    ]
    for (method, n), data in stored.items():
        m, p = data.metrics, data.params
        assert {"IA_at_1", "MAP_at_10", "P_at_10"} <= set(m) and m["MAP_at_10_n"] == 64  # the timed queries
        assert m["search_k"] == m["latency_k"] == 10  # quality and time at one k
        assert 0 < m["latency_b1_p50_ms"] <= m["latency_b1_p95_ms"] and m["index_bytes"] > 0
        assert m["add_ms_per_image"] > 0 and m["add_images"] == 16  # every method here can add
        if method == "dsi-clustered":
            # clustered ids: ceil(log10 N)
            assert m["search_beam"] == 10 and m["id_length"] == (2 if n == 64 else 3)
            assert p["mode"] == "multitask" and float(p["target_ia"]) == 0.95
            assert 1 <= m["index_epochs_run"] <= int(p["index_epochs"]) and 0 <= m["index_ia1"] <= 1
            # multitask: trained on the train queries too
            assert data.tags["supervision"] == "corpus labels + query pairs"
        else:
            assert "search_beam" not in m and "id_length" not in m and "index_ia1" not in m
        if method != "embedding-pixels-flat":  # the grow rule: dim 96 from N = 256 up, for both
            assert int(p["dim"]) == (64 if n == 64 else 96)
    assert stored[("dual-encoder-ivfpq", 256)].params["embed_dim"] == "None"  # the model width
    assert stored[("dual-encoder-ivfpq", 256)].params["index_type"] == "ivfpq"

    text = write_report("latency_scaling", tracking_uri=uri, out_dir=tmp_path / "reports").read_text()

    # trained to target: each DSI row's status follows its stored IA@1 and target
    header, rows = _table(text, "DSI | N | model")
    assert len(rows) == 2
    for row in rows:
        m = stored[("dsi-clustered", int(row[1].replace(",", "")))].metrics
        assert float(row[header.index("IA@1")]) == round(m["IA_at_1"], 3)
        reached = m["IA_at_1"] >= 0.95
        assert (row[-1] == "reached") == reached
        if not reached:
            assert row[-1] == ("lost in retrieval training" if m["index_ia1"] >= 0.95 else "missed")
    assert "**dsi-clustered** " in text and "IA@1 ≥ 0.95" in text

    # latency against id length: L 2 at N = 64, 3 at N = 256, fitted
    _, rows = _table(text, "DSI | N: L")
    assert rows[0][:2] == ["dsi-clustered", "64: 2, 256: 3"] and rows[0][2] != "n/a (one L)"

    # the Pareto fronts per N are the undominated methods of the stored numbers
    header, rows = _table(text, "N")
    assert header[1:] == [
        "front: batch 1 vs IA@1",
        "front: batch 1 vs MAP@10",
        "front: batch 64 vs IA@1",
        "front: batch 64 vs MAP@10",
    ]
    dsi_on_front = []
    for row in rows:
        n = int(row[0].replace(",", ""))
        methods = sorted(mt for mt, nn in stored if nn == n)
        for cell, (key, metric) in zip(
            row[1:],
            [(k, q) for k in ("latency_b1_p50_ms", "latency_batch_p50_ms") for q in ("IA_at_1", "MAP_at_10")],
            strict=True,
        ):
            front = pareto_front(
                [stored[(mt, n)].metrics[key] for mt in methods],
                [stored[(mt, n)].metrics[metric] for mt in methods],
            )
            assert cell.split(", ") == [mt for mt, f in zip(methods, front, strict=True) if f]
            if front[methods.index("dsi-clustered")]:
                dsi_on_front.append(n)
    if dsi_on_front:
        assert f"A DSI is on the quality-latency Pareto front at N = {min(dsi_on_front):,}" in text
    else:
        assert "No DSI is on the quality-latency Pareto front at any measured N (64–256)" in text
    for n in (64, 256):
        with Image.open(tmp_path / "reports" / "latency_scaling" / f"pareto_N{n}.png") as im:
            assert im.format == "PNG" and im.size[0] > 300

    # every measurement row: the stored numbers, with the k and beam they were measured at
    header, rows = _table(text, "method | N | L | k | beam")
    assert len(rows) == 6 and header[5:7] == ["IA@1", "MAP@10"]
    for row in rows:
        m = stored[(row[0], int(row[1]))].metrics
        assert row[3] == "10" and row[4] == ("10" if row[0] == "dsi-clustered" else "n/a")
        assert float(row[header.index("MAP@10")]) == round(m["MAP_at_10"], 4)
        assert float(row[header.index("b1 p50")]) == round(m["latency_b1_p50_ms"], 3)
        assert float(row[header.index("add ms/image")]) == round(m["add_ms_per_image"], 3)
    assert not re.search(r"\bnan\b", text)
    assert np.isfinite([d.metrics["latency_batch_p50_ms"] for d in stored.values()]).all()
