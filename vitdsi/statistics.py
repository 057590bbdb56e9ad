"""Is method A better than method B? Paired inference over seeds and queries.

Two trained models answering the same test queries differ for two reasons: the methods, and
the luck of one training run and one split. The seed (one training run on one split) is the
unit a claim about methods has to generalise over, so the primary comparison here treats
seeds as the sampling unit and queries as nested within them:

- `hierarchical_bootstrap`: the two-level (cluster) bootstrap of Davison & Hinkley (1997,
  sec. 3.8) and Field & Welsh (2007): resample seeds with replacement, then queries within
  each drawn seed, and take the mean of the per-seed mean differences; a percentile interval
  and the p-value that inverts it.
- `seed_paired_t`: a paired Student t over the per-seed mean differences (a study can ask
  for it instead of the bootstrap).
- `seed_welch_t`: Welch's t over the per-seed means of two trials on different splits (nothing
  to pair: each answered its own queries), e.g. two indexed fractions.
- `paired_difference`: the pooled (seed, query) comparison with a Wilcoxon signed-rank p;
  kept as a secondary, query-level figure.
- Equivalence (Schuirmann 1987, two one-sided tests): a tie is claimed only when the
  difference is shown to lie within a stated margin; `holm` (Holm 1979) corrects a family of
  p-values; `verdict` turns both into the words a report prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from vitdsi.errors import VitDSIError
from vitdsi.metrics import mean_ci

ALPHA = 0.05  # family-wise error rate of every verdict
MIN_SEEDS_FOR_FINDING = 5  # fewer seeds than this: a comparison is reported, never called a finding


@dataclass(frozen=True)
class SeedLevelDifference:
    """Mean difference a − b of one metric, with the seed as the unit of inference."""

    mean: float  # mean over seeds of the per-seed mean difference
    low: float  # lower end of its 95% interval (NaN with one seed)
    high: float  # upper end of its 95% interval (NaN with one seed)
    p_value: float  # two-sided, H0: the mean difference is 0 (NaN with one seed)
    p_equivalence: float  # TOST p for H0: |difference| >= margin (NaN without a margin or with one seed)
    n_seeds: int  # seeds compared
    n_queries: int  # (seed, query) pairs behind them
    method: str  # "hierarchical bootstrap" or "paired t over seeds"


def _clean(per_seed: Sequence) -> list[np.ndarray]:
    """Per-seed difference arrays without the queries where either system is undefined (NaN);
    a seed left with no query is dropped."""
    out = []
    for d in per_seed:
        d = np.asarray(d, dtype=np.float64).ravel()
        d = d[~np.isnan(d)]
        if d.size:
            out.append(d)
    return out


def _within_seed_means(
    values: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 1024
) -> np.ndarray:
    """`n_boot` means of `values` resampled with replacement (in chunks, to bound memory)."""
    q = values.size
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        n = min(chunk, n_boot - start)
        out[start : start + n] = values[rng.integers(q, size=(n, q))].mean(axis=1)
    return out


def bootstrap_distribution(per_seed: Sequence, n_boot: int = 10_000, seed: int = 0) -> np.ndarray:
    """float64 [n_boot]: the two-level bootstrap distribution of the mean of per-seed means.

    Each replicate draws S seeds with replacement out of the S given and, for each drawn
    seed, a fresh resample of its queries. The fresh resample is taken from a bank of
    `n_boot` within-seed resample means per seed, one picked at random per draw: the same
    distribution as resampling afresh, at a cost of S * n_boot * Q instead of n_boot * S^2 * Q.
    """
    d = _clean(per_seed)
    if not d:
        raise VitDSIError("a bootstrap needs at least one seed with a defined difference")
    rng = np.random.default_rng(seed)
    s = len(d)
    bank = np.stack([_within_seed_means(v, n_boot, rng) for v in d])  # [S, n_boot]
    seeds = rng.integers(s, size=(n_boot, s))
    which = rng.integers(n_boot, size=(n_boot, s))
    return bank[seeds, which].mean(axis=1)


def _two_sided_p(dist: np.ndarray, null: float = 0.0) -> float:
    """The p-value that inverts the percentile interval: twice the smaller tail beyond `null`,
    with the (count + 1) / (B + 1) correction so that it is never exactly 0."""
    b = dist.size
    low = (np.count_nonzero(dist <= null) + 1) / (b + 1)
    high = (np.count_nonzero(dist >= null) + 1) / (b + 1)
    return float(min(1.0, 2 * min(low, high)))


def hierarchical_bootstrap(
    per_seed: Sequence,
    *,
    margin: float | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> SeedLevelDifference:
    """Seed-level comparison from per-seed arrays of per-query differences a − b.

    The estimate gives every seed equal weight (mean of per-seed means). With one seed there is
    nothing to say about training noise: the interval and p are NaN."""
    d = _clean(per_seed)
    n_q = int(sum(v.size for v in d))
    mean = float(np.mean([v.mean() for v in d])) if d else float("nan")
    if len(d) < 2:
        return SeedLevelDifference(
            mean,
            float("nan"),
            float("nan"),
            float("nan"),
            float("nan"),
            len(d),
            n_q,
            "hierarchical bootstrap",
        )
    dist = bootstrap_distribution(d, n_boot, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(dist, [tail, 1 - tail])
    p_eq = float("nan")
    if margin is not None:
        b = dist.size
        p_eq = float(
            max(
                (np.count_nonzero(dist <= -margin) + 1) / (b + 1),
                (np.count_nonzero(dist >= margin) + 1) / (b + 1),
            )
        )
    return SeedLevelDifference(
        mean, float(low), float(high), _two_sided_p(dist), p_eq, len(d), n_q, "hierarchical bootstrap"
    )


def tost_t(mean: float, se: float, df: int, margin: float) -> float:
    """Two one-sided t tests (Schuirmann 1987) for H0: |true difference| >= margin.

    p = max(P(T >= (mean + margin) / se), P(T <= (mean − margin) / se)) with T ~ t(df): small
    only when the difference is shown to be above −margin and below +margin at once."""
    if margin <= 0:
        raise VitDSIError(f"an equivalence margin must be positive, got {margin}")
    if se == 0:
        return 0.0 if abs(mean) < margin else 1.0
    p_lower = stats.t.sf((mean + margin) / se, df)
    p_upper = stats.t.cdf((mean - margin) / se, df)
    return float(max(p_lower, p_upper))


def seed_paired_t(
    per_seed: Sequence,
    *,
    margin: float | None = None,
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-1.0, 1.0),
) -> SeedLevelDifference:
    """Paired Student t over the per-seed mean differences (queries averaged within a seed); the
    interval is clipped to `bounds`, the range a difference of two [0, 1] metrics can take."""
    d = _clean(per_seed)
    means = np.array([v.mean() for v in d])
    n_q = int(sum(v.size for v in d))
    mean, half, n = mean_ci(means, confidence)
    if n < 2:
        return SeedLevelDifference(
            mean, float("nan"), float("nan"), float("nan"), float("nan"), n, n_q, "paired t over seeds"
        )
    se = float(means.std(ddof=1) / np.sqrt(n))
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    p_eq = tost_t(mean, se, n - 1, margin) if margin is not None else float("nan")
    low, high = max(bounds[0], mean - half), min(bounds[1], mean + half)
    return SeedLevelDifference(mean, low, high, p, p_eq, n, n_q, "paired t over seeds")


def seed_welch_t(
    a_means: Sequence[float],
    b_means: Sequence[float],
    *,
    margin: float | None = None,
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-1.0, 1.0),
    n_queries: int = 0,
) -> SeedLevelDifference:
    """Unpaired: Welch's t (Welch 1947) over the per-seed means of two trials that answered
    different queries (each seed of each its own split), so nothing pairs them; the seed is still
    the unit. Welch-Satterthwaite degrees of freedom; TOST with the same standard error and df;
    the interval clipped to `bounds`. `n_queries`: the queries behind the means, for the record."""
    a = np.asarray([v for v in a_means if not np.isnan(v)], dtype=np.float64)
    b = np.asarray([v for v in b_means if not np.isnan(v)], dtype=np.float64)
    n = min(a.size, b.size)
    method = "Welch t over seeds (unpaired)"
    mean = float(a.mean() - b.mean()) if n else float("nan")
    if n < 2:
        return SeedLevelDifference(
            mean, float("nan"), float("nan"), float("nan"), float("nan"), n, n_queries, method
        )
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = float(np.sqrt(va + vb))
    if se == 0:
        p, df, half = (1.0 if mean == 0 else 0.0), float(a.size + b.size - 2), 0.0
    else:
        df = float((va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)))
        p = float(2 * stats.t.sf(abs(mean) / se, df))
        half = float(stats.t.ppf(0.5 + confidence / 2, df) * se)
    p_eq = tost_t(mean, se, df, margin) if margin is not None else float("nan")
    low, high = max(bounds[0], mean - half), min(bounds[1], mean + half)
    return SeedLevelDifference(mean, low, high, p, p_eq, n, n_queries, method)


SEED_TESTS = {"bootstrap": hierarchical_bootstrap, "seed-t": seed_paired_t}  # study name -> test


@dataclass(frozen=True)
class PairedDifference:
    """Per-query difference a - b of one metric between two rankings of the same queries."""

    mean: float  # mean of a - b over the queries where both are defined
    ci95: float  # half-width of its paired Student-t confidence interval
    p_value: float  # two-sided Wilcoxon signed-rank test (zero differences dropped); 1.0 if all are zero
    n: int  # queries compared


def paired_difference(a, b, confidence: float = 0.95) -> PairedDifference:
    """Compare two systems on the same queries, every query an independent unit: the
    query-level figure, secondary to the seed-level tests above.

    Paired, because both systems answer the same queries: the spread of per-query
    differences is much smaller than that of either system's own values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise VitDSIError(
            f"paired values must be two 1-d arrays over the same queries, got {a.shape} and {b.shape}"
        )
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    mean, half, n = mean_ci(d, confidence)
    p = 1.0 if n == 0 or not np.any(d != 0) else float(stats.wilcoxon(d).pvalue)
    return PairedDifference(mean, half, p, n)


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979), controlling the family-wise error rate over
    all the comparisons given: sort ascending, multiply the i-th smallest (0-based) by (m - i),
    carry the running maximum so the adjusted values keep the order, cap at 1. NaN stays NaN
    and does not count as a comparison."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    order = np.argsort(p[ok], kind="stable")
    scaled = p[ok][order] * (m - np.arange(m))
    adjusted = np.minimum(1.0, np.maximum.accumulate(scaled))
    valid = np.empty(m)
    valid[order] = adjusted
    out[ok] = valid
    return out


def verdict(
    mean: float, p_difference: float, p_equivalence: float, margin: float | None, alpha: float = ALPHA
) -> str:
    """The words for one comparison of A (trial) against B (reference), from Holm-adjusted p's.

    A difference shown at level alpha names the better side; otherwise a tie is claimed only
    when the equivalence test shows |difference| < margin; otherwise "undecided"."""
    if np.isnan(p_difference):
        return "undecided (one seed)"
    if p_difference < alpha:
        return "A better" if mean > 0 else "B better"
    if margin is not None and not np.isnan(p_equivalence) and p_equivalence < alpha:
        return f"equivalent within ±{margin:g}"
    return "undecided" if margin is not None else "undecided (no equivalence margin)"
