"""Seed-level inference (vitdsi.statistics): the two-level bootstrap against a brute-force
enumeration of its exact distribution, TOST against a hand computation, Holm, verdicts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from vitdsi.errors import VitDSIError
from vitdsi.statistics import (
    bootstrap_distribution,
    hierarchical_bootstrap,
    holm,
    paired_difference,
    seed_paired_t,
    seed_welch_t,
    tost_t,
    verdict,
)

SEEDS = [np.array([0.3, -0.1, 0.0]), np.array([-0.2, 0.5])]  # per-query differences of two seeds


def _exact_distribution(per_seed):
    """Every outcome of the two-level bootstrap with its probability: S^S ordered seed draws,
    then every ordered resample (Q^Q) of each drawn seed's queries."""
    s = len(per_seed)
    outcomes: dict[float, float] = {}
    for picks in itertools.product(range(s), repeat=s):
        within = [
            [
                (float(np.mean(r)), 1 / len(per_seed[p]) ** len(per_seed[p]))
                for r in itertools.product(per_seed[p], repeat=len(per_seed[p]))
            ]
            for p in picks
        ]
        for combo in itertools.product(*within):
            value = round(sum(m for m, _ in combo) / s, 12)
            prob = math.prod(w for _, w in combo) / s**s
            outcomes[value] = outcomes.get(value, 0.0) + prob
    values = np.array(sorted(outcomes))
    return values, np.array([outcomes[v] for v in values])


def test_bootstrap_matches_brute_force_enumeration():
    values, probs = _exact_distribution(SEEDS)
    assert probs.sum() == pytest.approx(1.0)
    exact_mean = float((values * probs).sum())
    exact_sd = math.sqrt(float(((values - exact_mean) ** 2 * probs).sum()))
    exact_below0 = float(probs[values <= 0].sum())
    exact_q10 = float(values[np.searchsorted(np.cumsum(probs), 0.10)])

    b = 200_000
    dist = bootstrap_distribution(SEEDS, n_boot=b, seed=3)
    assert dist.shape == (b,)
    # Monte Carlo error of a mean is sd / sqrt(B); of a proportion sqrt(p(1-p)/B): allow 5 of each
    assert dist.mean() == pytest.approx(exact_mean, abs=5 * exact_sd / math.sqrt(b))
    assert dist.std() == pytest.approx(exact_sd, rel=0.01)
    assert np.mean(dist <= 0) == pytest.approx(
        exact_below0, abs=5 * math.sqrt(exact_below0 * (1 - exact_below0) / b)
    )
    assert np.quantile(dist, 0.10) == pytest.approx(exact_q10, abs=0.02)
    # the estimate gives each seed equal weight, not each query
    hb = hierarchical_bootstrap(SEEDS, n_boot=2000)
    assert hb.mean == pytest.approx((np.mean(SEEDS[0]) + np.mean(SEEDS[1])) / 2)
    assert hb.n_seeds == 2 and hb.n_queries == 5


def test_bootstrap_is_seeded_and_p_inverts_the_interval():
    rng = np.random.default_rng(0)
    shifted = [0.05 + 0.2 * rng.standard_normal(300) for _ in range(5)]
    a = hierarchical_bootstrap(shifted, n_boot=4000, seed=1)
    again = hierarchical_bootstrap(shifted, n_boot=4000, seed=1)
    assert (a.mean, a.low, a.high, a.p_value) == (again.mean, again.low, again.high, again.p_value)
    assert a.low > 0 and a.p_value < 0.05  # zero outside the 95% interval <=> p below 0.05
    noise = [0.2 * rng.standard_normal(300) for _ in range(5)]
    b = hierarchical_bootstrap(noise, n_boot=4000)
    assert (b.low <= 0 <= b.high) == (b.p_value >= 0.05)
    nothing = hierarchical_bootstrap([np.zeros(10)] * 5, n_boot=500)
    assert (nothing.mean, nothing.p_value) == (0.0, 1.0)


def test_seed_noise_widens_the_interval_beyond_the_query_noise():
    """Seeds that disagree make the seed-level interval wide even with many queries per seed:
    the pooled query-level test would call this gap certain."""
    rng = np.random.default_rng(5)
    seeds = [offset + 0.01 * rng.standard_normal(500) for offset in (0.10, -0.05, 0.08, -0.06, 0.04)]
    seed_level = hierarchical_bootstrap(seeds, n_boot=4000)
    pooled = paired_difference(np.concatenate(seeds), np.zeros(2500))
    assert pooled.p_value < 1e-6
    assert seed_level.p_value > 0.05 and seed_level.high - seed_level.low > 10 * pooled.ci95


def test_one_seed_gives_no_seed_level_inference():
    one = hierarchical_bootstrap([np.array([0.1, 0.2, 0.0])])
    assert one.n_seeds == 1 and one.mean == pytest.approx(0.1)
    assert math.isnan(one.p_value) and math.isnan(one.low)
    assert verdict(one.mean, one.p_value, one.p_equivalence, 0.02) == "undecided (one seed)"
    with pytest.raises(VitDSIError, match="at least one seed"):
        bootstrap_distribution([np.array([np.nan])])


