"""Continual indexing inside a trial (DSI++, Mehta et al. 2022): index the first share of the
indexed images, bring in the rest in batches with `Retriever.add`, and after every step
measure what the index still finds (IA@1 of the original images and of each added batch),
how it retrieves (the study's ranked metrics on the test queries whose relevant images are
indexed by then) and what the step cost (wall seconds).

Train queries follow their images: under label relevance they all reach the first index;
under the instance protocol a view arrives with the batch that adds its source image.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from vitdsi.data import ImageSet, SplitSets
from vitdsi.data.relevance import Relevance, relevance_keys
from vitdsi.metrics import evaluate, indexing_accuracy
from vitdsi.retrievers.base import Retriever
from vitdsi.training.monitor import ValidationSet


def step_bounds(n: int, initial: float, steps: int) -> list[int]:
    """Corpus sizes after each step: the first index, then `steps` near-equal batches."""
    first = int(round(initial * n))
    sizes = [len(b) for b in np.array_split(np.arange(n - first), steps)]
    return [first] + (first + np.cumsum(sizes)).tolist()


def _queries_for(train: ImageSet | None, lo: int, hi: int, everything_first: bool) -> ImageSet | None:
    """The train queries that arrive with corpus positions lo..hi-1."""
    if train is None or len(train) == 0:
        return None
    if train.view_of is None:  # label relevance: every train query comes with the first index
        return train if everything_first else None
    keep = np.flatnonzero((train.view_of >= lo) & (train.view_of < hi))
    return train.subset(keep) if len(keep) else None


def _search_own(retriever: Retriever, images: torch.Tensor, first: int) -> float:
    """IA@1 of indexed images at positions first.. queried with themselves."""
    ids = retriever.search(images, 1).ids
    return float(
        indexing_accuracy(
            ids, retriever.corpus_size, positions=np.arange(first, first + len(images)), ks=(1,)
        )["IA@1"].mean
    )


def _ranked(retriever: Retriever, sets: SplitSets, n: int, metrics: list[str], k: int) -> dict[str, float]:
    """The ranked metrics on the test queries that have a relevant image among the first n."""
    query_keys, corpus_keys = relevance_keys(sets.test, sets.corpus)
    full = Relevance(query_keys.cpu().numpy(), corpus_keys.cpu().numpy()[:n], sets.grading)
    keep = np.flatnonzero(full.n_relevant() > 0)
    if not len(keep) or not metrics:
        return {}
    relevance = Relevance(full.query_labels[keep], full.corpus_labels, sets.grading)
    ranking = retriever.search(sets.test.images[torch.as_tensor(keep)], min(k, n))
    values = evaluate(ranking.ids, relevance, metrics)
    return {**{m: float(v.mean) for m, v in values.items()}, "test_queries": float(len(keep))}


def _validation_within(validation: ValidationSet | None, sets: SplitSets, n: int) -> ValidationSet | None:
    """`validation` against the first n indexed images: the validation queries with a relevant
    image among them (None when there are none)."""
    if validation is None or sets.val is None:
        return None
    query_keys, corpus_keys = relevance_keys(sets.val, sets.corpus)
    full = Relevance(query_keys.cpu().numpy(), corpus_keys.cpu().numpy()[:n], sets.grading)
    keep = np.flatnonzero(full.n_relevant() > 0)
    if not len(keep):
        return None
    relevance = Relevance(full.query_labels[keep], full.corpus_labels, sets.grading)
    return ValidationSet(sets.val.images[torch.as_tensor(keep)], relevance, validation.metric)


def index_continually(
    retriever: Retriever,
    sets: SplitSets,
    opts: dict[str, Any],
    metrics: list[str],
    k: int,
    validation: ValidationSet | None = None,
) -> list[dict[str, float]]:
    """Index `sets.corpus` step by step (opts: the `continual:` block, ContinualConfig); one record per
    step. The first index trains as an ordinary one does, checkpointed and stopped on `validation`
    (restricted to the queries its images answer); an add step trains as the add strategy says."""
    corpus = sets.corpus
    bounds = step_bounds(len(corpus), opts["initial"], opts["steps"])
    records, lo = [], 0
    for step, hi in enumerate(bounds):
        part = corpus.subset(np.arange(lo, hi))
        queries = _queries_for(sets.train, lo, hi, everything_first=step == 0)
        t0 = time.perf_counter()
        if step == 0:
            retriever.index(part, train_queries=queries, validation=_validation_within(validation, sets, hi))
        else:
            retriever.add(part, train_queries=queries)
        seconds = time.perf_counter() - t0
        record = {
            "step": float(step),
            "n_indexed": float(hi),
            "added": float(hi - lo),
            "seconds": seconds,
            "seconds_per_image": seconds / (hi - lo),
        }
        record["ia_original"] = _search_own(retriever, corpus.images[: bounds[0]], 0)
        for j in range(1, step + 1):
            record[f"ia_batch{j}"] = _search_own(
                retriever, corpus.images[bounds[j - 1] : bounds[j]], bounds[j - 1]
            )
        if step:
            record["ia_added"] = float(np.mean([record[f"ia_batch{j}"] for j in range(1, step + 1)]))
        record.update(_ranked(retriever, sets, hi, metrics, k))
        records.append(record)
        lo = hi
    return records
