"""One trial: dataset + split, build the retriever, index, query, score (paper sections 2-3).

The data flow of DESIGN.md: config -> dataset + split -> retriever.index -> retriever.search
-> rankings -> metrics. Test queries are ranked against the indexed database (IDB) and
scored with `vitdsi.metrics.evaluate` on `Relevance.between(test, corpus)`; indexing accuracy
(IA@K) queries the IDB with its own images. A trial runs `repeats` seeds; its headline
numbers are the mean over seeds with a 95% CI across seeds (across queries for one seed).
Prepared datasets and splits are cached per process, so the trials of a study share them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench.config import DataConfig, TrialConfig
from vitdsi.data import ImageSet, Relevance, Split, SplitSets, load_dataset, make_split
from vitdsi.metrics import MetricValue, evaluate, indexing_accuracy, mean_ci, parse_metric
from vitdsi.retrievers.base import Ranking, Retriever, create

_DATASETS: OrderedDict[str, ImageSet] = OrderedDict()  # load kwargs -> dataset, last few used
_SPLITS: OrderedDict[str, tuple[Split, SplitSets]] = OrderedDict()
_MAX_DATASETS, _MAX_SPLITS = 2, 8


def _key(*parts: Any) -> str:
    return repr(parts)


def dataset(data: DataConfig) -> ImageSet:
    """The prepared dataset (cached per process)."""
    key = _key(data.name, sorted(data.load_kwargs().items()))
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(data.name, **data.load_kwargs())
        while len(_DATASETS) > _MAX_DATASETS:
            _DATASETS.popitem(last=False)
    _DATASETS.move_to_end(key)
    return _DATASETS[key]


def prepare(data: DataConfig) -> tuple[Split, SplitSets]:
    """The split and its image sets (cached per process)."""
    key = _key(data.name, sorted(data.load_kwargs().items()), sorted(data.split_kwargs().items()))
    if key not in _SPLITS:
        images = dataset(data)
        split = make_split(images, **data.split_kwargs())
        # record where the positions point, so the split artifact alone finds its images
        split = Split(split.idb, split.train, split.val, split.test,
                      params={**split.params, "dataset": data.name, "load": data.load_kwargs()})
        _SPLITS[key] = (split, split.apply(images))
        while len(_SPLITS) > _MAX_SPLITS:
            _SPLITS.popitem(last=False)
    _SPLITS.move_to_end(key)
    return _SPLITS[key]


@dataclass(frozen=True)
class Summary:
    """A metric of a trial: mean over seeds (or queries, for one seed) with its 95% CI."""

    mean: float
    ci95: float
    chance: float  # the metric under a uniformly random ranking, same queries
    n_queries: int  # queries averaged per seed
    n_seeds: int

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci95": self.ci95, "chance": self.chance, "n_queries": self.n_queries, "n_seeds": self.n_seeds}


@dataclass
class RepeatResult:
    seed: int
    metrics: dict[str, MetricValue]  # per metric, over the test queries (IA: over the IDB)
    test: Ranking  # test queries x max cutoff, -1 padded
    indexing: Ranking | None  # IDB images queried with themselves (None without IA metrics)
    history: list[dict[str, Any]]  # per-epoch training log, when the retriever keeps one
    index_seconds: float  # wall time of retriever.index
    query_ms: float  # mean wall time per test query (batched search)


@dataclass
class TrialResult:
    config: TrialConfig
    split: Split
    repeats: list[RepeatResult]
    summary: dict[str, Summary]
    retriever: Retriever  # the first seed's trained index (saved as an artifact)
    device: str
    timings: dict[str, float] = field(default_factory=dict)

    def value(self, metric: str) -> float:
        return self.summary[metric].mean


EpochHook = Callable[[int, dict[str, Any]], None]  # (repeat index, epoch log dict)


def run_trial(cfg: TrialConfig, *, device: str | None = None, on_epoch: EpochHook | None = None) -> TrialResult:
    """Run every seed of one trial and summarise it."""
    split, sets = prepare(cfg.dataset)
    ranked = [m for m in cfg.metrics if not parse_metric(m).is_indexing]
    ia_ks = sorted({parse_metric(m).k for m in cfg.metrics if parse_metric(m).is_indexing})
    corpus = sets.corpus
    k_test = max((parse_metric(m).k or 1 for m in ranked), default=1)
    if any(parse_metric(m).k is None for m in ranked):
        k_test = max(k_test, 100)  # MRR without a cutoff looks at the returned list: return 100
    repeats, kept, latency = [], None, {}
    for r in range(cfg.repeats):
        seed = cfg.seed + r
        retriever = create(cfg.retriever, **cfg.params, seed=seed, device=device)
        if cfg.query:
            retriever.set_query_arguments(**cfg.query)
        if on_epoch is not None and hasattr(retriever, "on_epoch"):
            retriever.on_epoch = lambda entry, r=r: on_epoch(r, _as_dict(entry))
        t0 = time.perf_counter()
        retriever.index(corpus, train_queries=sets.train)
        index_seconds = time.perf_counter() - t0
        history = [_as_dict(e) for e in getattr(retriever, "history", None) or []]
        if on_epoch is not None and not hasattr(retriever, "on_epoch"):
            for entry in history:
                on_epoch(r, entry)

        t0 = time.perf_counter()
        test = _search_padded(retriever, sets.test.images, k_test)
        query_ms = 1000 * (time.perf_counter() - t0) / max(len(sets.test), 1)
        metrics = dict(evaluate(test.ids, Relevance.between(sets.test, corpus), ranked)) if ranked else {}
        indexing = None
        if ia_ks:
            indexing = _search_padded(retriever, corpus.images, max(ia_ks))
            metrics.update(indexing_accuracy(indexing.ids, len(corpus), ks=ia_ks))
        metrics = {m: metrics[m] for m in cfg.metrics}
        repeats.append(RepeatResult(seed, metrics, test, indexing, history, index_seconds, query_ms))
        if kept is None:
            kept = retriever
            if cfg.latency is not None:
                latency = measure_latency(retriever, sets.test.images, cfg.latency, index_seconds)
        else:
            del retriever
    return TrialResult(
        config=cfg, split=split, repeats=repeats, summary=summarise(repeats, cfg.metrics), retriever=kept,
        device=str(kept.device),
        timings={"index_seconds": float(np.mean([x.index_seconds for x in repeats])),
                 "query_ms": float(np.mean([x.query_ms for x in repeats])), **latency},
    )


def measure_latency(retriever: Retriever, queries: torch.Tensor, opts: dict[str, Any], build_s: float) -> dict[str, float]:
    """Latency metrics of one indexed retriever (bench.latency): p50 / p95 ms per query at
    batch 1 and at opts['batch_size'], build seconds and saved-index bytes."""
    from bench.latency import index_bytes, measure_search

    k = min(opts["k"], retriever.corpus_size)
    one = measure_search(retriever, queries, k=k, batch_size=1, calls=opts["calls"], warmup=opts["warmup"],
                         threads=opts["threads"])
    many = measure_search(retriever, queries, k=k, batch_size=opts["batch_size"], calls=opts["batch_calls"],
                          warmup=min(opts["warmup"], 1), threads=opts["threads"])
    return {
        "n_indexed": float(retriever.corpus_size), "latency_b1_p50_ms": one.p50_ms, "latency_b1_p95_ms": one.p95_ms,
        "latency_batch_p50_ms": many.p50_ms, "latency_batch_p95_ms": many.p95_ms,
        "latency_batch_size": float(opts["batch_size"]), "latency_threads": float(opts["threads"]),
        "index_build_s": float(build_s), "index_bytes": float(index_bytes(retriever)),
    }


def summarise(repeats: list[RepeatResult], metrics) -> dict[str, Summary]:
    out = {}
    for m in metrics:
        values = [r.metrics[m] for r in repeats]
        if len(values) == 1:
            v = values[0]
            out[m] = Summary(v.mean, v.ci95, v.chance, v.n, 1)
        else:
            mean, ci, _ = mean_ci(np.array([v.mean for v in values]))
            out[m] = Summary(mean, ci, float(np.nanmean([v.chance for v in values])), values[0].n, len(values))
    return out


def _search_padded(retriever: Retriever, images: torch.Tensor, k: int) -> Ranking:
    """Top-k, asking for at most the corpus size and padding the rest with -1 (a metric at
    a cutoff beyond the corpus then counts the missing places as non-relevant)."""
    k_asked = min(k, retriever.corpus_size)
    ranking = retriever.search(images, k_asked)
    if k_asked == k:
        return ranking
    n = ranking.ids.shape[0]
    ids = torch.full((n, k), -1, dtype=torch.int64)
    scores = torch.full((n, k), float("-inf"), dtype=torch.float32)
    ids[:, :k_asked], scores[:, :k_asked] = ranking.ids, ranking.scores
    return Ranking(ids, scores)


def _as_dict(entry: Any) -> dict[str, Any]:
    if isinstance(entry, dict):
        return entry
    if hasattr(entry, "to_dict"):
        return entry.to_dict()
    return dict(vars(entry))
