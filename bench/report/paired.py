"""The report's paired comparisons: is this trial better than that one?

Every trial is compared with the chosen trial of its split (best objective on validation),
with the chosen trial of each method in `report.compare_with`, and (label-using trials) with
each label-matched baseline. The seed is the unit of inference (vitdsi.statistics): a
two-level bootstrap over seeds and their queries, or a paired t over per-seed means, gives
the interval and p; the pooled (seed, query) Wilcoxon test stays beside it as a secondary,
query-level column. Holm runs over every comparison of the report, across protocols, and a
tie is claimed only by an equivalence test at the study's `report.equivalence_margin`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.kinds import kind_of
from bench.report.choice import ranked
from bench.report.data import StudyRecord, TrialRecord
from bench.report.markdown import fmt, fmt_p, label, md_table, sort_value
from bench.report.rankings import LABEL_MATCHED, SeedRanking, seed_rankings
from vitdsi.metrics import per_query
from vitdsi.statistics import (
    ALPHA,
    MIN_SEEDS_FOR_FINDING,
    SEED_TESTS,
    PairedDifference,
    SeedLevelDifference,
    holm,
    paired_difference,
    seed_welch_t,
    verdict,
)


@dataclass(frozen=True)
class Comparison:
    """One trial against one reference on the same split and test queries."""

    protocol: str  # the protocol block of the report it is printed in
    split: str  # the searched dataset fields that define the split ("" when none are searched)
    reference: TrialRecord
    reference_is_chosen: bool  # the reference is the chosen trial of the split
    trial: TrialRecord
    seed_level: SeedLevelDifference  # the primary, seed-level difference trial − reference
    pooled: PairedDifference | None  # every (seed, query) pair as independent: secondary (None: unpaired)

    @property
    def paired(self) -> bool:
        """False for trials on different splits, compared by Welch's t over their seed means."""
        return self.pooled is not None


@dataclass(frozen=True)
class PairedFamily:
    """All comparisons of one report with their Holm-adjusted p-values."""

    metric: str  # the objective compared
    test: str  # "bootstrap" or "seed-t"
    margin: float | None  # equivalence margin in units of the metric, None when the study sets none
    comparisons: list[Comparison]
    p_holm: np.ndarray  # Holm over the difference p-values of every comparison
    p_equivalence_holm: np.ndarray  # Holm over the equivalence (TOST) p-values of every comparison

    def verdict(self, i: int) -> str:
        c = self.comparisons[i]
        words = verdict(c.seed_level.mean, self.p_holm[i], self.p_equivalence_holm[i], self.margin)
        words = words.replace("A better", "trial better").replace("B better", "reference better")
        if 1 < c.seed_level.n_seeds < MIN_SEEDS_FOR_FINDING:
            words += f" ({c.seed_level.n_seeds} seeds: exploratory)"
        return words


def _seed_differences(a: list[SeedRanking], b: list[SeedRanking], metric: str) -> list[np.ndarray]:
    """Per seed, the per-query differences a − b on the test queries both answered."""
    out = []
    for x in a:
        for y in b:
            if x.seed_index == y.seed_index and x.test_key == y.test_key:
                out.append(
                    per_query(x.ids, x.relevance, [metric])[metric]
                    - per_query(y.ids, y.relevance, [metric])[metric]
                )
    return out


def _pairs(record: StudyRecord) -> list[tuple[str, TrialRecord, bool, TrialRecord]]:
    """(split, reference, reference is chosen, trial) for every comparison the report makes."""
    groups: dict[tuple, list[TrialRecord]] = defaultdict(list)
    for t in ranked(record, record.trials):  # best first within each group
        groups[tuple(sorted((k, str(v)) for k, v in t.sampled.items() if k.startswith("dataset.")))].append(t)
    out = []
    for key, trials in sorted(groups.items(), key=lambda kv: [sort_value(v) for _, v in kv[0]]):
        if len(trials) < 2:
            continue
        split = " ".join(f"{k[len('dataset.') :]}={v}" for k, v in key)
        label_matched = [
            next(t for t in trials if t.retriever == name)
            for name in LABEL_MATCHED
            if any(t.retriever == name for t in trials)
        ]
        named = [
            next(t for t in trials if name in (t.method, t.retriever))  # report.compare_with: for every trial
            for name in record.compare_with
            if any(name in (t.method, t.retriever) for t in trials)
        ]
        for_all = {trials[0].number} | {t.number for t in named}
        seen = set()
        for ref in {r.number: r for r in [trials[0], *named, *label_matched]}.values():
            for t in trials:
                pair = frozenset((t.number, ref.number))
                if t is ref or pair in seen:
                    continue
                if ref.number not in for_all and t.tags.get("supervision.uses_labels") != "true":
                    continue  # a label-matched baseline is the reference for label-using methods only
                seen.add(pair)
                out.append((split, ref, ref is trials[0], t))
    return out


