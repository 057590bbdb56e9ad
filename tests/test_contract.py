"""The contract every registered retriever honours, checked on the same tiny dataset.

Parametrised over the registry, so a newly registered retriever is picked up here
automatically, built with the smoke scale's parameters (`conftest.smoke_retriever`).
Image retrievers answer the test digits; text retrievers (`query_kind = "text"`) answer
captions of the indexed mosaics of `conftest.text_split` (the text protocol).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TEST_DEVICE, smoke_retriever

from vitdsi.data import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.retrievers import Ranking, create, registered

NAMES = sorted(registered())
IMAGE_NAMES = [n for n in NAMES if registered()[n].query_kind == "image"]
TEXT_NAMES = [n for n in NAMES if registered()[n].query_kind == "text"]
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


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_ranking_shape_dtype_and_validity(name, indexed, queries, tiny_split):
    check_ranking(indexed(name).search(queries, K), len(queries), len(tiny_split.corpus))


def check_ranking(ranking, n_queries: int, n: int) -> None:
    assert isinstance(ranking, Ranking)
    assert ranking.ids.shape == (n_queries, K) and ranking.ids.dtype == torch.int64
    assert ranking.scores.shape == (n_queries, K) and ranking.scores.dtype == torch.float32
    ids = ranking.ids.numpy()
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


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_full_corpus_ranking(name, indexed, tiny_split):
    r = indexed(name)
    n = len(tiny_split.corpus)
    ranking = r.search(tiny_split.test.images[:2], n)
    assert ranking.ids.shape == (2, n)
    for row in ranking.ids.numpy():
        real = row[row >= 0]
        assert len(set(real.tolist())) == len(real)


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_indexed_images_rank_as_queries_do(name, indexed, tiny_split):
    """`search_indexed` (IA@K: the indexed images searched for themselves) is `search` for them,
    whatever it reads its features from."""
    r, images = indexed(name), tiny_split.corpus.images[:8]
    cached, direct = r.search_indexed(images, K), r.search(images, K)
    check_ranking(cached, len(images), len(tiny_split.corpus))
    torch.testing.assert_close(cached.scores, direct.scores, atol=1e-4, rtol=1e-4, equal_nan=True)
    assert (cached.ids[:, 0] == direct.ids[:, 0]).all()


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_same_seed_same_result(name, indexed, queries, tiny_split):
    first = indexed(name).search(queries, K)
    again = build(name, seed=0)
    again.index(tiny_split.corpus, train_queries=tiny_split.train)
    second = again.search(queries, K)
    assert torch.equal(first.ids, second.ids)
    assert torch.allclose(first.scores, second.scores, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_save_load_round_trip(name, indexed, queries, tmp_path):
    from vitdsi.retrievers import load_retriever, save_retriever

    r = indexed(name)
    before = r.search(queries, K)
    save_retriever(r, tmp_path / "index")
    loaded = load_retriever(tmp_path / "index", device=TEST_DEVICE)  # the device it was built on
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
def test_the_wrong_query_kind_is_a_clear_error(name, indexed, text_indexed, tiny_split):
    """Image retrievers refuse captions and text retrievers refuse images, naming the kind they take."""
    if name in TEXT_NAMES:
        with pytest.raises(VitDSIError, match=f"{name}: answers text queries .*got image queries"):
            text_indexed(name).search(tiny_split.test.images, K)
    else:
        with pytest.raises(VitDSIError, match=f"{name}: answers image queries .*got text queries"):
            indexed(name).search(["two bags and a sneaker"], K)
    with pytest.raises(VitDSIError, match="a single str: wrap it in a list"):
        (text_indexed if name in TEXT_NAMES else indexed)(name).search("two bags", K)


# ---- text retrievers: the same contract for caption queries -----------------------------
@pytest.fixture(scope="module")
def text_indexed(text_split):
    """Each text retriever indexed once on the captioned mosaics (lazily, on first use)."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            r = build(name)
            r.index(text_split.corpus)
            cache[name] = r
        return cache[name]

    return get


