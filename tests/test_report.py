"""`bench report` on a real smoke study: tables present, every linked image is a PNG that
opens, and every number printed equals the value MLflow stored."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_study_dict
from PIL import Image

STUDY = {
    "name": "report_check",
    "description": "pixels-knn with and without centring, two batch sizes",
    "scale": "smoke",
    "retriever": "pixels-knn",
    "space": {"center": [True, False], "batch_size": [16, 512]},
    "objective": {"metric": "MAP@10"},
    "repeats": 3,
    "report": {"paper_table": True, "equivalence_margin": 0.02},
}


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    from bench.config import load_study
    from bench.study import RunOptions, run

    root = tmp_path_factory.mktemp("report")
    path = root / "report_check.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    outcome = run(load_study(path), RunOptions(tracking_uri=uri, storage=f"sqlite:///{root / 'optuna.db'}"))
    assert outcome.complete == 4
    return root, uri


def test_report_tables_images_and_numbers(study_store):
    from mlflow import MlflowClient

    from bench.report import write_report
    from bench.tracking import metric_key

    root, uri = study_store
    md_path = write_report("report_check", tracking_uri=uri, out_dir=root / "reports")
    text = md_path.read_text()
    for heading in (
        "## Set-up",
        "## Results",
        "## Parameter importances",
        "## Precision@K and example queries",
        "## Table 1 beside the paper",
    ):  # the last one: `report: {paper_table: true}`
        assert heading in text
    assert "Chosen trial (best MAP@10 on the validation queries): **#" in text

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) >= 2
    for link in links:
        png = md_path.parent / link
        assert png.exists(), link
        with Image.open(png) as im:
            assert im.format == "PNG"
            im.verify()

    # every metric cell of the results table equals what MLflow stored for that trial
    client = MlflowClient(uri)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| # | trial"))
    header = [h.strip() for h in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    assert len(rows) == 4
    runs = {
        r.data.tags["optuna.trial_number"]: r
        for r in client.search_runs(
            [client.get_experiment_by_name("report_check").experiment_id],
            "tags.`vitdsi.kind` = 'trial'",
        )
    }
    # model choice reads the validation queries: the chosen trial has the best stored val_MAP_at_10,
    # whatever the test numbers say, and the validation column shows exactly that value
    val_col = header.index("MAP@10 validation (model choice)")
    chosen = max(runs, key=lambda n: (runs[n].data.metrics["val_MAP_at_10"], -int(n)))
    assert f"Chosen trial (best MAP@10 on the validation queries): **#{chosen} " in text
    assert header[2] == "learns from" and all(row[2] == "label-free" for row in rows)
    checked = 0
    for row in rows:
        stored = runs[row[0]].data.metrics
        assert float(row[val_col].split()[0]) == pytest.approx(stored["val_MAP_at_10"], abs=5e-5)
        for col, cell in zip(header, row):
            name = col.split(" (chance")[0]
            if name not in ("P@10", "MAP@10", "R@100", "nDCG@10", "MRR", "FPR@10", "IA@1", "IA@5"):
                continue
            # "mean ± ci", or "mean [low, high]" where the interval is clipped to [0, 1]; a result not
            # clear of chance ends in "≈ chance"
            m = re.fullmatch(r"([0-9.]+)(?: ± ([0-9.]+)| \[([0-9.]+), ([0-9.]+)\])?( ≈ chance)?", cell)
            assert m, cell
            key = metric_key(name)
            mean, ci = float(m.group(1)), stored.get(f"{key}_ci95")
            assert mean == pytest.approx(stored[key], abs=5e-5), (name, cell)
            if m.group(2):
                assert float(m.group(2)) == pytest.approx(ci, abs=5e-5)
                assert 0 <= mean - ci and mean + ci <= 1 + 5e-5
            elif m.group(3):
                assert float(m.group(3)) == pytest.approx(max(0.0, mean - ci), abs=5e-5)
                assert float(m.group(4)) == pytest.approx(min(1.0, mean + ci), abs=5e-5)
            if "(chance" in col:
                chance = col.split("(chance ")[1].rstrip(")").split(";")[0]
                assert float(chance) == pytest.approx(stored[f"{key}_chance"], abs=5e-5)
            checked += 1
    assert checked == 4 * 8
    # 64 indexed images: R@100 has chance 1 and is marked as carrying no information; FPR is
    # marked lower-is-better; fewer than 30 test queries is warned about under the table
    assert next(h for h in header if h.startswith("R@100")).endswith("; no information)")
    assert "lower is better" in next(h for h in header if h.startswith("FPR@10"))
    assert "the column carries no information" in text and "fewer than 30" in text

    # paired comparisons: one split, each of the 3 other trials against the chosen one; the
    # seed-level difference (mean of per-seed means) equals the difference of the stored test means
    maps = {
        row[0]: float(
            row[header.index(next(h for h in header if h.split(" (chance")[0] == "MAP@10"))].split()[0]
        )
        for row in rows
    }
    paired = text.split("## Paired comparisons", 1)[1].split("## ", 1)[0]
    assert "The seed is the unit of inference" in paired and "all 3 comparisons of this report" in paired
    pheader, *prows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in paired.splitlines()
        if line.startswith("| ") or line.startswith("| split")
    ]
    assert pheader[:8] == [
        "split",
        "reference (B)",
        "trial (A)",
        "Δ MAP@10 A − B, seed-level [95% interval]",
        "p",
        "Holm p",
        "equivalence p (±0.02, Holm)",
        "verdict",
    ]
    assert len(prows) == 3
    from vitdsi.statistics import holm

    for _split, best, trial, delta, p_value, p_holm, _p_equiv, verdict, seeds, pooled, wilcoxon, n in prows:
        b, t = best.split()[0].lstrip("#"), trial.split()[0].lstrip("#")
        assert b == chosen and "(chosen)" in best
        mean, low, high = (float(x) for x in re.findall(r"[+-][0-9.]+", delta))
        assert mean == pytest.approx(maps[t] - maps[b], abs=2e-4) and low <= mean <= high
        assert 0.0 <= float(p_value) <= float(p_holm) <= 1.0 and int(n) > 0 and seeds == "3"
        # same queries in every seed
        assert float(pooled.partition(" ± ")[0]) == pytest.approx(mean, abs=1e-4)
        assert 0.0 <= float(wilcoxon) <= 1.0
        if float(p_holm) < 0.05:
            assert verdict.startswith("trial better" if mean > 0 else "reference better")
        # three seeds are reported, never called a finding
        assert verdict.endswith("(3 seeds: exploratory)")
    # the Holm column is the correction of the raw column over the report's comparisons
    raw = [float(r[4]) for r in prows]
    assert [float(r[5]) for r in prows] == pytest.approx(holm(raw).tolist(), rel=0.05)
    # batch size does not change a pixel ranking: that pair differs by exactly nothing, and only
    # the equivalence test can say so
    same = [r for r in prows if r[3] == "+0.0000 [+0.0000, +0.0000]"]
    assert len(same) == 1 and float(same[0][4]) == 1.0
    assert same[0][7].startswith("equivalent within ±0.02") and float(same[0][6]) < 0.05


def test_report_of_unknown_study_is_a_clear_error(study_store):
    from bench.report import write_report
    from vitdsi.errors import VitDSIError

    _, uri = study_store
    with pytest.raises(VitDSIError, match="no study 'nope'.*bench run studies/nope.yaml"):
        write_report("nope", tracking_uri=uri, out_dir=Path("/tmp/unused"))


LATENCY_STUDY = {
    "name": "latency_check",
    "scale": "smoke",
    "methods": {"knn": {"retriever": "pixels-knn"}, "dsi-random": {"retriever": "random"}},
    "latency": {"n_queries": 16, "batch_size": 8, "calls": 3, "batch_calls": 2, "warmup": 1, "threads": 1},
    "space": {"dataset.n_total": [32, 64, 128], "method": ["knn", "dsi-random"]},
    "metrics": ["P@10"],
    "objective": {"metric": "P@10"},
    "mlflow": {"log_index": False},
}


def test_latency_study_report(tmp_path):
    from mlflow import MlflowClient

    from bench.report import write_report

    outcome, uri = run_study_dict(tmp_path, LATENCY_STUDY)
    assert outcome.complete == 6
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("latency_check").experiment_id], "tags.`vitdsi.kind` = 'trial'"
    )
    stored = {(r.data.tags["method"], int(r.data.metrics["n_indexed"])): r.data.metrics for r in runs}
    assert sorted(n for _, n in stored) == [32, 32, 64, 64, 128, 128]  # N is the indexed size
    for m in stored.values():
        assert 0 < m["latency_b1_p50_ms"] <= m["latency_b1_p95_ms"] and m["index_bytes"] > 0
        assert m["P_at_10_n"] == 16  # the held-out queries

    text = write_report("latency_check", tracking_uri=uri, out_dir=tmp_path / "reports").read_text()
    assert "## Latency against database size" in text and "| method | sizes | slope |" in text
    assert "Crossover (batch 1)" in text and "dsi-random" in text
    assert "## Table 1 beside the paper" not in text  # no `report: {paper_table: true}`
    # the Set-up names the held-out images, not the split ratio the trial config encodes them in
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert (
        "N = per trial (see the results) indexed images" in setup and "16 timed and scored queries" in setup
    )
    assert "split_ratio" not in setup
    lines = text.splitlines()
    # all measurements
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | N | L | k | beam |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    measured = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start + 2 : start + 8]]
    assert len(measured) == 6 and all(len(cells) == len(header) for cells in measured)
    for cells in measured:
        m = stored[(cells[0], int(cells[1]))]
        assert float(cells[header.index("b1 p50")]) == pytest.approx(m["latency_b1_p50_ms"], abs=5e-4)
        assert float(cells[header.index("b8 p95")]) == pytest.approx(m["latency_batch_p95_ms"], abs=5e-5)
        assert cells[header.index("k")] == "10" and cells[header.index("L")] == "n/a"  # P@10; no id length
        assert cells[header.index("add ms/image")] == "n/a"  # add time only where latency.add_images asks
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        with Image.open(tmp_path / "reports" / link) as im:
            assert im.format == "PNG"


COMPARE_STUDY = {
    "name": "compare_check",
    "scale": "smoke",
    "methods": {
        "knn": {"retriever": "pixels-knn", "params": {"center": True}},
        "raw": {"retriever": "pixels-knn", "params": {"center": False}},
        "rand": {"retriever": "random"},
    },
    "space": {"method": ["knn", "raw", "rand"]},
    "objective": {"metric": "MAP@10"},
    "report": {"compare_with": ["rand"]},
    "mlflow": {"log_index": False},
}


def _paired_rows(text: str) -> list[tuple[str, str]]:
    """(reference, trial) method names of each row of the paired-comparisons table."""
    paired = text.split("## Paired comparisons", 1)[1].split("\n## ", 1)[0]
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in paired.splitlines()
        if line.startswith("| ") and not line.startswith("| split")
    ]
    return [(ref.split()[1], trial.split()[1]) for _split, ref, trial, *_ in rows]


def test_report_compares_every_trial_with_the_named_methods(tmp_path):
    from bench.report import write_report
    from vitdsi.errors import VitDSIError

    outcome, uri = run_study_dict(tmp_path, COMPARE_STUDY)
    assert outcome.complete == 3
    # the study file's report.compare_with: the non-chosen pixel trial is also paired with `rand`
    text = write_report("compare_check", tracking_uri=uri, out_dir=tmp_path / "a").read_text()
    rows = _paired_rows(text)
    chosen = rows[0][0]
    assert chosen in ("knn", "raw") and "(the study's `report.compare_with`)" in text
    other = "raw" if chosen == "knn" else "knn"
    assert sorted(rows) == sorted([(chosen, other), (chosen, "rand"), ("rand", other)])
    # --compare-with replaces it; a reference that is the chosen trial adds nothing
    assert sorted(
        _paired_rows(
            write_report(
                "compare_check", tracking_uri=uri, out_dir=tmp_path / "b", compare_with=[chosen]
            ).read_text()
        )
    ) == sorted([(chosen, other), (chosen, "rand")])
    with pytest.raises(VitDSIError, match="'rnad' is no method of study 'compare_check'"):
        write_report("compare_check", tracking_uri=uri, out_dir=tmp_path / "c", compare_with=["rnad"])


SPLIT_STUDY = {
    "name": "split_check",
    "scale": "smoke",
    "retriever": "pixels-knn",
    "repeats": 3,
    "space": {"dataset.split_ratio": [0.25, 0.5]},
    "objective": {"metric": "MAP@10"},
    "report": {"equivalence_margin": 0.02},
    "mlflow": {"log_index": False},
}


def test_trials_on_different_splits_are_compared_unpaired_over_seeds(tmp_path):
    """A grid over the indexed fraction gives every trial its own test queries: the report still
    compares them, by Welch's t over their per-seed means, and leaves the query-level columns empty."""
    from bench.report import write_report
    from bench.report.data import load_study_record
    from bench.report.rankings import seed_rankings
    from vitdsi.metrics import per_query
    from vitdsi.statistics import seed_welch_t

    outcome, uri = run_study_dict(tmp_path, SPLIT_STUDY)
    assert outcome.complete == 2
    text = write_report("split_check", tracking_uri=uri, out_dir=tmp_path / "r").read_text()
    paired = text.split("## Paired comparisons", 1)[1].split("\n## ", 1)[0]
    assert "Welch's t over the per-seed mean MAP@10" in paired
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in paired.splitlines()
        if line.startswith("| ") and not line.startswith("| split")
    ]
    assert len(rows) == 1
    split, ref, trial, interval, p, *_rest = rows[0]
    assert split == "unpaired: each its own split" and "split_ratio" in ref and "split_ratio" in trial
    assert rows[0][-3:] == ["—", "—", "—"] and rows[0][-4] == "3"  # three seeds, no query pairs
    # the numbers are Welch's t on the per-seed test MAP@10 the stored rankings give
    record = load_study_record("split_check", uri)
    means = {}
    for t in record.trials:
        seeds = seed_rankings(t, record, tmp_path / "r" / "split_check", {})
        means[t.number] = [
            float(np.nanmean(per_query(x.ids, x.relevance, ["MAP@10"])["MAP@10"])) for x in seeds
        ]
    (a_num, b_num) = (int(trial.split()[0][1:]), int(ref.split()[0][1:]))
    expected = seed_welch_t(means[a_num], means[b_num], margin=0.02)
    assert interval.startswith(f"{expected.mean:+.4f}")


