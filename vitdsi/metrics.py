"""Retrieval metrics, defined once, vectorised over all queries (docs/design.md "Metrics and chance levels").

Follows the standard trec_eval definitions with binary relevance, as the DSI papers use
them, with one documented difference: AP@K divides by min(K, R) (R = number of relevant
corpus images), so a perfect top-K scores 1 even when R > K.

    P@K     relevant in the top K / K (missing results count as non-relevant)
    MAP@K   mean over queries of AP@K = sum of P@i at relevant ranks i <= K / min(K, R)
    R@K     relevant in the top K / R
    nDCG@K  DCG@K / ideal DCG@K (log2 discount, linear gain): binary gains (ideal has
            min(K, R) hits), or graded gains when the Relevance is graded (multi-label:
            the number of shared categories, or their Jaccard index; the ideal takes the
            K largest gains in the corpus), as trec_eval's ndcg_cut with graded qrels
    MRR     1 / rank of the first relevant result in the returned list (0 if none);
            MRR@K looks at the top K only
    FPR@K   non-relevant in the top K / all non-relevant corpus images (N - R)
    IA@K    indexing accuracy: query with each indexed image itself, hit when its own id
            is in the top K (R@K under identity relevance; see `indexing_accuracy`)

Queries with no relevant corpus image (R = 0) have undefined R, AP, nDCG and RR; every
metric is then NaN for that query and the query is left out of every mean (as trec_eval
leaves out queries absent from the qrels). FPR@K is likewise NaN when R = N. Each
`MetricValue` says how many queries it averaged, so exclusions are visible.

Chance levels are exact expectations under a uniformly random ranking of the corpus,
averaged over the same queries (`chance_levels`). The definitions do not change with the
relevance: a `SplitRelevance` (the text protocol) only hands each metric family its own
(a caption's own image for R@K and MRR, shared categories for the others).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from vitdsi.data.relevance import Relevance, SplitRelevance, as_numpy
from vitdsi.errors import VitDSIError

# ---- per-query metric functions ------------------------------------------------------
# Each takes rel (bool [Q, k] relevance of the returned ids), valid (bool [Q, k], id != -1),
# n_rel (int [Q]), corpus size N and cutoff K, and returns float64 [Q] (NaN = undefined).


def _nan_where_no_relevant(values: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
    return np.where(n_rel > 0, values, np.nan)


def _precision(rel, valid, n_rel, n, k):
    return _nan_where_no_relevant(rel[:, :k].sum(1) / k, n_rel)


def _average_precision(rel, valid, n_rel, n, k):
    top = rel[:, :k]
    precision_at_i = np.cumsum(top, axis=1) / np.arange(1, k + 1)
    denom = np.maximum(np.minimum(n_rel, k), 1)
    return _nan_where_no_relevant((precision_at_i * top).sum(1) / denom, n_rel)


def _recall(rel, valid, n_rel, n, k):
    return _nan_where_no_relevant(rel[:, :k].sum(1) / np.maximum(n_rel, 1), n_rel)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def _ndcg(rel, valid, n_rel, n, k):
    disc = _discounts(k)
    dcg = (rel[:, :k] * disc).sum(1)
    ideal = np.concatenate([[1.0], np.cumsum(disc)])[np.minimum(n_rel, k)]
    return _nan_where_no_relevant(dcg / np.where(ideal > 0, ideal, 1.0), n_rel)


def _graded_ndcg(gains: np.ndarray, ideal: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """nDCG@k with real-valued gains [Q, >=k] and each query's ideal gains [Q, >=k], descending."""
    disc = _discounts(k)
    dcg = (gains[:, :k] * disc).sum(1)
    idcg = (ideal[:, :k] * disc).sum(1)
    return _nan_where_no_relevant(dcg / np.where(idcg > 0, idcg, 1.0), n_rel)


def _reciprocal_rank(rel, valid, n_rel, n, k):
    top = rel[:, :k]
    first = top.argmax(1)
    rr = np.where(top.any(1), 1.0 / (first + 1), 0.0)
    return _nan_where_no_relevant(rr, n_rel)


def _false_positive_rate(rel, valid, n_rel, n, k):
    false_pos = (valid[:, :k] & ~rel[:, :k]).sum(1)
    n_nonrel = n - n_rel
    return np.where((n_rel > 0) & (n_nonrel > 0), false_pos / np.maximum(n_nonrel, 1), np.nan)


# ---- exact chance levels under a uniformly random ranking ----------------------------
# Each takes R (int [U] distinct relevant counts), N and K and returns float64 [U].


def _chance_precision(r, n, k):
    return r / n


def _chance_recall(r, n, k):
    return np.full(r.shape, k / n)


def _chance_average_precision(r, n, k):
    # E[rel_i * hits_i] = P(rel_i) * E[hits_i | rel_i] = (R/N) * (1 + (i-1)(R-1)/(N-1))
    i = np.arange(1, k + 1)[None, :]
    ratio = np.where(n > 1, (r[:, None] - 1) / max(n - 1, 1), 0.0)
    terms = (r[:, None] / n) * (1 + (i - 1) * ratio) / i
    return terms.sum(1) / np.minimum(r, k)


