"""Metrics against an independent implementation (ir-measures / trec_eval), hand-built
cases for IA@K and the no-relevant-item rule, and chance levels against simulation."""

from __future__ import annotations

import ir_measures
import numpy as np
import pytest
import torch
from ir_measures import AP, RR, P, Qrel, R, ScoredDoc, nDCG

from vitdsi.data.relevance import Relevance
from vitdsi.errors import VitDSIError
from vitdsi.metrics import (
    chance_levels,
    evaluate,
    indexing_accuracy,
    mean_ci,
    parse_metric,
    per_query,
)


def random_case(rng: np.random.Generator):
    n_corpus = int(rng.integers(5, 120))
    n_queries = int(rng.integers(3, 25))
    k = int(rng.integers(1, n_corpus + 1))
    multilabel = bool(rng.random() < 0.5)
    n_classes = int(rng.integers(2, 8))
    if multilabel:
        q = rng.random((n_queries, n_classes)) < 0.3
        c = rng.random((n_corpus, n_classes)) < 0.3
        rel = Relevance(q, c)
    else:
        rel = Relevance(rng.integers(0, n_classes, n_queries), rng.integers(0, n_classes, n_corpus))
    ids = np.argsort(rng.random((n_queries, n_corpus)), axis=1)[:, :k].astype(np.int64)
    # some rows return fewer than k results (trailing -1), never none
    for row in range(n_queries):
        if rng.random() < 0.2 and k > 1:
            ids[row, int(rng.integers(1, k)) :] = -1
    return rel, ids, k


def ir_measures_values(rel: Relevance, ids: np.ndarray, measures):
    dense = rel.to_sparse().toarray()
    qrels = [Qrel(str(q), str(d), 1) for q, d in zip(*np.nonzero(dense))]
    run = [
        ScoredDoc(str(q), str(d), float(ids.shape[1] - j))  # strictly decreasing: no tie-breaking ambiguity
        for q in range(ids.shape[0])
        for j, d in enumerate(ids[q])
        if d >= 0
    ]
    out = {}
    for m in ir_measures.iter_calc(measures, qrels, run):
        out[(str(m.measure), int(m.query_id))] = m.value
    return out


def test_ranked_metrics_equal_ir_measures_on_random_runs():
    rng = np.random.default_rng(12345)
    compared = 0
    for _ in range(250):
        rel, ids, k = random_case(rng)
        cut = int(rng.integers(1, k + 1))
        ours = per_query(ids, rel, [f"P@{cut}", f"MAP@{cut}", f"R@{cut}", f"nDCG@{cut}", "MRR"])
        theirs = ir_measures_values(rel, ids, [P @ cut, AP @ cut, R @ cut, nDCG @ cut, RR])
        n_rel = rel.n_relevant()
        for q in range(ids.shape[0]):
            if n_rel[q] == 0:
                assert all(np.isnan(v[q]) for v in ours.values())
                continue
            # trec_eval's AP@K divides by R; ours by min(K, R) (see vitdsi.metrics)
            ap_theirs = theirs.get((f"AP@{cut}", q), 0.0) * n_rel[q] / min(cut, n_rel[q])
            assert ours[f"P@{cut}"][q] == pytest.approx(theirs.get((f"P@{cut}", q), 0.0), abs=1e-9)
            assert ours[f"MAP@{cut}"][q] == pytest.approx(ap_theirs, abs=1e-9)
            assert ours[f"R@{cut}"][q] == pytest.approx(theirs.get((f"R@{cut}", q), 0.0), abs=1e-9)
            assert ours[f"nDCG@{cut}"][q] == pytest.approx(theirs.get((f"nDCG@{cut}", q), 0.0), abs=1e-9)
            assert ours["MRR"][q] == pytest.approx(theirs.get(("RR", q), 0.0), abs=1e-9)
            compared += 1
    assert compared > 1500


