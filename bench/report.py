"""`bench report STUDY`: a markdown report with PNG figures from what a study logged.

Reads the study's parent run and finished trial runs from MLflow (`bench.report_data`)
and their artifacts (split, rankings); it retrains nothing. Sections: a provenance
header, one row per trial with every metric as mean ± 95% CI and its chance level, the
best trial, parameter importances, the paper's Table 1 layout beside its numbers (for
studies with `report: {paper_table: true}`), latency against database size with fitted log-log slopes and crossovers (for
latency studies), training curves, Precision@K curves, and a query -> top-5 image grid.
Plain markdown with relative image links, so it renders anywhere without network.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import plots
from bench.paper import METHOD_NOTE, paper_row
from bench.report_data import StudyRecord, TrialRecord, load_study_record, metric_history
from vitdsi.log import get_logger

log = get_logger("bench.report")

MAX_CURVES = 8  # lines per figure before it stops being readable
# Panels of the training-curve figure, in order: one loss per phase (in a pure phase the
# phase loss and its index/retrieval part are the same series), memorisation (greedy IA@1
# on the corpus, exact ids in the training pass) and both halves of a multitask loss.
CURVE_KEYS = {
    "index/loss": "indexing loss",
    "index/ia1": "indexing: IA@1 (greedy, corpus)",
    "index/train_exact": "indexing: exact ids in training",
    "retrieval/loss": "fine-tuning loss",
    "multitask/index_loss": "multitask: indexing loss",
    "multitask/retrieval_loss": "multitask: retrieval loss",
    "multitask/ia1": "multitask: IA@1 (greedy, corpus)",
    "classify/loss": "classifier: cross-entropy",
    "contrastive/loss": "dual-encoder: InfoNCE",
}
MAX_TRAINED_CURVES = 6  # methods drawn in the training-curve figure
GRID_QUERIES, GRID_K = 6, 5


def fmt(x: float | None, digits: int = 4) -> str:
    """A number as the report prints it (the tests parse these back)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def fmt_ci(mean: float | None, ci: float | None) -> str:
    if mean is None:
        return "n/a"
    return fmt(mean) if ci is None or math.isnan(ci) else f"{fmt(mean)} ± {fmt(ci)}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _label(t: TrialRecord, record: StudyRecord) -> str:
    sampled = {k: v for k, v in t.sampled.items() if k != "method"}
    parts = [t.method] if len(record.resolved.get("methods", {})) > 1 else []
    parts += [f"{k}={v}" for k, v in sampled.items()]
    return " ".join(parts) or f"trial {t.number}"


# ---- sections -----------------------------------------------------------------------------
def header_section(record: StudyRecord) -> str:
    tags, ds = record.tags, record.resolved.get("dataset", {})
    searched = {k[len("dataset."):] for t in record.trials for k in t.sampled if k.startswith("dataset.")}

    def _ds(field: str) -> str:  # a dataset field the study searches varies per trial: say so
        return "per trial (see the results)" if field in searched else str(ds.get(field))

    versions = ", ".join(f"{k[len('version.'):]} {v}" for k, v in sorted(tags.items()) if k.startswith("version."))
    device = tags.get("device", "?")
    if tags.get("device.name"):
        device += f" ({tags['device.name']})"
    rows = [
        ["report written", dt.datetime.now().strftime("%Y-%m-%d %H:%M")],
        ["study run", f"`{record.run_id}` (experiment {record.experiment_id}), Optuna study `{tags.get('optuna.study_name', '?')}`"],
        ["git", f"`{tags.get('git.sha', '?')[:12]}`" + (f" (dirty tree: {tags.get('git.changed', 'files not recorded')})" if tags.get("git.dirty") == "true" else "")],
        ["device", device],
        ["packages", versions or "?"],
        ["scale", record.scale],
        ["dataset", f"{ds.get('name')} at {ds.get('size')} px, n_total {_ds('n_total')}, split_ratio {_ds('split_ratio')}, "
                    f"queries train/val/test {ds.get('query_fractions')}, split seed {ds.get('seed')}"],
        ["protocol", "per trial (see the results)" if "protocol" in searched else _protocol(ds)],
        ["objective", f"{record.objective} ({record.direction}), sampler {record.params.get('sampler')}, "
                      f"repeats {record.params.get('repeats')} seed(s) per trial"],
        ["trials", f"{len(record.trials)} finished"],
    ]
    return md_table(["", ""], rows)