def _chance_ndcg(r, n, k):
    disc = _discounts(k)
    ideal = np.concatenate([[1.0], np.cumsum(disc)])[np.minimum(r, k).astype(np.int64)]
    return (r / n) * disc.sum() / ideal


def _chance_reciprocal_rank(r, n, k):
    # P(first relevant at rank i) = prod_{j<i-1} (N-R-j)/(N-j) * R/(N-i+1)
    i = np.arange(1, k + 1)[None, :]
    j = np.arange(0, k)[None, :]
    miss = np.clip((n - r[:, None] - j) / (n - j), 0.0, 1.0)  # P(rank j+1 non-relevant | earlier misses)
    survive = np.concatenate([np.ones((len(r), 1)), np.cumprod(miss, axis=1)[:, :-1]], axis=1)
    first_at = survive * r[:, None] / (n - i + 1)
    return (first_at / i).sum(1)


def _chance_false_positive_rate(r, n, k):
    return np.full(r.shape, k / n)


# ---- the metric table ----------------------------------------------------------------
@dataclass(frozen=True)
class MetricFamily:
    name: str  # prefix in metric names, e.g. "MAP" in "MAP@10"
    fn: Callable[..., np.ndarray]  # per-query values
    chance: Callable[..., np.ndarray]  # exact expectation under random ranking, per R
    higher_is_better: bool
    needs_k: bool  # whether "@K" is required (MRR takes it optionally)
    description: str


METRIC_FAMILIES: dict[str, MetricFamily] = {
    f.name: f
    for f in [
        MetricFamily("P", _precision, _chance_precision, True, True, "precision: relevant in the top K / K"),
        MetricFamily(
            "MAP",
            _average_precision,
            _chance_average_precision,
            True,
            True,
            "mean average precision: sum of P@i at relevant ranks i <= K / min(K, R)",
        ),
        MetricFamily(
            "R", _recall, _chance_recall, True, True, "recall: relevant in the top K / all relevant"
        ),
        MetricFamily(
            "nDCG", _ndcg, _chance_ndcg, True, True, "normalised discounted cumulative gain, binary gains"
        ),
        MetricFamily(
            "MRR",
            _reciprocal_rank,
            _chance_reciprocal_rank,
            True,
            False,
            "mean reciprocal rank of the first relevant result",
        ),
        MetricFamily(
            "FPR",
            _false_positive_rate,
            _chance_false_positive_rate,
            False,
            True,
            "false positive rate: non-relevant in the top K / all non-relevant",
        ),
        MetricFamily(
            "IA",
            _recall,
            _chance_recall,
            True,
            True,
            "indexing accuracy: own id in the top K when querying with an indexed image",
        ),
    ]
}

DEFAULT_METRICS: tuple[str, ...] = ("P@10", "MAP@10", "R@100", "nDCG@10", "MRR", "FPR@10")
INDEXING_METRICS: tuple[str, ...] = ("IA@1", "IA@5")

_NAME = re.compile(r"^(?P<family>[A-Za-z]+)(@(?P<k>\d+))?$")


@dataclass(frozen=True)
class Metric:
    name: str  # canonical name, e.g. "MAP@10"
    family: MetricFamily
    k: int | None  # cutoff; None = the whole returned list (MRR only)

    @property
    def higher_is_better(self) -> bool:
        return self.family.higher_is_better

    @property
    def description(self) -> str:
        return self.family.description

    @property
    def is_indexing(self) -> bool:
        return self.family.name == "IA"

    def cutoff(self, k_returned: int) -> int:
        return self.k if self.k is not None else k_returned


def parse_metric(name: str) -> Metric:
    """ "MAP@10" -> Metric; an unknown family or a missing / stray K is a clear error."""
    m = _NAME.match(name.strip())
    family = METRIC_FAMILIES.get(m.group("family")) if m else None
    if family is None:
        raise VitDSIError(
            f"unknown metric '{name}'; known families: {', '.join(METRIC_FAMILIES)}, each with a cutoff "
            "such as MAP@10 or P@5 (MRR also without one)"
        )
    k = int(m.group("k")) if m.group("k") else None
    if family.needs_k and k is None:
        raise VitDSIError(f"metric '{name}' needs a cutoff, e.g. '{family.name}@10'")
    if k is not None and k < 1:
        raise VitDSIError(f"metric '{name}': the cutoff must be at least 1")
    return Metric(name=f"{family.name}@{k}" if k else family.name, family=family, k=k)


def max_cutoff(names: Iterable[str]) -> int:
    """The largest K the named metrics need (how many results to ask a retriever for)."""
    return max((parse_metric(n).k or 1 for n in names), default=1)


# ---- evaluation ----------------------------------------------------------------------
@dataclass(frozen=True)
class MetricValue:
    mean: float  # mean over the queries where the metric is defined
    ci95: float  # half-width of the 95% confidence interval of the mean (Student t); NaN if n < 2
    chance: float  # expectation under a uniformly random ranking, same queries
    n: int  # number of queries averaged

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.ci95:.4f} (chance {self.chance:.4f}, n={self.n})"


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean, half-width of the Student-t confidence interval and count of non-NaN values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / np.sqrt(n)
    return float(v.mean()), float(half), n


