"""Convergence and compute accounting: FLOPs counted on real steps, validation checkpoints, the
plateau rule with the best weights restored, and what a study logs and reports of them."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import run_study_dict, smoke_retriever

from vitdsi.errors import VitDSIError
from vitdsi.training.flops import FlopMeter
from vitdsi.training.monitor import MonitorConfig, TrainingMonitor, ValidationSet


def _mlp_step(model, batch: int, d_in: int) -> None:
    x = torch.randn(batch, d_in, requires_grad=True)
    model(x).sum().backward()


def test_flops_of_a_two_layer_mlp_equal_the_analytic_count():
    d_in, hidden, d_out = 12, 20, 7
    model = torch.nn.Sequential(
        torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d_out)
    )
    forward = lambda b: 2 * b * (d_in * hidden + hidden * d_out)  # noqa: E731  (2 * B * in * out per Linear)
    meter = FlopMeter()
    with meter.step(("train", 8), 8):
        _mlp_step(model, 8, d_in)
    assert meter.flops == forward(8) * 3  # backward = 2 x forward (input and weight gradients)
    with meter.step(("train", 8), 8):  # the same key: charged by example, not counted again
        _mlp_step(model, 8, d_in)
    with meter.step(("train", 5), 5):  # a smaller last batch is a key of its own, measured
        _mlp_step(model, 5, d_in)
    assert meter.flops == 3 * (2 * forward(8) + forward(5))
    assert meter.examples == 21
    with meter.once():  # work done once (a frozen encoder's features): forward only, counted whole
        with torch.no_grad():
            model(torch.randn(4, d_in))
    assert meter.flops == 3 * (2 * forward(8) + forward(5)) + forward(4)


class _Scripted:
    """A validation set whose scores follow a script (stands in for ranking real queries)."""

    metric = "MAP@10"

    def __init__(self, values: list[float]) -> None:
        self.values = iter(values)

    def score(self, rank) -> float:
        return next(self.values)


def test_monitor_stops_on_a_plateau_and_restores_the_best_weights():
    model = torch.nn.Linear(2, 1)
    script = [0.1, 0.5, 0.4, 0.45, 0.5]  # best at the 2nd evaluation, then 3 without improvement
    monitor = TrainingMonitor(
        MonitorConfig(patience=3, val_every=1), _Scripted(script), lambda q, k: None, model
    )
    monitor.start_phase("classify", 50, patience=True)
    stopped_at, best_weight = None, None
    for epoch in range(1, 51):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        if epoch == 2:
            best_weight = model.weight.clone()
        if monitor.end_epoch():
            stopped_at = epoch
            break
    monitor.end_phase()
    assert stopped_at == 5  # equal to the best is no improvement
    assert torch.equal(model.weight, best_weight)
    record = monitor.record()
    assert record["converged"] is True and record["epochs_used"] == 5 and record["epoch_cap"] == 50
    assert [c["value"] for c in record["checkpoints"]] == script


def test_monitor_checkpoints_are_geometric_outside_the_patience_phase():
    model = torch.nn.Linear(2, 1)
    monitor = TrainingMonitor(MonitorConfig(), _Scripted([0.0] * 20), lambda q, k: None, model)
    monitor.start_phase("index", 10, patience=False)
    for _ in range(10):
        assert not monitor.end_epoch()
    monitor.end_phase()
    monitor.index_target(0.43, 0.99)
    assert [c.epoch for c in monitor.checkpoints] == [1, 2, 4, 8, 10]  # and the phase's last epoch
    record = monitor.record()
    assert record["converged"] is False and record["ia1_reached"] == 0.43


def test_monitor_settings_are_checked_with_the_retriever_named():
    with pytest.raises(VitDSIError, match="classifier: need patience >= 0, val_every >= 1"):
        smoke_retriever("classifier", val_every=0)
    with pytest.raises(VitDSIError, match="validation metric must be a ranked"):
        ValidationSet(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), None, "IA@1")


def test_classifier_stops_before_its_cap_on_a_validation_plateau(tiny_split):
    val = ValidationSet(tiny_split.queries("val"), tiny_split.relevance("val"), "MAP@10")
    r = smoke_retriever("classifier", epochs=40, patience=2, val_every=1)
    r.index(tiny_split.corpus, train_queries=tiny_split.train, validation=val)
    record = r.training_record
    assert record["converged"] is True and record["epochs_used"] < 40 == record["epoch_cap"]
    assert len(r.history) == record["epochs_used"]
    flops = [c["flops"] for c in record["checkpoints"]]
    assert flops == sorted(flops) and flops[0] > 0 and record["train_flops"] == flops[-1]
    # without validation queries training runs to its cap, and convergence is not judged
    r.index(tiny_split.corpus, train_queries=tiny_split.train)
    assert r.training_record["epochs_used"] == 40 and r.training_record["converged"] is None


def test_dsi_short_of_its_ia_target_did_not_converge(tiny_split):
    val = ValidationSet(tiny_split.queries("val"), tiny_split.relevance("val"), "MAP@10")
    r = smoke_retriever("dsi-vit", mode="zero-shot", index_epochs=2)
    r.index(tiny_split.corpus, validation=val)
    record = r.training_record
    assert record["converged"] is False and record["ia1_reached"] < 0.99
    assert record["conditions"] == {"target_ia": False} and record["train_examples"] == 2 * len(
        tiny_split.corpus
    )
    assert record["ia1_target"] == r.target_ia
    # the report's row names the IA@1 reached and the target it missed

    from bench.convergence import training_summary
    from bench.report.compute import convergence_cell

    extra = training_summary([record], [1.0])
    cell = convergence_cell(report_row(extra, {}))
    assert cell == f"**did not converge** (IA@1 {record['ia1_reached']:.2f} < target {r.target_ia:.2f})"


def test_dsi_indexing_stops_on_an_ia_plateau_below_its_target_and_its_row_says_so(tiny_split):
    """`ia_patience`: IA@1 is read every epoch here and no reading can gain more than
    `ia_min_delta` = 1 on the first, so indexing stops at the third reading (patience 2), below
    its unreachable target; without the rule it indexes to the cap."""

    from bench.convergence import training_summary
    from bench.report.compute import convergence_cell

    val = ValidationSet(tiny_split.queries("val"), tiny_split.relevance("val"), "MAP@10")
    params = {"mode": "zero-shot", "index_epochs": 8, "eval_every": 1, "target_ia": 1.1}
    r = smoke_retriever("dsi-vit", **params, ia_patience=2, ia_min_delta=1.0, ia_floor=0.0)
    r.index(tiny_split.corpus, validation=val)
    record = r.training_record
    assert record["epochs_used"] == 3 and record["epoch_cap"] == 8
    assert record["ia1_plateau"] is True and record["converged"] is False
    assert record["ia1_reached"] == r.history[-1]["ia1"]
    cell = convergence_cell(report_row(training_summary([record], [1.0]), {}))
    assert cell.endswith("< target 1.10, indexing stopped on an IA@1 plateau)")
    several = training_summary([record, {**record, "ia1_plateau": False}], [1.0, 1.0])
    assert "1 stopped on an IA@1 plateau" in convergence_cell(report_row(several, {"repeats": "2"}))
    off = smoke_retriever("dsi-vit", **params)
    off.index(tiny_split.corpus, validation=val)
    assert off.training_record["epochs_used"] == 8 and off.training_record["ia1_plateau"] is False
    with pytest.raises(VitDSIError, match="parameter 'ia_patience' must be in 0.."):
        smoke_retriever("dsi-vit", ia_patience=-1)


def report_row(extra: dict, params: dict, ia1: float | None = None):
    """What `convergence_cell` reads of a report's trial: its logged training summary, parameters
    and test IA@1."""
    from types import SimpleNamespace

    return SimpleNamespace(extra=extra, params=params, value=lambda m: ia1 if m == "IA@1" else None)


def test_a_dsi_that_lost_part_of_its_index_after_indexing_says_so():
    """Indexing reached IA@1 0.99 on every seed, so the DSI converged, but retrieval training
    left IA@1 0.977 on the indexed images: the row says so beside 'converged'."""
    from bench.report.compute import convergence_cell

    extra = {"converged": 1.0, "target_ia_reached": 1.0, "plateau_reached": 1.0, "ia1_reached": 0.995}
    extra |= {"ia1_target": 0.99, "epochs_used": 60.0, "epoch_cap": 460.0}
    cell = convergence_cell(report_row(extra, {"repeats": "5"}, ia1=0.9766))
    assert (
        cell == "converged in 60 of 460 epochs; IA@1 fell to 0.977 after its indexing reached the 0.99 target"
    )
    assert convergence_cell(report_row(extra, {"repeats": "5"}, ia1=0.995)) == "converged in 60 of 460 epochs"
    missed = extra | {"converged": 0.0, "target_ia_reached": 0.8, "ia1_reached": 0.986}
    assert "fell" not in convergence_cell(report_row(missed, {"repeats": "5"}, ia1=0.9))  # named already


def test_a_row_of_several_seeds_counts_the_seeds_that_missed_the_ia_target():
    """A mean IA@1 of 0.987 over 5 seeds rounds to the 0.99 target, so 'mean < target' would read
    'IA@1 0.99 < target 0.99': the row counts the seeds that reached it instead."""

    from bench.report.compute import convergence_cell

    extra = {"converged": 0.0, "target_ia_reached": 0.8, "ia1_reached": 0.98672, "ia1_target": 0.99}
    extra |= {"plateau_reached": 1.0, "epochs_used": 300.0, "epoch_cap": 460.0}
    cell = convergence_cell(report_row(extra, {"repeats": "5"}))
    assert cell == "**did not converge** (IA@1 target 0.99 reached by 4 of 5 seeds, mean IA@1 0.987)"
    # two of five seeds ran the plateau phase to its cap: a mean of 49 epochs alone would hide them
    extra = {"converged": 0.0, "plateau_reached": 0.6, "epochs_used": 49.0, "epoch_cap": 460.0}
    cell = convergence_cell(report_row(extra, {"repeats": "5"}))
    assert cell == "**did not converge** (no validation plateau for 2 of 5 seeds, mean 49 of 460 epochs)"


COMPUTE_STUDY = {
    "name": "compute_check",
    "scale": "smoke",
    "methods": {
        "clf": {"retriever": "classifier", "params": {"epochs": 30, "patience": 2, "val_every": 1}},
        "dual": {"retriever": "dual-encoder", "params": {"epochs": 1}},  # one epoch: no plateau
        "knn": {"retriever": "pixels-knn"},
    },
    "space": {"method": ["clf", "dual", "knn"]},
    "objective": {"metric": "MAP@10"},
    "mlflow": {"log_index": False},
}


def test_study_logs_convergence_and_compute_and_reports_them(tmp_path):
    from mlflow import MlflowClient

    from bench.report import write_report

    outcome, uri = run_study_dict(tmp_path, COMPUTE_STUDY)
    assert outcome.complete == 3
    client = MlflowClient(uri)
    runs = {
        r.data.tags["method"]: r
        for r in client.search_runs(client.get_experiment_by_name("compute_check").experiment_id)
        if r.data.tags.get("vitdsi.kind") == "trial"
    }
    clf, dual, knn = (runs[m].data.metrics for m in ("clf", "dual", "knn"))
    assert clf["converged"] == 1.0 and clf["epochs_used"] < 30 and clf["train_flops"] > 0
    assert dual["converged"] == 0.0 and dual["epochs_used"] == 1 and dual["train_examples"] > 0
    assert "converged" not in knn and "train_flops" not in knn and knn["train_seconds"] >= 0
    curve = client.get_metric_history(runs["clf"].info.run_id, "curve/seed0/val_MAP_at_10")
    flops = client.get_metric_history(runs["clf"].info.run_id, "curve/seed0/flops")
    assert len(curve) == len(flops) == clf["epochs_used"]  # val_every 1: a checkpoint each epoch
    text = write_report("compute_check", tracking_uri=uri, out_dir=tmp_path / "r").read_text()
    assert "![quality against FLOPs](compute_check/quality_vs_flops.png)" in text
    assert (tmp_path / "r" / "compute_check" / "quality_vs_flops.png").exists()
    assert "**Quality at equal compute.**" in text and "at convergence: test MAP@10" in text
    assert "| val MAP@10 at 1x (" in text  # the smallest final training FLOPs of the methods shown
    results = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split("|")[2].strip().split()[0]: line
        for line in results.splitlines()
        if re.match(r"\| \d", line)
    }
    assert "**did not converge** (no validation plateau in 1 of 1 epochs)" in rows["dual"]
    assert f"converged in {clf['epochs_used']:.0f} of 30 epochs" in rows["clf"]
    assert "no training" in rows["knn"]


def test_seed_band_is_the_equal_compute_value_of_every_budget_with_the_seeds_range():
    """The figure's line is what the equal-compute table reads (`value_at`) at each of its budgets,
    starting where every seed has a checkpoint; the band spans the seeds, and a seed that stopped
    earlier keeps its final value."""
    from bench.report.compute import seed_band, value_at

    curves = [
        [(1e9, 0.1), (2e9, 0.3), (4e9, 0.5)],  # stops first
        [(2e9, 0.2), (3e9, 0.4), (8e9, 0.6), (16e9, 0.7)],
        [(0.0, 0.0), (1.5e9, 0.05), (6e9, 0.65)],  # a zero-FLOPs checkpoint is off the log axis
    ]
    band = seed_band(curves, points=40)
    assert band["flops"][0] == pytest.approx(2e9) and band["flops"][-1] == pytest.approx(16e9)
    for f, mean, low, high in zip(band["flops"], band["mean"], band["low"], band["high"]):
        assert mean == pytest.approx(value_at(curves, f))
        seeds = [[v for x, v in c if 0 < x <= f][-1] for c in curves]
        assert (low, high) == (pytest.approx(min(seeds)), pytest.approx(max(seeds)))
    assert band["mean"][-1] == pytest.approx((0.5 + 0.7 + 0.65) / 3)  # the first seed's final value
    assert band["ends"].tolist() == [[4e9, 0.5], [16e9, 0.7], [6e9, 0.65]]
    assert seed_band([[(0.0, 0.1)]]) is None
    assert seed_band([[(5e9, 0.4)]])["mean"].tolist() == [0.4]  # one checkpoint: one budget


def test_ia_plateau_does_not_count_readings_below_its_floor():
    """A DSI still near IA@1 0 (a seq2seq id's first epochs) is not on a plateau; once IA@1 has
    reached the floor, readings that gain no more than min_delta count as before."""
    from vitdsi.training.dsi import IAPlateau

    rule = IAPlateau(patience=2, min_delta=0.01, floor=0.05)
    assert not any(rule.reached(ia1) for ia1 in (0.0, 0.001, 0.0, 0.002, 0.01, 0.03))
    assert [rule.reached(ia1) for ia1 in (0.20, 0.205, 0.21)] == [False, False, True]
    unfloored = IAPlateau(patience=2, min_delta=0.01, floor=0.0)
    assert [unfloored.reached(ia1) for ia1 in (0.0, 0.001, 0.0)] == [False, False, True]