def test_near_chance_rule():
    from bench.report.markdown import near_chance

    assert near_chance(0.30, 0.05, 0.26)  # lower end 0.25 is below chance
    assert near_chance(0.31, 0.05, 0.26)  # lower end equal to chance: not above it
    assert not near_chance(0.40, 0.05, 0.26)
    assert near_chance(0.10, 0.05, 0.14, higher_is_better=False)  # FPR: upper end reaches chance
    assert not near_chance(0.05, 0.02, 0.14, higher_is_better=False)
    # nothing to compare
    assert not near_chance(0.26, float("nan"), 0.26) and not near_chance(0.26, 0.1, None)


SETUP_STUDY = {
    "name": "setup_check",
    "scale": "smoke",
    "methods": {
        "knn": {"retriever": "pixels-knn", "params": {"center": False}},
        "rand": {"retriever": "random"},
    },
    "space": {"method": ["knn", "rand"]},
    "metrics": ["MAP@10", "R@1"],
    "objective": {"metric": "MAP@10"},
    "mlflow": {"log_index": False},
}


def test_report_of_a_named_run_records_methods_overrides_and_chance(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    path = tmp_path / "setup_check.yaml"
    path.write_text(yaml.safe_dump(SETUP_STUDY))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def bench(*args):
        res = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
        return res.exit_code, res.output

    code, out = bench(
        "run",
        str(path),
        "--tracking-uri",
        uri,
        "--storage",
        f"sqlite:///{tmp_path / 'optuna.db'}",
        "--study-name",
        "mine",
        "--set",
        "dataset.n_total=160",
    )
    assert code == 0, out
    code, out = bench(
        "report", "setup_check", "--study-name", "other", "--tracking-uri", uri, "--out", str(tmp_path)
    )
    assert code == 2 and "Optuna study 'other'" in out and "its Optuna studies there: mine" in out, out
    code, out = bench(
        "report", "setup_check", "--study-name", "mine", "--tracking-uri", uri, "--out", str(tmp_path)
    )
    assert code == 0, out
    text = (tmp_path / "setup_check.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert "Optuna study `mine`" in setup and "| overrides | `--set dataset.n_total=160` |" in setup
    knn = setup.split("- **knn**: retriever `pixels-knn`", 1)[1].split("- **rand**", 1)[0]
    assert "build parameters: center=False" in knn and "at the retriever's defaults: batch_size=" in knn
    assert "- **rand**: retriever `random`" in setup
    header = _result_header(text)
    col = next(i for i, h in enumerate(header) if h.startswith("MAP@10 (chance"))
    chance = float(re.search(r"chance ([0-9.]+)", header[col]).group(1))
    cells = {row[1].split()[0]: row[col] for row in _result_rows(text)}
    for cell in cells.values():  # the marker follows the rule: the CI's lower end not above chance
        mean, ci = (float(x) for x in re.findall(r"[0-9]+\.[0-9]+", cell))
        assert ("≈ chance" in cell) == (mean - ci <= chance), cell
    assert "≈ chance" in cells["rand"] and "≈ chance" not in cells["knn"]  # the rule is not vacuous here


def _result_header(text: str) -> list[str]:
    results = text.split("## Results", 1)[1]
    line = next(line for line in results.splitlines() if line.startswith("| # |"))
    return [c.strip() for c in line.strip("|").split("|")]


def _result_rows(text: str) -> list[list[str]]:
    results = text.split("## Results", 1)[1].split("\n\n", 2)[1]
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in results.splitlines()[2:]
        if line.startswith("|")
    ]