def per_query(
    ids, relevance: Relevance | SplitRelevance, names: Iterable[str] = DEFAULT_METRICS
) -> dict[str, np.ndarray]:
    """float64 [Q] per metric; NaN where a metric is undefined for a query (see module doc). A
    `SplitRelevance` gives each metric family its own relevance (the text protocol)."""
    ids = as_numpy(ids).astype(np.int64, copy=False)
    metrics = [parse_metric(n) for n in names]
    if ids.ndim != 2:
        raise VitDSIError(f"ranking ids must be 2-d [queries, k], got shape {ids.shape}")
    need = max((m.k or 0 for m in metrics), default=0)
    if need > ids.shape[1]:
        if ids.shape[1] < relevance.corpus_size:
            raise VitDSIError(
                f"metric(s) with cutoff {need} need at least {need} results per query but the ranking has "
                f"k={ids.shape[1]}; search with k={min(need, relevance.corpus_size)}"
            )
        # the whole corpus was returned: a larger cutoff sees nothing more (missing = non-relevant)
        ids = np.pad(ids, ((0, 0), (0, need - ids.shape[1])), constant_values=-1)
    k_returned = ids.shape[1]
    valid = ids >= 0
    n = relevance.corpus_size
    gathered: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per distinct relevance: (rel, n_rel), once
    out = {}
    for m in metrics:
        rm = relevance.for_family(m.family.name)
        if id(rm) not in gathered:
            gathered[id(rm)] = (rm.gather(ids), rm.n_relevant())
        rel, n_rel = gathered[id(rm)]
        k = m.cutoff(k_returned)
        if m.family.name == "nDCG" and rm.graded:
            out[m.name] = _graded_ndcg(rm.gains(ids), rm.ideal_gains(k), n_rel, k)
        else:
            out[m.name] = m.family.fn(rel, valid, n_rel, n, k)
    return out


def chance_levels(
    relevance: Relevance | SplitRelevance, names: Iterable[str], k_returned: int
) -> dict[str, float]:
    """Expected value of each metric under a uniformly random ranking of the corpus,
    averaged over the queries where the metric is defined."""
    n = relevance.corpus_size
    out = {}
    for m in (parse_metric(x) for x in names):
        rm = relevance.for_family(m.family.name)
        n_rel = rm.n_relevant()
        k = min(m.cutoff(k_returned), n)
        defined = n_rel > 0
        if m.family.name == "FPR":
            defined &= n_rel < n
        if not defined.any():
            out[m.name] = float("nan")
            continue
        if m.family.name == "nDCG" and rm.graded:
            # a uniformly random ranking puts an expected mean_gain at every rank: E[DCG@k] = mean_gain *
            # sum(disc)
            idcg = (rm.ideal_gains(k) * _discounts(k)).sum(1)
            per_query_chance = rm.mean_gains() * _discounts(k).sum() / np.where(idcg > 0, idcg, 1.0)
            out[m.name] = float(per_query_chance[defined].mean())
            continue
        distinct, inverse = np.unique(n_rel[defined], return_inverse=True)
        per_r = m.family.chance(distinct.astype(np.float64), float(n), k)
        if m.family.name == "P":  # a cutoff beyond the corpus still divides by K
            per_r = per_r * k / m.cutoff(k_returned)
        out[m.name] = float(per_r[inverse].mean())
    return out


def evaluate(
    ids, relevance: Relevance | SplitRelevance, names: Iterable[str] = DEFAULT_METRICS
) -> dict[str, MetricValue]:
    """Mean, 95% CI and chance level of each named metric over all queries."""
    return evaluate_with_values(ids, relevance, names)[0]


def evaluate_with_values(
    ids, relevance: Relevance | SplitRelevance, names: Iterable[str] = DEFAULT_METRICS
) -> tuple[dict[str, MetricValue], dict[str, np.ndarray]]:
    """`evaluate`, and the per-query values behind each mean (for paired tests and pooling seeds)."""
    names = list(names)
    values = per_query(ids, relevance, names)
    chance = chance_levels(relevance, names, as_numpy(ids).shape[1])
    out = {}
    for name, v in values.items():
        mean, ci, n = mean_ci(v)
        out[name] = MetricValue(mean, ci, chance[name], n)
    return out, values


def indexing_accuracy(
    ids, corpus_size: int, positions=None, ks: Iterable[int] = (1, 5)
) -> dict[str, MetricValue]:
    """IA@K: row q of `ids` answers a query made of indexed image `positions[q]` (all indexed
    images in order when omitted); a hit when that image's own position is in the top K."""
    ids = as_numpy(ids)
    own = (
        np.arange(ids.shape[0], dtype=np.int64) if positions is None else as_numpy(positions).astype(np.int64)
    )
    relevance = Relevance(own, np.arange(corpus_size, dtype=np.int64))
    return evaluate(ids, relevance, [f"IA@{k}" for k in ks])