def _unpaired(protocol: str, record: StudyRecord, out: Path, cache: dict, margin) -> list[Comparison]:
    """Where no two trials share a split (e.g. a grid over the indexed fraction), every trial
    against the chosen one by Welch's t over their per-seed mean test metric: different queries,
    nothing to pair, the seed still the unit."""
    metric = record.objective
    scored = ranked(record, record.trials)
    if len(scored) < 2:
        return []

    def seed_means(t: TrialRecord) -> tuple[list[float], int]:
        seeds = seed_rankings(t, record, out, cache) or []
        values = [per_query(x.ids, x.relevance, [metric])[metric] for x in seeds]
        return [float(np.nanmean(v)) for v in values], int(sum(np.isfinite(v).sum() for v in values))

    ref_means, ref_n = seed_means(scored[0])
    out_list = []
    for t in scored[1:]:
        means, n = seed_means(t)
        if means and ref_means:
            diff = seed_welch_t(means, ref_means, margin=margin, n_queries=n + ref_n)
            out_list.append(Comparison(protocol, "", scored[0], True, t, diff, None))
    return out_list


def paired_family(parts: list[tuple[str, StudyRecord, Path]], cache: dict) -> PairedFamily | None:
    """Every comparison of a report, over its protocol blocks (`parts`: protocol, the record of
    that protocol, its figure folder), with Holm over all of them; None when there is none."""
    if not parts:
        return None
    record = parts[0][1]
    metric = record.objective
    kind = kind_of(record.resolved)
    if (kind is not None and not kind[0].paired) or metric.startswith("IA"):
        return None  # e.g. latency trials are not trained to be accurate; IA is not a per-query metric
    options = record.resolved.get("report", {})
    margin, test = options.get("equivalence_margin"), options.get("paired_test", "bootstrap")
    seed_test = SEED_TESTS[test]
    extra = {"n_boot": int(options.get("bootstrap_samples", 10_000))} if test == "bootstrap" else {}
    comparisons = []
    for protocol, sub, out in parts:
        pairs = _pairs(sub)
        if not pairs:  # no two trials share a split: nothing pairs them
            comparisons += _unpaired(protocol, sub, out, cache, margin)
        for split, ref, chosen, t in pairs:
            ref_seeds, t_seeds = seed_rankings(ref, sub, out, cache), seed_rankings(t, sub, out, cache)
            per_seed = _seed_differences(t_seeds, ref_seeds, metric) if ref_seeds and t_seeds else []
            if not per_seed:
                continue
            if test == "bootstrap":  # its own stream per pair, so a re-rendered report is identical
                extra["seed"] = 7919 * t.number + ref.number
            seed_level = seed_test(per_seed, margin=margin, **extra)
            pooled_diffs = np.concatenate(per_seed)  # the difference against 0 is the paired difference
            pooled = paired_difference(pooled_diffs, np.zeros_like(pooled_diffs))
            comparisons.append(Comparison(protocol, split, ref, chosen, t, seed_level, pooled))
    if not comparisons:
        return None
    return PairedFamily(
        metric,
        test,
        margin,
        comparisons,
        holm([c.seed_level.p_value for c in comparisons]),
        holm([c.seed_level.p_equivalence for c in comparisons]),
    )


def _interval(d: SeedLevelDifference) -> str:
    if np.isnan(d.low):
        return f"{d.mean:+.4f}"
    return f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"