def test_tost_equals_a_hand_computation():
    """Five per-seed differences 0.010, -0.005, 0.002, 0.004, -0.001 with margin 0.02:
    mean 0.002; squared deviations 64e-6 + 49e-6 + 0 + 4e-6 + 9e-6 = 126e-6, variance
    126e-6 / 4 = 31.5e-6, se = sqrt(31.5e-6 / 5) = 0.0025100; t_lower = (0.002 + 0.02) / se =
    8.7650, t_upper = (0.002 - 0.02) / se = -7.1714; with 4 degrees of freedom the t CDF is
    F(t) = 1/2 + 3/8 x (1 - t^2 / (12 (1 + t^2 / 4))), x = t / sqrt(1 + t^2 / 4)."""

    def t4_cdf(t: float) -> float:
        x = t / math.sqrt(1 + t * t / 4)
        return 0.5 + 3 / 8 * x * (1 - t * t / (12 * (1 + t * t / 4)))

    se = math.sqrt(31.5e-6 / 5)
    assert se == pytest.approx(0.0025100, abs=1e-7)
    expected = max(1 - t4_cdf(0.022 / se), t4_cdf(-0.018 / se))
    assert expected == pytest.approx(0.0010009, abs=1e-6)
    assert tost_t(0.002, se, 4, 0.02) == pytest.approx(expected, rel=1e-9)

    per_seed = [np.array([x]) for x in (0.010, -0.005, 0.002, 0.004, -0.001)]
    r = seed_paired_t(per_seed, margin=0.02)
    assert r.mean == pytest.approx(0.002) and r.n_seeds == 5
    assert r.p_equivalence == pytest.approx(expected, rel=1e-9)
    assert r.p_value == pytest.approx(stats.ttest_1samp([0.010, -0.005, 0.002, 0.004, -0.001], 0).pvalue)
    assert verdict(r.mean, r.p_value, r.p_equivalence, 0.02) == "equivalent within ±0.02"
    # a margin the data cannot rule out: no tie
    assert seed_paired_t(per_seed, margin=0.003).p_equivalence > 0.05
    with pytest.raises(VitDSIError, match="positive"):
        tost_t(0.0, 0.01, 4, 0.0)


def test_bootstrap_equivalence_matches_its_interval():
    rng = np.random.default_rng(2)
    tiny = [0.002 + 0.05 * rng.standard_normal(400) for _ in range(5)]
    r = hierarchical_bootstrap(tiny, margin=0.02, n_boot=4000)
    assert r.p_equivalence < 0.05  # the 90% interval lies inside ±0.02
    wide = hierarchical_bootstrap(tiny, margin=0.001, n_boot=4000)
    assert wide.p_equivalence > 0.05


def test_seed_t_interval_is_clipped_to_the_range_of_a_difference():
    r = seed_paired_t([np.array([x]) for x in (0.99, 0.2, 0.98)])
    assert r.high == 1.0 and r.low > -1.0


def test_verdicts():
    assert verdict(0.03, 0.001, 0.9, 0.02) == "A better"
    assert verdict(-0.03, 0.001, 0.9, 0.02) == "B better"
    assert verdict(0.001, 0.6, 0.01, 0.02) == "equivalent within ±0.02"
    assert verdict(0.001, 0.6, 0.2, 0.02) == "undecided"
    assert verdict(0.001, 0.6, float("nan"), None) == "undecided (no equivalence margin)"


def test_holm_adjusts_and_keeps_order():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max
    expected = np.array([0.03, 0.06, 0.06, np.nan, 0.02])
    assert holm(p) == pytest.approx(expected, nan_ok=True)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_difference_matches_scipy():
    rng = np.random.default_rng(7)
    a = rng.random(60)
    b = np.clip(a - 0.05 + 0.1 * rng.standard_normal(60), 0, 1)
    a[3] = np.nan  # a query undefined for one system is dropped from the pair
    d = paired_difference(a, b)
    keep = ~np.isnan(a)
    t = stats.ttest_rel(a[keep], b[keep])
    lo, hi = t.confidence_interval(0.95)
    assert d.n == 59
    assert d.mean == pytest.approx((lo + hi) / 2)
    assert d.ci95 == pytest.approx((hi - lo) / 2)
    assert d.p_value == pytest.approx(stats.wilcoxon(a[keep], b[keep]).pvalue)
    same = paired_difference(b, b)
    assert (same.mean, same.ci95, same.p_value) == (0.0, 0.0, 1.0)
    with pytest.raises(VitDSIError, match="same queries"):
        paired_difference(a, b[:10])


def test_welch_over_seed_means_matches_scipy_and_a_hand_tost():
    """Two trials on different splits: Welch's t over their per-seed means, as scipy computes it;
    its TOST by hand from the same standard error and Welch-Satterthwaite df."""
    a, b = [0.62, 0.70, 0.66, 0.59, 0.68], [0.41, 0.55, 0.30, 0.48, 0.36]
    d = seed_welch_t(a, b, margin=0.02, n_queries=190)
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert d.mean == pytest.approx(np.mean(a) - np.mean(b)) and d.p_value == pytest.approx(ref.pvalue)
    assert (d.low, d.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert d.n_seeds == 5 and d.n_queries == 190 and "Welch" in d.method
    va, vb = np.var(a, ddof=1) / 5, np.var(b, ddof=1) / 5
    se, df = math.sqrt(va + vb), (va + vb) ** 2 / (va**2 / 4 + vb**2 / 4)
    hand = max(stats.t.sf((d.mean + 0.02) / se, df), stats.t.cdf((d.mean - 0.02) / se, df))
    assert d.p_equivalence == pytest.approx(hand)
    # close means with little spread: equivalent within the margin, not different
    e = seed_welch_t([0.500, 0.502, 0.498, 0.501], [0.499, 0.501, 0.500, 0.502], margin=0.02)
    assert e.p_equivalence < 0.05 < e.p_value
    # the interval stays inside the range a difference of [0, 1] metrics can take
    wide = seed_welch_t([1.0, 0.0, 1.0], [0.0, 1.0, 0.0])
    assert -1.0 <= wide.low and wide.high <= 1.0
    one = seed_welch_t([0.5], [0.4, 0.3])
    assert math.isnan(one.p_value) and one.n_seeds == 1