def test_indexing_accuracy_hand_built():
    # corpus of 4; row i queries image i
    ids = np.array([[0, 1, 2], [0, 1, 2], [3, 2, 1], [0, 1, 2]])
    ia = indexing_accuracy(ids, corpus_size=4, ks=(1, 2, 3))
    assert ia["IA@1"].mean == pytest.approx(1 / 4)  # only row 0 has its own id first
    assert ia["IA@2"].mean == pytest.approx(3 / 4)  # rows 1 and 2 have theirs second
    assert ia["IA@3"].mean == pytest.approx(3 / 4)  # row 3 never returns 3
    assert ia["IA@1"].chance == pytest.approx(1 / 4)
    # a subset of indexed images as queries
    sub = indexing_accuracy(np.array([[2, 0], [1, 3]]), corpus_size=4, positions=[2, 3], ks=(1, 2))
    assert sub["IA@1"].mean == pytest.approx(0.5) and sub["IA@2"].mean == pytest.approx(1.0)


def test_hand_computed_values():
    # query class 0; corpus classes [0, 1, 0, 1, 0] -> R = 3, N = 5
    rel = Relevance(np.array([0]), np.array([0, 1, 0, 1, 0]))
    ids = np.array([[1, 0, 3, 2, 4]])
    v = per_query(ids, rel, ["P@2", "MAP@3", "R@3", "MRR", "FPR@3", "nDCG@2"])
    assert v["P@2"][0] == pytest.approx(0.5)
    assert v["MAP@3"][0] == pytest.approx((1 / 2) / 3)  # one hit at rank 2 -> P@2 = 1/2, / min(3, 3)
    assert v["R@3"][0] == pytest.approx(1 / 3)
    assert v["MRR"][0] == pytest.approx(0.5)
    assert v["FPR@3"][0] == pytest.approx(2 / 2)  # both non-relevant images in the top 3
    assert v["nDCG@2"][0] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))


def test_queries_without_relevant_items_are_excluded_and_counted():
    rel = Relevance(np.array([0, 2]), np.array([0, 1, 0]))  # class 2 is absent from the corpus
    res = evaluate(np.array([[0, 1], [1, 0]]), rel, ["P@1", "MAP@2", "FPR@1"])
    assert res["P@1"].n == 1 and res["P@1"].mean == pytest.approx(1.0)
    assert res["MAP@2"].n == 1
    assert res["FPR@1"].n == 1


def test_missing_results_count_as_non_relevant():
    rel = Relevance(np.array([0]), np.array([0, 0, 1]))
    v = per_query(np.array([[0, -1, -1]]), rel, ["P@3", "R@3", "FPR@3"])
    assert v["P@3"][0] == pytest.approx(1 / 3)
    assert v["R@3"][0] == pytest.approx(1 / 2)
    assert v["FPR@3"][0] == pytest.approx(0.0)


def test_chance_levels_match_simulation():
    rng = np.random.default_rng(7)
    q = rng.integers(0, 4, 40)
    c = rng.integers(0, 4, 60)
    rel = Relevance(q, c)
    names = ["P@10", "MAP@10", "R@20", "nDCG@10", "MRR", "FPR@10", "MRR@5"]
    exact = chance_levels(rel, names, k_returned=30)
    sims = {n: [] for n in names}
    for _ in range(400):
        ids = np.argsort(rng.random((40, 60)), axis=1)[:, :30]
        for n, v in per_query(ids, rel, names).items():
            sims[n].append(np.nanmean(v))
    for n in names:
        m, half, _ = mean_ci(np.array(sims[n]))
        assert abs(m - exact[n]) < max(4 * half, 1e-3), (n, m, exact[n])


