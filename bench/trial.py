"""One trial: dataset + split, build the retriever, index, query, score (paper sections 2-3).

Every seed of a trial, its test and validation metrics, and their summaries over seeds;
docs/design.md ("A trial") has the data flow and what model choice reads.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench.build_cost import cold_build_summary, extraction_of
from bench.config import DataConfig, TrialConfig
from bench.config.scoring import scored_k
from bench.convergence import training_summary, validation_set
from bench.kinds import kind_of
from bench.seed_checkpoints import SeedBuild, SeedCheckpoints
from vitdsi.data import ImageSet, Split, SplitSets, load_dataset, make_split
from vitdsi.data.protocols import apply_protocol
from vitdsi.metrics import (
    MetricValue,
    evaluate_with_values,
    indexing_accuracy,
    mean_ci,
    parse_metric,
)
from vitdsi.ranking import Ranking
from vitdsi.retrievers.base import Queries, Retriever
from vitdsi.retrievers.registry import create

_DATASETS: OrderedDict[str, ImageSet] = OrderedDict()  # load kwargs -> dataset, last few used
_SPLITS: OrderedDict[str, tuple[Split, SplitSets]] = OrderedDict()
_MAX_DATASETS, _MAX_SPLITS = 2, 8
_BUILT: dict[tuple[str, int, str | None], SeedBuild] = {}  # built indexes, see _build


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
    """The split and its image sets under the config's protocol (cached per process)."""
    key = repr(data)  # every field: source, split and protocol with its options
    if key not in _SPLITS:
        images = dataset(data)
        split = make_split(images, **data.split_kwargs())
        # record where the positions point, so the split artifact alone finds its images
        split = Split(
            split.idb,
            split.train,
            split.val,
            split.test,
            params={**split.params, "dataset": data.name, "load": data.load_kwargs()},
        )
        _SPLITS[key] = (split, split_sets(data, split, images))
        while len(_SPLITS) > _MAX_SPLITS:
            _SPLITS.popitem(last=False)
    _SPLITS.move_to_end(key)
    return _SPLITS[key]


def split_sets(data: DataConfig, split: Split, images: ImageSet | None = None) -> SplitSets:
    """The image sets of `split` under the config's protocol: the split's own query images
    (`class`), new views of its indexed images (`instance`), the class split with some
    classes hidden from training (`unseen-classes`), with graded gains (`graded`), or captions
    of its indexed images as queries (`text`); see vitdsi.data.protocols."""
    images = images if images is not None else dataset(data)
    captions = split.indexed_captions(images) if data.protocol == "text" else None
    return apply_protocol(split.apply(images), data.protocol, data.seed, data.protocol_options(), captions)


@dataclass(frozen=True)
class Summary:
    """A metric of a trial on one query split: mean over seeds (or queries, for one seed) with its
    95% CI, and the CI over the pooled (seed, query) values."""

    mean: float
    ci95: float  # across seeds when n_seeds > 1, else across queries
    chance: float  # the metric under a uniformly random ranking, same queries
    n_queries: int  # queries averaged per seed
    n_seeds: int
    ci95_queries: float = float("nan")  # across the queries of all seeds pooled (the query-sample noise)

    def to_dict(self) -> dict[str, float]:
        return {
            "mean": self.mean,
            "ci95": self.ci95,
            "chance": self.chance,
            "n_queries": self.n_queries,
            "n_seeds": self.n_seeds,
            "ci95_queries": self.ci95_queries,
        }


@dataclass
class RepeatResult:
    seed: int  # training seed
    split: Split  # the split of this seed (its split seed is the study's + the repeat index)
    metrics: dict[str, MetricValue]  # per metric, over the test queries (IA: over the IDB)
    val_metrics: dict[str, MetricValue]  # ranked metrics over the validation queries (model choice)
    per_query: dict[str, dict[str, np.ndarray]]  # "test" / "val" -> metric -> [Q] values
    test: Ranking  # test queries x max cutoff, -1 padded
    val: Ranking  # validation queries x max cutoff, -1 padded
    indexing: Ranking | None  # IDB images queried with themselves (None without IA metrics)
    history: list[dict[str, Any]]  # per-epoch training log, when the retriever keeps one
    index_seconds: float  # wall time of retriever.index (a kind that indexes in steps: of every step)
    query_ms: float  # mean wall time per test query (batched search)
    # per step, for a study kind that indexes in steps
    steps: list[dict[str, float]] = field(default_factory=list)
    training: dict[str, Any] | None = (
        None  # the retriever's training record (vitdsi.training.monitor), if it trains
    )
    # frozen-encoder extraction seconds of the build (bench.build_cost; {}: none reported, or stepwise)
    extraction: dict[str, float] = field(default_factory=dict)