@pytest.fixture(scope="module")
def text_queries(text_split):
    """Held-out test captions and a few training captions (as the corpus carries them)."""
    return text_split.queries("test")[:20] + text_split.corpus.captions.texts[:4].tolist()


@pytest.mark.parametrize("name", TEXT_NAMES)
def test_text_ranking_shape_dtype_and_validity(name, text_indexed, text_queries, text_split):
    check_ranking(text_indexed(name).search(text_queries, K), len(text_queries), len(text_split.corpus))
    assert text_indexed(name).search([], K).ids.shape == (0, K)


@pytest.mark.parametrize("name", TEXT_NAMES)
def test_text_full_corpus_ranking(name, text_indexed, text_split):
    n = len(text_split.corpus)
    ranking = text_indexed(name).search(text_split.queries("test")[:3], n)
    assert ranking.ids.shape == (3, n)
    for row in ranking.ids.numpy():
        real = row[row >= 0]
        assert len(set(real.tolist())) == len(real)


@pytest.mark.parametrize("name", TEXT_NAMES)
def test_text_same_seed_same_result(name, text_indexed, text_queries, text_split):
    first = text_indexed(name).search(text_queries, K)
    again = build(name, seed=0)
    again.index(text_split.corpus)
    second = again.search(text_queries, K)
    assert torch.equal(first.ids, second.ids)
    assert torch.allclose(first.scores, second.scores, atol=1e-5)
    # a caption's answer does not depend on the other captions of its batch (padding is masked)
    alone = torch.cat([again.search([t], K).scores for t in text_queries[:3]])
    assert torch.allclose(alone, first.scores[:3], atol=1e-4)


@pytest.mark.parametrize("name", TEXT_NAMES)
def test_text_save_load_round_trip(name, text_indexed, text_queries, tmp_path):
    from vitdsi.retrievers import load_retriever, save_retriever

    r = text_indexed(name)
    before = r.search(text_queries, K)
    save_retriever(r, tmp_path / "index")
    loaded = load_retriever(tmp_path / "index", device=TEST_DEVICE)  # the device it was built on
    assert type(loaded) is type(r) and loaded.query_kind == "text"
    assert loaded.build_params() == r.build_params()
    after = loaded.search(text_queries, K)
    assert torch.equal(before.ids, after.ids)
    assert torch.allclose(before.scores, after.scores, atol=1e-5)
    # the index leaves out the weights MiniLM's package ships (they load from the package again)
    assert (tmp_path / "index" / "state.pt").stat().st_size < 20e6


@pytest.mark.parametrize("name", TEXT_NAMES)
def test_text_k_bounds_and_order_of_calls(name, text_indexed, text_split):
    n = len(text_split.corpus)
    with pytest.raises(VitDSIError, match=f"k={n + 1} is larger than the corpus"):
        text_indexed(name).search(["a one"], n + 1)
    with pytest.raises(VitDSIError, match="k must be a positive integer"):
        text_indexed(name).search(["a one"], 0)
    with pytest.raises(VitDSIError, match="before index"):
        build(name).search(["a one"], K)
    with pytest.raises(VitDSIError, match="takes no train_queries"):
        build(name).index(text_split.corpus, train_queries=text_split.train)


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_k_larger_than_corpus_is_a_clear_error(name, indexed, tiny_split):
    n = len(tiny_split.corpus)
    with pytest.raises(VitDSIError, match=f"k={n + 1} is larger than the corpus"):
        indexed(name).search(tiny_split.test.images, n + 1)


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_wrong_image_size_is_a_clear_error(name, indexed, tiny_split):
    small = tiny_split.test.images[:, :, :16, :16].contiguous()
    with pytest.raises(VitDSIError, match="16x16 but the index was built on 32x32"):
        indexed(name).search(small, K)


@pytest.mark.parametrize("name", NAMES)
def test_search_before_index_is_a_clear_error(name, tiny_split):
    with pytest.raises(VitDSIError, match="before index"):
        build(name).search(tiny_split.test.images, K)


def test_registry_rejects_duplicates_and_lists_names():
    from vitdsi.retrievers.base import Retriever
    from vitdsi.retrievers.registry import get, register

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