def test_known_chance_levels_from_design():
    # 10 balanced classes: P@10 chance 0.10; R@100 on 512 indexed images is 100 / 512
    rel = Relevance(np.repeat(np.arange(10), 5), np.repeat(np.arange(10), 512 // 10 + 1)[:512])
    ch = chance_levels(rel, ["P@10", "R@100"], k_returned=100)
    assert ch["P@10"] == pytest.approx(0.1, abs=0.002)
    assert ch["R@100"] == pytest.approx(100 / 512)


def test_metric_names_and_errors():
    assert parse_metric("MAP@10").name == "MAP@10"
    assert parse_metric("MRR").k is None
    assert not parse_metric("FPR@5").higher_is_better
    with pytest.raises(VitDSIError, match="unknown metric"):
        parse_metric("MAPP@10")
    with pytest.raises(VitDSIError, match="needs a cutoff"):
        parse_metric("P")
    rel = Relevance(np.array([0]), np.array([0, 1, 0]))
    with pytest.raises(VitDSIError, match="need at least 5 results"):
        per_query(np.array([[0, 1]]), rel, ["P@5"])
    # the whole corpus returned: larger cutoffs see nothing more
    v = per_query(np.array([[0, 1, 2]]), rel, ["P@5", "R@100"])
    assert v["P@5"][0] == pytest.approx(2 / 5) and v["R@100"][0] == 1.0
    assert chance_levels(rel, ["P@5", "R@100"], 3) == pytest.approx({"P@5": 2 / 5, "R@100": 1.0})


def test_ci_half_width_is_student_t():
    from scipy import stats

    v = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    m, half, n = mean_ci(v)
    assert n == 5 and m == pytest.approx(0.6)
    assert half == pytest.approx(stats.t.ppf(0.975, 4) * v.std(ddof=1) / np.sqrt(5))


def test_graded_ndcg_equals_ir_measures_with_graded_qrels():
    """Gain = number of shared categories: trec_eval's ndcg_cut with integer relevance levels."""
    rng = np.random.default_rng(2024)
    compared = 0
    for _ in range(150):
        n_corpus, n_queries, n_cat = (
            int(rng.integers(5, 80)),
            int(rng.integers(3, 20)),
            int(rng.integers(2, 7)),
        )
        rel = Relevance(
            rng.random((n_queries, n_cat)) < 0.4, rng.random((n_corpus, n_cat)) < 0.4, grading="shared"
        )
        k = int(rng.integers(1, n_corpus + 1))
        ids = np.argsort(rng.random((n_queries, n_corpus)), axis=1)[:, :k].astype(np.int64)
        cut = int(rng.integers(1, k + 1))
        ours = per_query(ids, rel, [f"nDCG@{cut}", f"P@{cut}"])
        dense = rel.gains(np.tile(np.arange(n_corpus), (n_queries, 1)))
        qrels = [Qrel(str(q), str(d), int(dense[q, d])) for q, d in zip(*np.nonzero(dense))]
        run = [
            ScoredDoc(str(q), str(d), float(k - j)) for q in range(n_queries) for j, d in enumerate(ids[q])
        ]
        theirs = {
            (str(m.measure), int(m.query_id)): m.value
            for m in ir_measures.iter_calc([nDCG @ cut], qrels, run)
        }
        for q in np.flatnonzero(rel.n_relevant() > 0):
            assert ours[f"nDCG@{cut}"][q] == pytest.approx(theirs.get((f"nDCG@{cut}", q), 0.0), abs=1e-9)
            compared += 1
        # binary metrics stay binary under graded relevance
        binary = per_query(ids, Relevance(rel.query_labels, rel.corpus_labels), [f"P@{cut}"])
        assert np.array_equal(ours[f"P@{cut}"], binary[f"P@{cut}"], equal_nan=True)
    assert compared > 500


def test_jaccard_gains_and_graded_chance():
    q = np.array([[1, 1, 0], [0, 0, 1]], dtype=bool)
    c = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=bool)
    rel = Relevance(q, c, grading="jaccard")
    # query 0: {0,1} vs {0,1} -> 1, vs {0} -> 1/2, vs {1,2} -> 1/3, vs {} -> 0
    assert rel.gains(np.array([[0, 1, 2, 3], [2, 0, -1, 3]])) == pytest.approx(
        np.array([[1, 0.5, 1 / 3, 0], [0.5, 0, 0, 0]])
    )
    assert rel.ideal_gains(2) == pytest.approx(np.array([[1, 0.5], [0.5, 0]]))
    # nDCG@2 of ranking [2, 1] for query 0: (1/3 + 0.5/log2(3)) / (1 + 0.5/log2(3))
    expected = (1 / 3 + 0.5 / np.log2(3)) / (1 + 0.5 / np.log2(3))
    assert per_query(np.array([[2, 1], [0, 1]]), rel, ["nDCG@2"])["nDCG@2"][0] == pytest.approx(expected)
    # the exact chance of graded nDCG matches a simulation of random rankings
    rng = np.random.default_rng(3)
    rel = Relevance(rng.random((30, 5)) < 0.4, rng.random((50, 5)) < 0.4, grading="shared")
    exact = chance_levels(rel, ["nDCG@10"], k_returned=20)["nDCG@10"]
    sims = [
        np.nanmean(per_query(np.argsort(rng.random((30, 50)), axis=1)[:, :20], rel, ["nDCG@10"])["nDCG@10"])
        for _ in range(300)
    ]
    m, half, _ = mean_ci(np.array(sims))
    assert abs(m - exact) < max(4 * half, 1e-3)
    with pytest.raises(VitDSIError, match="graded relevance .* needs multi-label"):
        Relevance(np.array([0, 1]), np.array([1, 0]), grading="shared")


def test_caption_query_metrics_equal_ir_measures_with_their_own_qrels():
    """The text protocol: R@K and RR against qrels of the caption's own image, AP@K and graded nDCG@K
    against qrels of the images sharing a category with it (gain = shared categories); the metric
    definitions are the same, only the relevance differs."""
    from vitdsi.data.captions import Captions
    from vitdsi.data.imageset import ImageSet
    from vitdsi.data.relevance import text_relevance

    rng = np.random.default_rng(18)
    compared = 0
    for _ in range(60):
        n, n_cat, m = int(rng.integers(5, 60)), int(rng.integers(2, 6)), int(rng.integers(3, 30))
        labels = torch.as_tensor(rng.random((n, n_cat)) < 0.35)
        corpus = ImageSet(
            torch.zeros(n, 3, 2, 2, dtype=torch.uint8),
            labels,
            np.arange(n).astype(str),
            tuple("abcdef"[:n_cat]),
        )
        caps = Captions.build([f"c{i}" for i in range(m)], rng.integers(0, n, m), np.arange(m))
        rel = text_relevance(caps, corpus, grading="shared")
        k = int(rng.integers(1, n + 1))
        ids = np.argsort(rng.random((m, n)), axis=1)[:, :k].astype(np.int64)
        cut = int(rng.integers(1, k + 1))
        ours = per_query(ids, rel, [f"R@{cut}", "MRR", f"MAP@{cut}", f"nDCG@{cut}"])
        run = [ScoredDoc(str(q), str(d), float(k - j)) for q in range(m) for j, d in enumerate(ids[q])]
        own = [Qrel(str(q), str(d), 1) for q, d in enumerate(caps.image.tolist())]
        gains = rel.default.gains(np.tile(np.arange(n), (m, 1)))
        shared = [Qrel(str(q), str(d), int(gains[q, d])) for q, d in zip(*np.nonzero(gains))]
        theirs = {
            (str(x.measure), int(x.query_id)): x.value
            for qrels, measures in ((own, [R @ cut, RR]), (shared, [AP @ cut, nDCG @ cut]))
            for x in ir_measures.iter_calc(measures, qrels, run)
        }
        n_shared = rel.default.n_relevant()
        for q in range(m):
            assert ours[f"R@{cut}"][q] == pytest.approx(theirs.get((f"R@{cut}", q), 0.0), abs=1e-9)
            assert ours["MRR"][q] == pytest.approx(theirs.get(("RR", q), 0.0), abs=1e-9)
            if n_shared[q] == 0:  # an own image without categories shares none: undefined, left out
                assert np.isnan(ours[f"MAP@{cut}"][q]) and np.isnan(ours[f"nDCG@{cut}"][q])
                continue
            # trec_eval's AP@K divides by R; ours by min(K, R) (see vitdsi.metrics); graded qrels count as
            # relevant
            ap = theirs.get((f"AP@{cut}", q), 0.0) * n_shared[q] / min(cut, n_shared[q])
            assert ours[f"MAP@{cut}"][q] == pytest.approx(ap, abs=1e-9)
            assert ours[f"nDCG@{cut}"][q] == pytest.approx(theirs.get((f"nDCG@{cut}", q), 0.0), abs=1e-9)
            compared += 1
        chance = chance_levels(rel, [f"R@{cut}", "MRR"], k)
        assert chance[f"R@{cut}"] == pytest.approx(cut / n)  # one relevant image among n
        assert chance["MRR"] == pytest.approx(sum(1 / i for i in range(1, k + 1)) / n)
    assert compared > 300
