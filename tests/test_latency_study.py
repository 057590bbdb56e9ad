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


def _cell(value: float, digits: int) -> str:
    """A report cell's number, without the IA@1 target mark a DSI row may carry."""
    return f"{value:.{digits}f}"


@pytest.mark.heavy
def test_scale_runs_at_smoke_and_reports_quality_memory_cost_and_the_atomic_head(tmp_path):
    from mlflow import MlflowClient

    from bench.config import load_study
    from bench.report import write_report
    from bench.study import RunOptions, run

    study = load_study(STUDIES / "scale.yaml", scale="smoke")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run(study, RunOptions(tracking_uri=uri, storage=f"sqlite:///{tmp_path / 'optuna.db'}"))
    assert outcome.complete == study.n_trials == 8
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("scale").experiment_id], "tags.`vitdsi.kind` = 'trial'"
    )
    stored = {(r.data.tags["method"], int(r.data.metrics["n_indexed"])): r.data.metrics for r in runs}
    for (method, _), m in stored.items():
        # the instance protocol: 32 test views at both N
        assert m["R_at_1_n"] == 32
        # add is timed with the held-out source images, by every method whose index can grow (rq ids cannot)
        assert m.get("add_images") == (None if method == "dsi-frozen-rq" else 8)
        assert m["index_bytes_per_image"] == pytest.approx(m["index_bytes"] / m["n_indexed"])
        assert ("atomic_head_b1_ms" in m) == (method == "dsi-frozen-atomic")
        assert ("model_bytes" in m) == (method != "embedding-pixels-flat")
    text = write_report("scale", tracking_uri=uri, out_dir=tmp_path / "reports").read_text()
    assert "32 timed and scored test views and as many validation views" in text  # the set-up
    assert "32 train views, the same at every N; 8 held-out source images" in text

    header, rows = _table(text, "method | N | IA@1")
    assert len(rows) == 8
    for row in rows:
        m = stored[(row[0], int(row[1].replace(",", "")))]
        assert row[header.index("R@1")].startswith(_cell(m["R_at_1"], 4))
        assert row[header.index("MRR@10")].startswith(_cell(m["MRR_at_10"], 4))

    header, rows = _table(text, "DSI | N | head b1 ms")
    assert len(rows) == 2 and "is an O(N) scan" in text
    for row in rows:
        m = stored[("dsi-frozen-atomic", int(row[1].replace(",", "")))]
        assert row[0].startswith("dsi-frozen-atomic") and row[2] == _cell(m["atomic_head_b1_ms"], 4)
    assert "- **dsi-frozen-atomic**: head time against N, log-log slope " in text

    header, rows = _table(text, "method | N | model MiB")
    for row in rows:
        method = row[0].split(" (")[0]
        m = stored[(method, int(row[1].replace(",", "")))]
        assert row[header.index("index B/image")] == _cell(m["index_bytes_per_image"], 1)
        expected = m.get("model_bytes_per_image")
        assert row[header.index("model B/image")] == ("n/a" if expected is None else _cell(expected, 1))
        peak = m.get("search_peak_rss_bytes")
        assert row[header.index("peak RSS MiB")] == ("n/a" if peak is None else _cell(peak / 2**20, 1))

    header, rows = _table(text, "method | N | cold build s")
    for row in rows:
        m = stored[(row[0].split(" (")[0], int(row[1].replace(",", "")))]
        # every method of the study extracts frozen features (cached) or pixels (measured)
        assert row[header.index("cold build s")] == _cell(m["cold_build_s"], 1)
        assert row[header.index("wall build s")] == _cell(m["index_build_s"], 1)
        assert row[header.index("extraction s")] == _cell(m["extraction_s"], 1)
        cold = m["index_build_s"] - m["extraction_spent_s"] + m["extraction_s"]
        assert m["cold_build_s"] == pytest.approx(cold)
        flops = f"{m['train_flops']:.3g}" if "train_flops" in m else "n/a"
        assert row[header.index("train FLOPs")] == flops
    # methods on one encoder share its cached features: a later trial reads what an earlier one built
    assert any(m["extraction_spent_s"] < m["extraction_s"] for m in stored.values())
    for name in ("quality_R_at_1.png", "cost_cold_build_s.png"):
        with Image.open(tmp_path / "reports" / "scale" / name) as im:
            assert im.format == "PNG"
    # a DSI row says when it missed its IA@1 target; no other row is marked
    header, rows = _table(text, "method | N | IA@1")
    for row in rows:
        m = stored[(row[0], int(row[1].replace(",", "")))]
        missed = row[0].startswith("dsi") and m["IA_at_1"] < 0.95
        assert ("IA@1 target)" in row[header.index("R@1")]) == missed
    assert not re.search(r"\bnan\b", text)


@pytest.mark.parametrize("scale", ["smoke", "small", "paper"])
def test_scale_class_shares_the_methods_and_measurements_of_scale(scale):
    from bench.config import load_study

    instance = load_study(STUDIES / "scale.yaml", scale=scale)
    by_class = load_study(STUDIES / "scale_class.yaml", scale=scale)
    assert instance.methods == by_class.methods and instance.latency == by_class.latency
    assert instance.dataset.protocol == "instance" and by_class.dataset.protocol == "class"
    ns = instance.space["dataset.n_total"].choices
    assert by_class.space["dataset.n_total"].choices == (ns if scale == "smoke" else ns[:2])
    if scale != "smoke":  # largest first: grid order is run order, so the longest trials start first
        assert list(ns) == sorted(ns, reverse=True)
