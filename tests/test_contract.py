"""The contract every registered retriever honours, checked on the same tiny dataset.

Parametrised over the registry, so a newly registered retriever is picked up here
automatically, built with the smoke scale's parameters (`conftest.smoke_retriever`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smoke_retriever

from vitdsi.data import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.retrievers import Ranking, create, registered

NAMES = sorted(registered())
K = 10


def build(name: str, seed: int = 0):
    return smoke_retriever(name, seed=seed)


@pytest.fixture(scope="module")
def indexed(tiny_split):
    """Each retriever indexed once on the tiny corpus (lazily, on first use)."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            r = build(name)
            r.index(tiny_split.corpus, train_queries=tiny_split.train)
            cache[name] = r
        return cache[name]

    return get


@pytest.fixture(scope="module")
def queries(tiny_split):
    return torch.cat([tiny_split.test.images, tiny_split.corpus.images[:6]])


@pytest.mark.parametrize("name", NAMES)
def test_ranking_shape_dtype_and_validity(name, indexed, queries, tiny_split):
    r = indexed(name)
    ranking = r.search(queries, K)
    assert isinstance(ranking, Ranking)
    assert ranking.ids.shape == (len(queries), K) and ranking.ids.dtype == torch.int64
    assert ranking.scores.shape == (len(queries), K) and ranking.scores.dtype == torch.float32
    ids = ranking.ids.numpy()
    n = len(tiny_split.corpus)
    assert ((ids >= 0) & (ids < n) | (ids == -1)).all(), "ids must be corpus positions or -1"
    # padding only at the end of a row
    pad = ids == -1
    assert (np.diff(pad.astype(int), axis=1) >= 0).all(), "-1 padding must be trailing"
    for row in ids:
        real = row[row >= 0]
        assert len(set(real.tolist())) == len(real), f"repeated id in a row: {row}"
    scores = ranking.scores.numpy()
    real_scores = np.where(pad, -np.inf, scores)
    assert (np.diff(real_scores, axis=1) <= 1e-6).all(), "scores must be non-increasing"
    assert np.isfinite(scores[~pad]).all()


@pytest.mark.parametrize("name", NAMES)
def test_full_corpus_ranking(name, indexed, tiny_split):
    r = indexed(name)
    n = len(tiny_split.corpus)
    ranking = r.search(tiny_split.test.images[:2], n)
    assert ranking.ids.shape == (2, n)
    for row in ranking.ids.numpy():
        real = row[row >= 0]
        assert len(set(real.tolist())) == len(real)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_result(name, indexed, queries, tiny_split):
    first = indexed(name).search(queries, K)
    again = build(name, seed=0)
    again.index(tiny_split.corpus, train_queries=tiny_split.train)
    second = again.search(queries, K)
    assert torch.equal(first.ids, second.ids)
    assert torch.allclose(first.scores, second.scores, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, indexed, queries, tmp_path):
    from vitdsi.retrievers.base import Retriever

    r = indexed(name)
    before = r.search(queries, K)
    r.save(tmp_path / "index")
    loaded = Retriever.load(tmp_path / "index", device="cpu")
    assert type(loaded) is type(r)
    assert loaded.build_params() == r.build_params()
    after = loaded.search(queries, K)
    assert torch.equal(before.ids, after.ids)
    assert torch.allclose(before.scores, after.scores, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("name", NAMES)
def test_empty_corpus_is_a_clear_error(name, tiny_split):
    c = tiny_split.corpus
    empty = ImageSet(c.images[:0], c.labels[:0], c.source_ids[:0], c.class_names, "empty")
    with pytest.raises(VitDSIError, match="empty corpus"):
        build(name).index(empty)


@pytest.mark.parametrize("name", NAMES)
def test_k_larger_than_corpus_is_a_clear_error(name, indexed, tiny_split):
    n = len(tiny_split.corpus)
    with pytest.raises(VitDSIError, match=f"k={n + 1} is larger than the corpus"):
        indexed(name).search(tiny_split.test.images, n + 1)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_image_size_is_a_clear_error(name, indexed, tiny_split):
    small = tiny_split.test.images[:, :, :16, :16].contiguous()
    with pytest.raises(VitDSIError, match="16x16 but the index was built on 32x32"):
        indexed(name).search(small, K)


@pytest.mark.parametrize("name", NAMES)
def test_search_before_index_is_a_clear_error(name, tiny_split):
    with pytest.raises(VitDSIError, match="before index"):
        build(name).search(tiny_split.test.images, K)


def test_registry_rejects_duplicates_and_lists_names():
    from vitdsi.retrievers.base import Retriever, get, register

    with pytest.raises(ValueError, match="already registered"):

        @register("random")
        class Again(Retriever):  # noqa: F841
            def _index(self, corpus, train_queries):
                pass

            def _search(self, images, k):
                raise NotImplementedError

    with pytest.raises(VitDSIError, match="registered retrievers: .*pixels-knn"):
        get("no-such-retriever")
    with pytest.raises(VitDSIError, match="unknown parameter"):
        create("pixels-knn", centre=True)