@dataclass
class TrialResult:
    config: TrialConfig
    split: Split  # the first seed's split
    repeats: list[RepeatResult]
    summary: dict[str, Summary]  # test queries (IA@K: the indexed images): the reported numbers
    val_summary: dict[str, Summary]  # validation queries: what model choice reads
    retriever: Retriever  # the first seed's trained index (saved as an artifact)
    device: str
    index_reused: bool = (
        False  # the indexes were built by an earlier trial of this process (query arguments differ)
    )
    timings: dict[str, float] = field(default_factory=dict)

    def value(self, metric: str) -> float:
        """The test value of `metric` (what reports print)."""
        return self.summary[metric].mean

    def objective(self, metric: str) -> float:
        """The value model choice reads: the validation queries' mean (IA@K, which queries the
        indexed images themselves, has no validation split and reads the indexed images)."""
        return (self.val_summary if metric in self.val_summary else self.summary)[metric].mean


EpochHook = Callable[[int, dict[str, Any]], None]  # (repeat index, epoch log dict)


def repeat_data(data: DataConfig, repeat: int) -> DataConfig:
    """The dataset config of repeat `repeat`: the split seed moves with the training seed, so
    seeds measure split noise as well as training noise."""
    return data if repeat == 0 else data.replace(seed=data.seed + repeat)


def run_trial(
    cfg: TrialConfig,
    *,
    device: str | None = None,
    on_epoch: EpochHook | None = None,
    checkpoints: SeedCheckpoints | None = None,
) -> TrialResult:
    """Run every seed of one trial and summarise it. Only the indexed images and the train
    queries reach the retriever's `index`; validation and test queries are only searched.
    `checkpoints`: each seed's build is logged there once built, and seeds an interrupted run of
    this trial built are restored from there instead of trained again (bench.seed_checkpoints)."""
    ranked = [m for m in cfg.metrics if not parse_metric(m).is_indexing]
    ia_ks = sorted({parse_metric(m).k for m in cfg.metrics if parse_metric(m).is_indexing})
    k_test = scored_k(cfg.metrics)  # MRR without a cutoff looks at the returned list: it returns 100
    repeats, kept, measured = [], None, {}
    study_kind = kind_of(cfg)
    for r in range(cfg.repeats):
        seed = cfg.seed + r
        split, sets = prepare(repeat_data(cfg.dataset, r))
        built, reused = _build(cfg, r, sets, device, on_epoch, ranked, k_test, checkpoints)
        retriever, index_seconds, history = built.retriever, built.index_seconds, built.history
        repeats.append(_score(cfg, seed, split, sets, built, ranked, ia_ks, k_test))
        if kept is None:
            kept = retriever
            if study_kind is not None:
                measured = study_kind[0].measure(
                    retriever, sets, study_kind[1], index_seconds, k_test, history
                )
    return TrialResult(
        config=cfg,
        split=repeats[0].split,
        repeats=repeats,
        summary=summarise(repeats, cfg.metrics, "test"),
        val_summary=summarise(repeats, [m for m in ranked if repeats[0].val_metrics], "val"),
        retriever=kept,
        device=str(kept.device),
        index_reused=reused,
        timings={
            "n_indexed": float(repeats[0].split.idb.size),
            "index_seconds": float(np.mean([x.index_seconds for x in repeats])),
            "query_ms": float(np.mean([x.query_ms for x in repeats])),
            **search_settings(kept, k_test),
            **training_summary([x.training for x in repeats], [x.index_seconds for x in repeats]),
            **cold_build_summary([x.extraction for x in repeats], [x.index_seconds for x in repeats]),
            **measured,
        },
    )


def _score(
    cfg: TrialConfig,
    seed: int,
    split: Split,
    sets: SplitSets,
    built: SeedBuild,
    ranked: list[str],
    ia_ks: list[int],
    k_test: int,
) -> RepeatResult:
    """One seed's built index searched with its test and validation queries (and its indexed
    images for IA@K), and scored."""
    retriever, corpus = built.retriever, sets.corpus
    t0 = time.perf_counter()
    test = _search_padded(retriever, sets.queries("test"), k_test)
    query_ms = 1000 * (time.perf_counter() - t0) / max(sets.n_queries("test"), 1)
    val = _search_padded(retriever, sets.queries("val"), k_test)
    values = {"test": {}, "val": {}}
    metrics, val_metrics = {}, {}
    if ranked:
        metrics, values["test"] = evaluate_with_values(test.ids, sets.relevance("test"), ranked)
        if sets.n_queries("val"):
            val_metrics, values["val"] = evaluate_with_values(val.ids, sets.relevance("val"), ranked)
    indexing = None
    if ia_ks:
        indexing = _search_padded(retriever, corpus.images, max(ia_ks), indexed=True)
        metrics.update(indexing_accuracy(indexing.ids, len(corpus), ks=ia_ks))
    return RepeatResult(
        seed,
        split,
        {m: metrics[m] for m in cfg.metrics},
        val_metrics,
        values,
        test,
        val,
        indexing,
        built.history,
        built.index_seconds,
        query_ms,
        built.steps,
        built.training,
        built.extraction,
    )


