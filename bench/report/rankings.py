"""Each trial's stored test rankings (artifacts), read back per seed with its split, and the
report section that re-scores them query by query: seen / unseen splits of the test queries
under the instance, unseen-classes and text protocols (the paired comparisons that also read
them are bench.report.paired)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.report.choice import best_per_method
from bench.report.data import StudyRecord, TrialRecord
from bench.report.markdown import fmt_ci, label, md_table
from bench.runs import open_trial_run
from bench.trial import repeat_data, split_sets
from vitdsi.data import Split
from vitdsi.data.protocols import get_protocol
from vitdsi.log import get_logger
from vitdsi.metrics import mean_ci, per_query

log = get_logger("bench.report")

LABEL_MATCHED = ("classifier", "dual-encoder")  # baselines trained on exactly the DSI's signal


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
            split = Split(
                *(arrays[f"{part}_{i}"] for part in ("idb", "train", "val", "test")), params=run.split.params
            )
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


def test_ranking(
    t: TrialRecord, record: StudyRecord, out: Path, cache: dict
) -> tuple[np.ndarray, Any, Any] | None:
    """The first seed's test ranking of a trial, its split's image sets and its relevance."""
    seeds = seed_rankings(t, record, out, cache)
    return (seeds[0].ids, seeds[0].sets, seeds[0].relevance) if seeds else None


def seen_in_training_section(record: StudyRecord, out: Path, cache: dict) -> str | None:
    """Each chosen method's test metrics on the test queries training saw something of and on
    the others, as the protocol splits them (vitdsi.data.protocols: views of images with and
    without train views, seen and unseen classes, captions of captioned and uncaptioned images)."""

    split = get_protocol(record.resolved.get("dataset", {}).get("protocol") or "class").seen
    if split is None:
        return None
    names = [m for m in record.metric_names() if not m.startswith("IA@")]
    rows = []
    for t in best_per_method(record):
        seeds = seed_rankings(t, record, out, cache)
        if not seeds:
            continue
        masks = [split.mask(sr.sets) for sr in seeds]
        n_seen = sum(int(mask.sum()) for mask in masks)
        n_all = sum(len(mask) for mask in masks)
        row = [label(t, record), t.supervision, f"{n_seen:,} / {n_all - n_seen:,}"]
        for m in names:
            pooled = {True: [], False: []}
            for sr, had_train in zip(seeds, masks):
                values = per_query(sr.ids, sr.relevance, [m])[m]
                pooled[True].append(values[had_train])
                pooled[False].append(values[~had_train])
            for flag in (True, False):
                mean, ci, n = mean_ci(np.concatenate(pooled[flag]))
                row.append(fmt_ci(mean, ci) if n else "n/a")
        rows.append(row)
    if not rows:
        return None
    counts = "test queries " + " / ".join(side.strip("()") for side in split.labels)
    header = ["method", "learns from", counts] + [f"{m} {side}" for m in names for side in split.labels]
    return (
        split.what + " A method that only learnt its training pairs or labels does well on the first column "
        "of each metric and not the second; a label-free method cannot tell them apart. Means over the "
        "pooled test queries of all seeds ± the 95% CI over those queries; the third column counts those "
        "queries on each side (summed over seeds): a side with a handful of them is an anecdote.\n\n"
        + md_table(header, rows)
    )