def _protocol(ds: dict) -> str:
    """The evaluation protocol in words (vitdsi.data.protocols)."""
    if ds.get("protocol") == "graded":
        gain = {"gain": "shared", **(ds.get("graded") or {})}["gain"]
        return ("graded: multi-label, relevant = a shared category; nDCG gains = "
                + ("the number of shared categories" if gain == "shared" else "the Jaccard index of the category sets"))
    if ds.get("protocol") == "unseen-classes":
        share = {"share": 0.3, **(ds.get("unseen") or {})}["share"]
        return (f"unseen-classes: {share:.0%} of the classes (seeded) are indexed but their labels and train queries "
                "never reach training; relevance = same class; test reported for seen and unseen classes")
    if ds.get("protocol", "class") != "instance":
        return "class: queries are other images, relevant = same class (or a shared category)"
    opts = {"strength": "medium", "train_views": 2, "untrained_share": 0.5, **(ds.get("instance") or {})}
    return (f"instance: queries are new views ({opts['strength']}) of indexed images, each relevant to its source "
            f"only; {opts['train_views']} train view(s) of each image except a {opts['untrained_share']:.0%} share "
            "that has none; validation and test views from their own seeds")


def results_section(record: StudyRecord) -> str:
    names = record.metric_names()
    objective = record.objective
    seeds = max((int(float(t.params.get("repeats", 1))) for t in record.trials), default=1)
    shared_chance = {}
    for m in names:
        values = {round(t.metrics[m].chance, 12) for t in record.trials if m in t.metrics and t.metrics[m].chance is not None}
        shared_chance[m] = values.pop() if len(values) == 1 else None
    has_val = any(objective in t.val_metrics for t in record.trials)
    header = ["#", "trial", "learns from", "indexed", "test queries"]
    if has_val:
        header.append(f"{objective} validation (model choice)")
    header += [_metric_header(m, shared_chance[m]) for m in names]
    if seeds > 1:
        header.append(f"{objective} ± CI over queries")
    header += ["index s", "ms / query"]
    best = record.best()
    rows = []
    for t in record.trials:
        ia = next((t.metrics[m] for m in names if m.startswith("IA@")), None)
        test = next((t.metrics[m] for m in names if not m.startswith("IA@")), None)
        indexed = ia.n if ia and ia.n else t.extra.get("n_indexed")
        label = _label(t, record) + (" **(chosen)**" if best is not None and t is best else "")
        row = [str(t.number), label, t.supervision, str(int(indexed)) if indexed else "?",
               str(test.n) if test and test.n else "?"]
        if has_val:
            v = t.val_metrics.get(objective)
            row.append(fmt_ci(v.mean, v.ci95) if v else "n/a")
        for m in names:
            mr = t.metrics.get(m)
            cell = fmt_ci(mr.mean, mr.ci95) if mr else "n/a"
            if mr and shared_chance[m] is None and mr.chance is not None:
                cell += f" (chance {fmt(mr.chance)})"
            row.append(cell)
        if seeds > 1:
            mr = t.metrics.get(objective)
            row.append(fmt_ci(mr.mean, mr.ci95_queries) if mr else "n/a")
        row += [fmt(t.extra.get("index_seconds"), 1), fmt(t.extra.get("query_ms"), 2)]
        rows.append(row)
    note = ("Metric columns are test numbers: the mean over all test queries (IA@K: over all indexed images) ± the "
            "half-width of its 95% Student-t confidence interval; with several seeds (each with its own split and "
            "training seed), the mean over seeds ± the CI across seeds"
            + (f", and the last {objective} column gives the CI over the pooled queries of all seeds" if seeds > 1 else "")
            + ". Chance is the exact expectation under a uniformly random ranking of the same split. "
            + (f"Model choice (Optuna's objective, the chosen trial) reads only the {objective} of the validation "
               "queries; test queries are never used to choose. " if has_val else
               "These runs logged no validation metrics, so model choice read test numbers. ")
            + "*Learns from* says what reached training besides the corpus pixels: with class-identity relevance a "
              "method that learns from labels is rewarded for classifying, so compare it with a label-matched "
              "baseline (`classifier`, `dual-encoder`), not only with label-free ones.")
    warnings = []
    few = sorted({t.metrics[m].n for t in record.trials for m in names
                  if not m.startswith("IA@") and m in t.metrics and t.metrics[m].n is not None and t.metrics[m].n < 30})
    if few:
        warnings.append(f"**Warning:** some splits have only {', '.join(map(str, few))} test queries (fewer than 30): "
                        "their intervals are wide and a Student-t CI is only approximate at that size.")
    useless = [m for m in names if shared_chance[m] is not None and _no_information(m, shared_chance[m])]
    if useless:
        warnings.append(f"{', '.join(useless)}: chance is {fmt(1.0)}, so every ranking scores it (e.g. R@100 with at "
                        "most 100 indexed images): the column carries no information.")
    modes = {t.params.get("mode") for t in record.trials}
    if "fine-tuned" in modes and any(m.startswith("IA@") for m in names):
        warnings.append("IA@K of fine-tuned DSIs: fine-tuning trains each train query to the id of a random relevant "
                        "(same-class) image, with no indexing examples left in the batches, so the model stops mapping "
                        "an indexed image to its own id and IA@1 falls towards the share of its class (catastrophic "
                        "forgetting of the index). The multitask mode keeps indexing examples in every batch to avoid it.")
    return "\n\n".join([md_table(header, rows), note, *warnings])