def search_settings(retriever: Retriever, k: int) -> dict[str, float]:
    """How a trial searched, logged beside its numbers: `search_k` (results per query, the k every
    metric is scored at and latency timed at) and the retriever's `search_info` for the k it is
    asked (at most the corpus size), e.g. a DSI's `search_beam` and `id_length`."""
    return {"search_k": float(k), **retriever.search_info(min(k, retriever.corpus_size))}


def _build(
    cfg: TrialConfig,
    r: int,
    sets: SplitSets,
    device: str | None,
    on_epoch: EpochHook | None,
    ranked: list[str],
    k_test: int,
    checkpoints: SeedCheckpoints | None = None,
) -> tuple[SeedBuild, bool]:
    """Repeat `r`'s index with the trial's query arguments set: (the build, with the steps of a
    study kind that indexes in steps, and whether it was reused). The indexes of the last build fingerprint
    stay in memory, so trials that differ only in query arguments build once (put query arguments
    last in a grid's `space` so that such points run one after another); an index built in steps
    is not kept in memory, but it is checkpointed with its steps' records."""
    key = (cfg.fingerprint(), r, device)
    study_kind = kind_of(cfg)
    stepwise = study_kind if study_kind is not None and study_kind[0].indexes else None
    in_memory = _BUILT.get(key) if stepwise is None else None
    earlier = in_memory
    if earlier is None and checkpoints is not None:
        earlier = checkpoints.load(r, device)
    if earlier is not None:  # built by an earlier trial of this worker, or by an interrupted run
        earlier.retriever.set_query_arguments(**{**earlier.retriever.query_defaults, **cfg.query})
        _replay(on_epoch, r, earlier.history)  # the curves of the build, in this run too
        if stepwise is None:
            _keep(key, earlier)
        return earlier, in_memory is not None
    retriever = create(cfg.retriever, **cfg.params, seed=cfg.seed + r, device=device)
    retriever.set_query_arguments(**cfg.query)
    hook = (lambda entry: on_epoch(r, _as_dict(entry))) if on_epoch and retriever.reports_epochs else None
    steps: list[dict[str, float]] = []
    t0 = time.perf_counter()
    if stepwise is not None:
        steps = stepwise[0].index(retriever, sets, stepwise[1], ranked, k_test, validation_set(cfg, sets))
    else:
        # text retrievers learn from the captions the corpus carries (the text protocol's train part)
        train = sets.train if retriever.query_kind == "image" else None
        retriever.index(sets.corpus, train_queries=train, on_epoch=hook, validation=validation_set(cfg, sets))
    index_seconds = time.perf_counter() - t0
    history = [_as_dict(e) for e in getattr(retriever, "history", None) or []]
    if on_epoch is not None and not retriever.reports_epochs:
        _replay(on_epoch, r, history)
    built = SeedBuild(
        retriever,
        index_seconds,
        history,
        getattr(retriever, "training_record", None),
        {} if steps else extraction_of(retriever),
        steps,
    )
    if stepwise is None:
        _keep(key, built)
    if checkpoints is not None:
        checkpoints.save(r, built)
    return built, False


def _keep(key: tuple[str, int, str | None], built: SeedBuild) -> None:
    for old in [k for k in _BUILT if k[0] != key[0]]:  # one build (all its repeats) at a time
        del _BUILT[old]
    _BUILT[key] = built


def _replay(on_epoch: EpochHook | None, r: int, history: list[dict[str, Any]]) -> None:
    for entry in history if on_epoch is not None else []:
        on_epoch(r, entry)


def forget_built() -> None:
    """Drop the kept indexes (bench.study calls it when a run starts and ends)."""
    _BUILT.clear()


def summarise(repeats: list[RepeatResult], metrics, which: str = "test") -> dict[str, Summary]:
    """Per metric: mean over seeds ± CI across seeds (across queries for one seed), and the CI
    over all seeds' queries pooled. `which` is "test" or "val"."""
    out = {}
    for m in metrics:
        values = [(r.metrics if which == "test" else r.val_metrics)[m] for r in repeats]
        pooled = [r.per_query[which][m] for r in repeats if m in r.per_query[which]]
        q_ci = mean_ci(np.concatenate(pooled))[1] if pooled else values[0].ci95
        if len(values) == 1:
            v = values[0]
            out[m] = Summary(v.mean, v.ci95, v.chance, v.n, 1, q_ci)
        else:
            mean, ci, _ = mean_ci(np.array([v.mean for v in values]))
            out[m] = Summary(
                mean, ci, float(np.nanmean([v.chance for v in values])), values[0].n, len(values), q_ci
            )
    return out


def _search_padded(retriever: Retriever, queries: Queries, k: int, indexed: bool = False) -> Ranking:
    """Top-k, asking for at most the corpus size and padding the rest with -1 (a metric at
    a cutoff beyond the corpus then counts the missing places as non-relevant). `indexed`: the
    queries are the indexed images (IA@K), searched with `search_indexed`."""
    k_asked = min(k, retriever.corpus_size)
    ranking = (retriever.search_indexed if indexed else retriever.search)(queries, k_asked)
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
