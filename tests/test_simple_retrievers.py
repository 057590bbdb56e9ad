"""Behaviour of the two simple retrievers beyond the contract: `random` is chance, and
`pixels-knn` finds an indexed image itself first."""

from __future__ import annotations

import numpy as np

from vitdsi.data import Relevance, make_split
from vitdsi.metrics import evaluate, indexing_accuracy
from vitdsi.retrievers import create


def test_random_retriever_matches_analytic_chance(digits32):
    sets = make_split(
        digits32, n_total=1200, split_ratio=0.25, query_fractions=(0.0, 0.0, 1.0), seed=0
    ).apply(digits32)
    r = create("random", seed=3, device="cpu")
    r.index(sets.corpus)
    ranking = r.search(sets.test.images, 100)
    res = evaluate(ranking.ids, Relevance.between(sets.test, sets.corpus), ["P@10", "MAP@10", "R@100", "MRR"])
    for name, v in res.items():
        assert abs(v.mean - v.chance) < 3 * v.ci95, (name, v)


def test_pixels_knn_finds_each_indexed_image_first(digits32):
    corpus = digits32.subset(np.arange(300))
    r = create("pixels-knn", device="cpu")
    r.index(corpus)
    ia = indexing_accuracy(r.search(corpus.images, 5).ids, corpus_size=300, ks=(1,))
    assert ia["IA@1"].mean == 1.0


def test_pixels_knn_beats_chance_on_digits(digits32):
    sets = make_split(digits32, n_total=1000, split_ratio=0.5, seed=0).apply(digits32)
    r = create("pixels-knn", device="cpu")
    r.index(sets.corpus)
    res = evaluate(r.search(sets.test.images, 10).ids, Relevance.between(sets.test, sets.corpus), ["P@10"])
    assert res["P@10"].mean > res["P@10"].chance + 0.5  # raw pixels separate digits well


def test_ranking_from_scores_breaks_ties_by_corpus_position():
    import torch

    from vitdsi.retrievers import Ranking

    scores = torch.zeros(2, 100)
    scores[0, 50] = 1.0
    scores[1, [7, 3, 90]] = torch.tensor([0.5, 0.5, 2.0])
    r = Ranking.from_scores(scores, 5)
    assert r.ids.tolist() == [[50, 0, 1, 2, 3], [90, 3, 7, 0, 1]]
    assert r.scores.tolist() == [[1, 0, 0, 0, 0], [2, 0.5, 0.5, 0, 0]]
    full = Ranking.from_scores(scores, 100)
    assert full.ids[0, :3].tolist() == [50, 0, 1] and sorted(full.ids[1].tolist()) == list(range(100))
    with_nan_free_random = torch.rand(3, 40)
    top = Ranking.from_scores(with_nan_free_random, 7)
    assert torch.equal(top.ids, torch.argsort(with_nan_free_random, dim=1, descending=True)[:, :7])