def _no_information(metric: str, chance: float) -> bool:
    """True when a random ranking already scores the metric's best value (chance 1 for a
    higher-is-better metric, 0 for FPR)."""
    from vitdsi.metrics import parse_metric

    best = 1.0 if parse_metric(metric).family.higher_is_better else 0.0
    return abs(chance - best) < 1e-9


def _metric_header(metric: str, chance: float | None) -> str:
    from vitdsi.metrics import parse_metric

    parts = [] if chance is None else [f"chance {fmt(chance)}"]
    if not parse_metric(metric).family.higher_is_better:
        parts.append("lower is better")
    if chance is not None and _no_information(metric, chance):
        parts.append("no information")
    return f"{metric} ({'; '.join(parts)})" if parts else metric


def best_section(record: StudyRecord) -> str:
    best = record.best()
    if best is None:
        return "No finished trial has the objective metric."
    m = best.metrics[record.objective]
    split = best.choice_split(record.objective)
    return (f"Chosen trial (best {record.objective} on the {split}): **#{best.number} {_label(best, record)}** "
            f"with {fmt(best.choice_value(record.objective))} there; its test {record.objective} = "
            f"{fmt_ci(m.mean, m.ci95)} (chance {fmt(m.chance)}). "
            f"Run `{best.run_id}`; query its index with `bench search --run {best.run_id} IMAGE...`.")


def failed_section(record: StudyRecord) -> str | None:
    """Trial runs that failed or were interrupted, and whether their point was completed later."""
    if not record.failed:
        return None
    done = {json.dumps(t.sampled, sort_keys=True, default=str): t.number for t in record.trials}
    rows = []
    for f in record.failed:
        later = done.get(json.dumps(f.sampled, sort_keys=True, default=str))
        label = ", ".join(f"{k}={v}" for k, v in f.sampled.items()) or f"trial {f.number}"
        rows.append([str(f.number), label, f.status, f.error[:200] or "—",
                     f"yes, by #{later}" if later is not None else "**no**"])
    return ("Trial runs that did not finish (FAILED: an error; KILLED: Ctrl-C or SIGTERM). `bench run` retries a "
            "failed grid point before any new one.\n\n"
            + md_table(["#", "trial", "status", "error", "point completed later"], rows))