def paired_section(family: PairedFamily | None, record: StudyRecord, protocol: str) -> str | None:
    """The comparisons of one protocol block as a table, with how they were tested."""
    if family is None:
        return None
    rows_of = [i for i, c in enumerate(family.comparisons) if c.protocol == protocol]
    if not rows_of:
        return None
    metric, margin = family.metric, family.margin

    def _short(t: TrialRecord, paired: bool) -> str:  # paired: without the split, which has its own column
        words = [w for w in label(t, record).split() if not (paired and w.startswith("dataset."))]
        return " ".join(words) or f"trial {t.number}"

    rows = []
    for i in rows_of:
        c = family.comparisons[i]
        row = [
            c.split or ("—" if c.paired else "unpaired: each its own split"),
            f"#{c.reference.number} {_short(c.reference, c.paired)}"
            + (" (chosen)" if c.reference_is_chosen else ""),
            f"#{c.trial.number} {_short(c.trial, c.paired)}",
            _interval(c.seed_level),
            fmt_p(c.seed_level.p_value),
            fmt_p(family.p_holm[i]),
        ]
        if margin is not None:
            row.append(fmt_p(family.p_equivalence_holm[i]))
        row += [
            family.verdict(i),
            str(c.seed_level.n_seeds),
            *(
                [f"{c.pooled.mean:+.4f} ± {fmt(c.pooled.ci95)}", fmt_p(c.pooled.p_value), str(c.pooled.n)]
                if c.paired
                else ["—", "—", "—"]
            ),
        ]
        rows.append(row)
    header = [
        "split",
        "reference (B)",
        "trial (A)",
        f"Δ {metric} A − B, seed-level [95% interval]",
        "p",
        "Holm p",
    ]
    if margin is not None:
        header.append(f"equivalence p (±{margin:g}, Holm)")
    header += ["verdict", "seeds", "Δ pooled queries ± CI (secondary)", "Wilcoxon p (secondary)", "pairs"]
    text = _paired_text(family, record)
    return text + "\n\n" + md_table(header, rows)


def _paired_text(family: PairedFamily, record: StudyRecord) -> str:
    """How the comparisons of `paired_section` were made and tested."""
    metric, margin = family.metric, family.margin
    n_all, n_protocols = len(family.comparisons), len({c.protocol for c in family.comparisons})
    how = (
        "a two-level bootstrap (seeds drawn with replacement, then the test queries within each drawn seed; "
        "percentile interval, the p-value that inverts it)"
        if family.test == "bootstrap"
        else "a paired Student t over the per-seed mean differences"
    )
    text = (
        f"Each trial against the chosen trial of its split (best {metric} on the validation queries); each "
        "trial that learns from labels also against the chosen trial of each label-matched baseline "
        "(`classifier`, `dual-encoder`) present"
        + (
            "; every trial also against the chosen trial of "
            f"{', '.join(f'`{n}`' for n in record.compare_with)} (the study's `report.compare_with`)"
            if record.compare_with
            else ""
        )
        + ". **The seed is the unit of inference:** Δ is the mean over seeds of the per-seed mean "
        f"difference in test {metric} (trial − reference, every seed one training run on one split), tested "
        f"(two trials on the same split) by {how}. Holm runs over all {n_all} comparisons of this report"
        + (f" (all {n_protocols} protocols)" if n_protocols > 1 else "")
        + f", family-wise error {ALPHA:.0%}. "
        + (
            f"A tie is claimed only when two one-sided tests show |Δ| < {margin:g} (equivalence p, Holm over "
            f"the same {n_all} comparisons); "
            if margin is not None
            else "The study states no equivalence margin (`report: {equivalence_margin: ...}`), so no tie is "
            "claimed; "
        )
        + 'otherwise the verdict is "undecided". '
        + (
            "Trials on different splits (here every trial has its own) answer different test queries, so "
            "nothing pairs them: each is compared with the chosen trial by Welch's t over the per-seed mean "
            f"{metric} (unpaired, the seed still the unit; TOST with the same standard error), and the "
            "query-level columns stay empty. "
            if any(not c.paired for c in family.comparisons)
            else ""
        )
        + f"Fewer than {MIN_SEEDS_FOR_FINDING} seeds make a verdict exploratory, not a finding. "
        "The last columns treat every (seed, query) pair as independent (paired t interval, Wilcoxon "
        "signed-rank p, not Holm-corrected): they describe these trained models on these queries, not the "
        "methods."
    )
    return text
