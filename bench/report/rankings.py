"""Report sections that read each trial's stored test rankings (artifacts) and re-score them
query by query: paired comparisons against the chosen trial and the label-matched baselines
(paired t CI, Wilcoxon, Holm), and seen / unseen splits of the test queries under the
instance, unseen-classes and text protocols."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.report.data import StudyRecord, TrialRecord
from bench.report.markdown import fmt, fmt_ci, label, md_table, sort_value
from vitdsi.log import get_logger

log = get_logger("bench.report")

MAX_CURVES = 8  # methods per figure before it stops being readable
LABEL_MATCHED = ("classifier", "dual-encoder")  # baselines trained on exactly the DSI's signal


def best_per_method(record: StudyRecord) -> list[TrialRecord]:
    """The trial of each method that model choice picks (best validation objective)."""
    sign = 1 if record.direction == "maximize" else -1
    best: dict[str, TrialRecord] = {}
    for t in record.trials:
        v = t.choice_value(record.objective)
        if v is None:
            continue
        key = t.method if len({x.method for x in record.trials}) > 1 else label(t, record)
        if key not in best or sign * v > sign * best[key].choice_value(record.objective):
            best[key] = t
    return sorted(best.values(), key=lambda t: -sign * t.choice_value(record.objective))[:MAX_CURVES]


@dataclass(frozen=True)
class SeedRanking:
    """One seed of a trial: its test ranking, the split's image sets and the relevance."""

    seed_index: int  # repeat index (0 = the study's seed)
    ids: np.ndarray  # int64 [test queries, k]
    sets: Any  # SplitSets of this seed's split
    relevance: Any  # Relevance of test queries against the corpus
    test_key: bytes  # the test positions, so two trials pair only on the same queries


def seed_rankings(t: TrialRecord, record: StudyRecord, out: Path, cache: dict) -> list[SeedRanking] | None:
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


def test_ranking(t: TrialRecord, record: StudyRecord, out: Path, cache: dict) -> tuple[np.ndarray, Any, Any] | None:
    """The first seed's test ranking of a trial, its split's image sets and its relevance."""
    seeds = seed_rankings(t, record, out, cache)
    return (seeds[0].ids, seeds[0].sets, seeds[0].relevance) if seeds else None


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
    chosen trial of each method the study names in `report.compare_with`; label-using trials
    also against the chosen trial of each label-matched baseline. Query by query over all
    seeds, Holm-corrected over the report."""
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
        return " ".join(w for w in label(t, record).split() if not w.startswith("dataset.")) or f"trial {t.number}"

    comparisons = []  # (split, reference, reference is the chosen trial, trial, difference)
    for key, trials in sorted(groups.items(), key=lambda kv: [sort_value(v) for _, v in kv[0]]):
        trials = sorted(trials, key=lambda t: -sign * t.choice_value(metric))
        label_matched = [next(t for t in trials if t.retriever == name)
                         for name in LABEL_MATCHED if any(t.retriever == name for t in trials)]
        named = [next(t for t in trials if name in (t.method, t.retriever))  # report.compare_with: for every trial
                 for name in record.compare_with if any(name in (t.method, t.retriever) for t in trials)]
        for_all = {trials[0].number} | {t.number for t in named}
        seen = set()
        for ref in {r.number: r for r in [trials[0], *named, *label_matched]}.values():
            ref_seeds = seed_rankings(ref, record, out, cache)
            if not ref_seeds:
                continue
            for t in trials:
                pair = frozenset((t.number, ref.number))
                if t is ref or pair in seen:
                    continue
                if ref.number not in for_all and t.tags.get("supervision.uses_labels") != "true":
                    continue  # a label-matched baseline is the reference for label-using methods only
                seen.add(pair)
                t_seeds = seed_rankings(t, record, out, cache)
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
            "(`classifier`, `dual-encoder`) present"
            + (f"; every trial also against the chosen trial of {', '.join(f'`{n}`' for n in record.compare_with)} "
               "(the study's `report.compare_with`)" if record.compare_with else "")
            + ": the mean "
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
    train views and on views of images that had none (generalisation to unseen images); the
    unseen-classes protocol by seen / unseen class, the text protocol by whether the caption's
    own image carried training captions."""
    from vitdsi.metrics import mean_ci, per_query

    protocol = record.resolved.get("dataset", {}).get("protocol")
    if protocol not in ("instance", "unseen-classes", "text"):
        return None
    sides = {"instance": ("(had train views)", "(no train view)"), "unseen-classes": ("(seen classes)", "(unseen classes)"),
             "text": ("(image captioned in training)", "(image not)")}[protocol]
    names = [m for m in record.metric_names() if not m.startswith("IA@")]
    rows = []
    for t in best_per_method(record):
        seeds = seed_rankings(t, record, out, cache)
        if not seeds:
            continue
        row = [label(t, record), t.supervision]
        for m in names:
            pooled = {True: [], False: []}
            for sr in seeds:
                values = per_query(sr.ids, sr.relevance, [m])[m]
                if protocol == "instance":
                    had_train = np.isin(sr.sets.test.view_of, sr.sets.train.view_of)
                elif protocol == "text":  # did the caption's own image carry training captions?
                    had_train = np.isin(sr.sets.text["test"].image, sr.sets.text["train"].image)
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
    what = {"instance": "Test views split by whether their source image had train views.",
            "unseen-classes": "Test queries split by whether their class was seen in training (unseen classes are "
                              "indexed, but no label or training pair of theirs reached any method).",
            "text": "Test captions split by whether the image they describe carried training captions (the rest of "
                    "the indexed images are known by their pixels alone: a caption-only method cannot find them)."}[protocol]
    return (what + " A method that only learnt its training pairs or labels does well on the first column and not "
            "the second; a label-free method cannot tell them apart. Means over the pooled test queries of all seeds "
            "± the 95% CI over those queries.\n\n" + md_table(header, rows))