def importance_section(record: StudyRecord) -> str | None:
    space = record.resolved.get("space", {})
    if len(space) < 2 or len(record.trials) < 4:
        return None
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists = {}
    for key, spec in space.items():
        kind = spec.get("type")
        if kind == "categorical":
            dists[key] = CategoricalDistribution([json_safe(c) for c in spec["choices"]])
        elif kind == "int":
            dists[key] = IntDistribution(spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step") or 1)
        elif kind == "float":
            dists[key] = FloatDistribution(spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=record.direction)
    for t in record.trials:
        value = t.value(record.objective)
        params = {k: json_safe(t.sampled[k]) for k in dists if k in t.sampled}
        if value is None or len(params) != len(dists):
            continue
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    if len(study.trials) < 4:
        return None
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as e:
        return f"Parameter importances could not be computed: {e}"
    rows = [[k, fmt(v, 3)] for k, v in imp.items()]
    return (md_table(["parameter", f"importance for {record.objective} (fANOVA)"], rows)
            + f"\n\nFrom {len(study.trials)} finished trials; importances sum to 1.")


def json_safe(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def table1_section(record: StudyRecord) -> str | None:
    if not record.paper_table:
        return None
    # (our metric, the paper's column beside it): the paper's "MAP@10" is Precision@10 (bench.paper)
    cols = [("IA@1", "IA@1"), ("IA@5", "IA@5"), ("P@10", 'paper "MAP@10" (= P@10)'), ("MAP@10", None),
            ("R@100", "R@100")]
    header = ["DB size", "method", "learns from"]
    for ours, theirs in cols:
        header += [f"{ours} ours"] + ([f"{theirs} paper" if theirs == ours else theirs] if theirs else [])
    rows = []

    def size_of(t):
        return int(float(t.params.get("dataset.n_total", 0)))
    for t in sorted(record.trials, key=lambda t: (size_of(t), t.method)):
        mode, ids = t.params.get("mode"), t.params.get("id_scheme")
        paper = paper_row(t.retriever, mode, ids, size_of(t)) or {}
        row = [str(size_of(t)), t.method, t.supervision]
        for ours, theirs in cols:
            mr = t.metrics.get(ours)
            row.append(fmt_ci(mr.mean, mr.ci95) if mr else "n/a")
            if theirs:
                row.append(fmt(paper.get(ours), 3) if paper.get(ours) is not None else "—")
        rows.append(row)
    chance_rows = {}
    for t in record.trials:
        chance_rows.setdefault(size_of(t), t)
    for size, t in sorted(chance_rows.items()):
        row = [str(size), "*chance*", ""]
        for ours, theirs in cols:
            mr = t.metrics.get(ours)
            row.append(fmt(mr.chance) if mr and mr.chance is not None else "n/a")
            if theirs:
                row.append("")
        rows.append(row)
    return md_table(header, rows) + "\n\n" + METHOD_NOTE


# ---- latency ------------------------------------------------------------------------------
LATENCY_KEYS = ("latency_b1_p50_ms", "latency_b1_p95_ms", "latency_batch_p50_ms", "latency_batch_p95_ms")


def latency_section(record: StudyRecord, out: Path, rel: str) -> str | None:
    from bench.latency import crossover, fit_loglog

    trials = [t for t in record.trials if "latency_b1_p50_ms" in t.extra and "n_indexed" in t.extra]
    if not trials:
        return None
    by_method: dict[str, list[TrialRecord]] = defaultdict(list)
    for t in trials:
        by_method[t.method].append(t)
    parts = []
    batch = int(trials[0].extra.get("latency_batch_size", 256))
    for key, title in (("latency_b1_p50_ms", "batch 1"), ("latency_batch_p50_ms", f"batch {batch}")):
        series = {}
        for method, ts in sorted(by_method.items()):
            ts = sorted((t for t in ts if key in t.extra), key=lambda t: t.extra["n_indexed"])
            if ts:
                series[method] = ([t.extra["n_indexed"] for t in ts], [t.extra[key] for t in ts])
        fig = plots.latency_plot(series, out / f"latency_{key}.png", f"{record.name}: p50 search latency per query, {title}")
        parts.append(f"![latency {title}]({rel}/{fig.name})")
        rows = []
        dsi = [m for m in series if m.startswith("dsi")]
        for method, (ns, ms) in series.items():
            if len(ns) < 2:
                rows.append([method, str(len(ns)), "n/a", "n/a", "", ""])
                continue
            f = fit_loglog(ns, ms)
            kind = "≈ O(1)" if abs(f.slope) < 0.25 else ("≈ O(N)" if abs(f.slope - 1) < 0.25 else f"≈ O(N^{f.slope:.2f})")
            rows.append([method, str(len(ns)), fmt(f.slope, 3), fmt(f.r2, 3), kind,
                         f"{fmt(min(ms), 3)} – {fmt(max(ms), 3)}"])
        parts.append(f"**{title}**: log-log fit of p50 latency against N (slope ~0: O(1), ~1: O(N)).\n\n"
                     + md_table(["method", "sizes", "slope", "R²", "scaling", "p50 ms range"], rows))
        cross = []
        for d in dsi:
            for base in series:
                if base in dsi:
                    continue
                n_d, t_d = series[d]
                n_b, t_b = series[base]
                common = sorted(set(n_d) & set(n_b))
                if len(common) < 2:
                    continue
                td = [t_d[n_d.index(n)] for n in common]
                tb = [t_b[n_b.index(n)] for n in common]
                c = crossover(common, td, tb)
                if c is None:
                    text = f"none in the measured range {int(common[0])}–{int(common[-1])}: {d} stays slower"
                elif c <= common[0]:
                    text = f"{d} is faster at every measured N ({int(common[0])}–{int(common[-1])})"
                else:
                    text = f"N ≈ {c:,.0f}: {d} is faster from there on"
                cross.append([d, base, text])
        if cross:
            parts.append(f"Crossover ({title}): the database size from which the DSI answers faster than each baseline.\n\n"
                         + md_table(["DSI", "baseline", "crossover"], cross))
    rows = []
    for method, ts in sorted(by_method.items()):
        for t in sorted(ts, key=lambda t: t.extra["n_indexed"]):
            e = t.extra
            rows.append([method, str(int(e["n_indexed"])), fmt(e.get("latency_b1_p50_ms"), 3), fmt(e.get("latency_b1_p95_ms"), 3),
                         fmt(e.get("latency_batch_p50_ms"), 4), fmt(e.get("latency_batch_p95_ms"), 4),
                         fmt(e.get("index_build_s"), 1), fmt(e.get("index_bytes", float("nan")) / 2**20, 2)])
    parts.append("All measurements (ms per query; p50 / p95 over repeated timed calls after warm-up, fixed threads):\n\n"
                 + md_table(["method", "N", "b1 p50", "b1 p95", f"b{batch} p50", f"b{batch} p95", "build s", "index MiB"], rows))
    return "\n\n".join(parts)


# ---- figures from artifacts ---------------------------------------------------------------
def _best_per_method(record: StudyRecord) -> list[TrialRecord]:
    """The trial of each method that model choice picks (best validation objective)."""
    sign = 1 if record.direction == "maximize" else -1
    best: dict[str, TrialRecord] = {}
    for t in record.trials:
        v = t.choice_value(record.objective)
        if v is None:
            continue
        key = t.method if len({x.method for x in record.trials}) > 1 else _label(t, record)
        if key not in best or sign * v > sign * best[key].choice_value(record.objective):
            best[key] = t
    return sorted(best.values(), key=lambda t: -sign * t.choice_value(record.objective))[:MAX_CURVES]


def curves_section(record: StudyRecord, out: Path, rel: str) -> str | None:
    histories = {}
    for t in _best_per_method(record):
        h = metric_history(t.run_id, record.tracking_uri)
        # with several seeds the curves are logged per seed ("seed0/index/loss"): draw the first seed's
        h = {k[len("seed0/"):]: v for k, v in h.items() if k.startswith("seed0/")} or h
        keep = [k for k in CURVE_KEYS if len(h.get(k, ())) > 1]
        if keep:
            histories[_label(t, record)] = {CURVE_KEYS[k]: h[k] for k in keep}
        if len(histories) == MAX_TRAINED_CURVES:
            break
    if not histories:
        return None
    fig = plots.training_curves(histories, out / "training_curves.png", f"{record.name}: training curves of the chosen trials")
    return ("Per-epoch training logs of the chosen trial of each trained method (the first seed when there are "
            "several; x: epochs over all phases). Training is seeded and deterministic, so trials that share their "
            f"indexing settings draw the same indexing curve and hide each other.\n\n![training curves]({rel}/{fig.name})")


@dataclass(frozen=True)
class SeedRanking:
    """One seed of a trial: its test ranking, the split's image sets and the relevance."""

    seed_index: int  # repeat index (0 = the study's seed)
    ids: np.ndarray  # int64 [test queries, k]
    sets: Any  # SplitSets of this seed's split
    relevance: Any  # Relevance of test queries against the corpus
    test_key: bytes  # the test positions, so two trials pair only on the same queries


def _seed_rankings(t: TrialRecord, record: StudyRecord, out: Path, cache: dict) -> list[SeedRanking] | None:
    """Every seed's test ranking of a trial, with its split; None (with a warning) when its
    artifacts cannot be read. `cache`, shared by the sections of one report, keeps each
    trial's download and each split's loaded images."""
    from bench.runs import open_trial_run
    from bench.trial import repeat_data, split_sets
    from vitdsi.data import Split

    if t.run_id in cache:
        return cache[t.run_id]
    try:
        run = open_trial_run(t.run_id, record.tracking_uri, folder=out / ".artifacts" / t.run_id)
        arrays = run.rankings()
    except Exception as e:  # an artifact store that cannot be read: say so, keep the rest
        log.warning("no rankings for trial %s: %s", t.number, e)
        cache[t.run_id] = None
        return None
    seeds = []
    for i in range(len(arrays.get("seeds", [0]))):
        if f"test_{i}" in arrays:
            split = Split(*(arrays[f"{part}_{i}"] for part in ("idb", "train", "val", "test")), params=run.split.params)
        elif i == 0:  # a run logged before per-seed splits were stored
            split = run.split
        else:
            break
        data = repeat_data(run.config.dataset, i)
        key = (repr(data), split.to_json())
        if key not in cache:
            sets = split_sets(data, split)
            cache[key] = (sets, sets.relevance("test"))
        sets, relevance = cache[key]
        seeds.append(SeedRanking(i, arrays[f"test_ids_{i}"], sets, relevance, split.test.tobytes()))
    cache[t.run_id] = seeds
    return seeds


def _test_ranking(t: TrialRecord, record: StudyRecord, out: Path, cache: dict) -> tuple[np.ndarray, Any, Any] | None:
    """The first seed's test ranking of a trial, its split's image sets and its relevance."""
    seeds = _seed_rankings(t, record, out, cache)
    return (seeds[0].ids, seeds[0].sets, seeds[0].relevance) if seeds else None


def _sort_value(v: str) -> tuple:
    """Order parameter values numerically when they are numbers, else by their text."""
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


LABEL_MATCHED = ("classifier", "dual-encoder")  # baselines trained on exactly the DSI's signal


@dataclass(frozen=True)
class SeededDifference:
    """trial − reference over the (seed, query) pairs both answered on the same test queries."""

    pooled: Any  # PairedDifference over all pairs (paired t CI, Wilcoxon p)
    seed_mean: float  # mean of the per-seed mean differences
    seed_ci95: float  # its CI across seeds (NaN for one seed)
    n_seeds: int


def _seeded_difference(a: list[SeedRanking], b: list[SeedRanking], metric: str) -> SeededDifference | None:
    from vitdsi.metrics import mean_ci, paired_difference, per_query

    pairs = [(x, y) for x in a for y in b if x.seed_index == y.seed_index and x.test_key == y.test_key]
    if not pairs:
        return None
    va = [per_query(x.ids, x.relevance, [metric])[metric] for x, _ in pairs]
    vb = [per_query(y.ids, y.relevance, [metric])[metric] for _, y in pairs]
    pooled = paired_difference(np.concatenate(va), np.concatenate(vb))
    per_seed = [np.nanmean(x - y) for x, y in zip(va, vb)]
    mean, ci, n = mean_ci(np.array(per_seed))
    return SeededDifference(pooled, mean, ci, n)


def paired_section(record: StudyRecord, out: Path, cache: dict) -> str | None:
    """Per split, every trial against the chosen (best on validation) trial and against the
    chosen trial of each label-matched baseline, query by query over all seeds, Holm-corrected."""
    from vitdsi.metrics import holm

    metric, sign = record.objective, (1 if record.direction == "maximize" else -1)
    if record.resolved.get("latency") or metric.startswith("IA"):
        return None  # latency trials are not trained to be accurate; IA is not a per-query metric
    groups: dict[tuple, list[TrialRecord]] = defaultdict(list)
    for t in record.trials:
        if t.choice_value(metric) is not None:
            groups[tuple(sorted((k, str(v)) for k, v in t.sampled.items() if k.startswith("dataset.")))].append(t)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return None

    def _short(t: TrialRecord) -> str:  # its label without the split, which has its own column
        return " ".join(w for w in _label(t, record).split() if not w.startswith("dataset.")) or f"trial {t.number}"

    comparisons = []  # (split, reference, reference is the chosen trial, trial, difference)
    for key, trials in sorted(groups.items(), key=lambda kv: [_sort_value(v) for _, v in kv[0]]):
        trials = sorted(trials, key=lambda t: -sign * t.choice_value(metric))
        references = [trials[0]] + [
            next(t for t in trials if t.retriever == name)
            for name in LABEL_MATCHED if any(t.retriever == name for t in trials)
        ]
        seen = set()
        for ref in {r.number: r for r in references}.values():
            ref_seeds = _seed_rankings(ref, record, out, cache)
            if not ref_seeds:
                continue
            for t in trials:
                pair = frozenset((t.number, ref.number))
                if t is ref or pair in seen:
                    continue
                if ref is not trials[0] and t.tags.get("supervision.uses_labels") != "true":
                    continue  # a label-matched baseline is the reference for label-using methods only
                seen.add(pair)
                t_seeds = _seed_rankings(t, record, out, cache)
                d = _seeded_difference(t_seeds, ref_seeds, metric) if t_seeds else None
                if d is not None:
                    split = " ".join(f"{k[len('dataset.'):]}={v}" for k, v in key)
                    comparisons.append((split, ref, ref is trials[0], t, d))
    if not comparisons:
        return None
    adjusted = holm([d.pooled.p_value for *_, d in comparisons])
    n_seeds = max(d.n_seeds for *_, d in comparisons)
    rows = []
    for (split, ref, chosen, t, d), p_holm in zip(comparisons, adjusted):
        row = [split or "—", f"#{ref.number} {_short(ref)}" + (" (chosen)" if chosen else ""),
               f"#{t.number} {_short(t)}", f"{d.pooled.mean:+.4f} ± {d.pooled.ci95:.4f}"]
        if n_seeds > 1:
            row.append(f"{d.seed_mean:+.4f} ± {fmt(d.seed_ci95)} ({d.n_seeds})")
        row += [f"{d.pooled.p_value:.2g}", f"{p_holm:.2g}", str(d.pooled.n)]
        rows.append(row)
    header = ["split", "reference", "trial", f"Δ {metric} (seeds × queries)"]
    if n_seeds > 1:
        header.append(f"Δ {metric} across seeds (n)")
    header += ["Wilcoxon p", "Holm p", "pairs"]
    return (f"Each trial against the chosen trial on the same split (best {metric} on the validation queries) and "
            "each trial that learns from labels also against the chosen trial of each label-matched baseline "
            "(`classifier`, `dual-encoder`) present: the mean "
            f"difference in test {metric} (trial − reference) over every (seed, test query) pair ± the half-width of its "
            "paired 95% Student-t interval"
            + (", the mean of the per-seed differences ± its CI across seeds (training and split noise)" if n_seeds > 1 else "")
            + ", the two-sided Wilcoxon signed-rank p-value over the pairs, and that p-value Holm-corrected over all "
            f"{len(rows)} comparisons of this report (family-wise error 5%: call a gap real only when the Holm p is "
            "below 0.05)."
            + (" With one seed the interval covers the query sample only, not training noise." if n_seeds == 1 else "")
            + "\n\n" + md_table(header, rows))


def seen_in_training_section(record: StudyRecord, out: Path, cache: dict) -> str | None:
    """Instance protocol: each chosen method's test metrics on views of indexed images that had
    train views and on views of images that had none (generalisation to unseen images)."""
    from vitdsi.metrics import mean_ci, per_query

    protocol = record.resolved.get("dataset", {}).get("protocol")
    if protocol not in ("instance", "unseen-classes"):
        return None
    sides = ("(had train views)", "(no train view)") if protocol == "instance" else ("(seen classes)", "(unseen classes)")
    names = [m for m in record.metric_names() if not m.startswith("IA@")]
    rows = []
    for t in _best_per_method(record):
        seeds = _seed_rankings(t, record, out, cache)
        if not seeds:
            continue
        row = [_label(t, record), t.supervision]
        for m in names:
            pooled = {True: [], False: []}
            for sr in seeds:
                values = per_query(sr.ids, sr.relevance, [m])[m]
                if protocol == "instance":
                    had_train = np.isin(sr.sets.test.view_of, sr.sets.train.view_of)
                else:
                    had_train = ~np.isin(sr.sets.test.labels.numpy(), sr.sets.corpus.meta["unseen_classes"])
                pooled[True].append(values[had_train])
                pooled[False].append(values[~had_train])
            for flag in (True, False):
                mean, ci, n = mean_ci(np.concatenate(pooled[flag]))
                row.append(fmt_ci(mean, ci) if n else "n/a")
        rows.append(row)
    if not rows:
        return None
    header = ["method", "learns from"] + [f"{m} {side}" for m in names for side in sides]
    what = ("Test views split by whether their source image had train views." if protocol == "instance" else
            "Test queries split by whether their class was seen in training (unseen classes are indexed, but no "
            "label or training pair of theirs reached any method).")
    return (what + " A method that only learnt its training pairs or labels does well on the first column and not "
            "the second; a label-free method cannot tell them apart. Means over the pooled test queries of all seeds "
            "± the 95% CI over those queries.\n\n" + md_table(header, rows))


def _class_names(images, positions: np.ndarray) -> list[str]:
    """Class name of each image position ('' for -1); several categories joined by '+'."""
    names = images.class_names
    out = []
    for p in np.asarray(positions).tolist():
        if p < 0:
            out.append("")
        elif images.labels.ndim == 1:
            label = int(images.labels[p])
            out.append(names[label] if 0 <= label < len(names) else str(label))
        else:
            out.append("+".join(names[c] for c in images.labels[p].nonzero().flatten().tolist()[:3]))
    return out


def precision_and_grid_section(record: StudyRecord, out: Path, rel: str, cache: dict) -> str | None:
    from vitdsi.metrics import chance_levels, per_query

    chosen = _best_per_method(record)
    if not chosen:
        return None
    curves, chance, parts, grid_done = {}, {}, [], False
    for t in chosen:
        loaded = _test_ranking(t, record, out, cache)
        if loaded is None:
            continue
        ids, sets, relevance = loaded
        kmax = min(100, ids.shape[1])
        names = [f"P@{k}" for k in range(1, kmax + 1)]
        values = per_query(ids, relevance, names)
        label = _label(t, record)
        curves[label] = np.array([np.nanmean(values[n]) for n in names])
        ch = chance_levels(relevance, names, ids.shape[1])
        chance[label] = np.array([ch[n] for n in names])
        if not grid_done:
            n_q = min(GRID_QUERIES, len(sets.test))
            k = min(GRID_K, ids.shape[1])
            top = ids[:n_q, :k]
            imgs = sets.corpus.images.numpy()
            results = np.where((top >= 0)[..., None, None, None], imgs[np.maximum(top, 0)], 0).astype(np.uint8)
            fig = plots.retrieval_grid(sets.test.images[:n_q].numpy(), results, relevance.gather(ids)[:n_q, :k],
                                       out / "query_grid.png", f"chosen trial #{t.number} {label}: test queries -> top {k}",
                                       query_labels=_class_names(sets.test, np.arange(n_q)),
                                       result_labels=[_class_names(sets.corpus, row) for row in top])
            parts.append(f"Query → top-{k} for the chosen trial (#{t.number}, {label}), class names under each image; "
                         "green frames are relevant results:\n\n"
                         f"![query grid]({rel}/{fig.name})")
            grid_done = True
    if curves:
        fig = plots.precision_curve(curves, chance, out / "precision_at_k.png", f"{record.name}: Precision@K")
        parts.insert(0, f"Precision@K for K = 1..100, best trial per method, test queries (dotted: chance):\n\n"
                        f"![precision at K]({rel}/{fig.name})")
    return "\n\n".join(parts) if parts else None


# ---- the report ---------------------------------------------------------------------------
def write_report(study: str, *, tracking_uri: str | None = None, scale: str | None = None,
                 out_dir: str | Path = "reports") -> Path:
    """Write out_dir/STUDY.md and out_dir/STUDY/*.png; returns the markdown path."""
    record = load_study_record(study, tracking_uri, scale)
    out_dir = Path(out_dir)
    fig_dir = out_dir / study
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()
    rel = study
    desc = (record.resolved.get("description") or "").strip()
    sections = [f"# Study `{study}`", desc, "## Set-up", header_section(record)]
    latency = latency_section(record, fig_dir, rel)
    if latency:
        sections += ["## Latency against database size", latency]
    if any(t.metrics for t in record.trials):
        sections += ["## Results", results_section(record), best_section(record)]
    failed = failed_section(record)
    if failed:
        sections += ["## Failed trials", failed]
    table1 = table1_section(record)
    if table1:
        sections += ["## Table 1 beside the paper", table1]
    imp = importance_section(record)
    if imp:
        sections += ["## Parameter importances", imp]
    from bench.report_continual import continual_section

    continual = continual_section(record, fig_dir, rel)
    if continual:
        sections += ["## Continual indexing", continual]
    curves = curves_section(record, fig_dir, rel)
    if curves:
        sections += ["## Training curves", curves]
    if any(t.metrics for t in record.trials):
        rankings: dict = {}  # trial rankings and splits, read once for both sections
        paired = paired_section(record, fig_dir, rankings)
        if paired:
            sections += ["## Paired comparisons", paired]
        seen = seen_in_training_section(record, fig_dir, rankings)
        if seen:
            sections += ["## Seen and unseen in training", seen]
        pk = precision_and_grid_section(record, fig_dir, rel, rankings)
        if pk:
            sections += ["## Precision@K and example queries", pk]
    shutil.rmtree(fig_dir / ".artifacts", ignore_errors=True)  # downloaded artifacts, not part of the report
    md = "\n\n".join(s for s in sections if s) + "\n"
    path = out_dir / f"{study}.md"
    path.write_text(md)
    return path
