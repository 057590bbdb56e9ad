"""The `bovw` retriever and its parts: SIFT extraction, RootSIFT, vocabulary, quantisation,
tf / tf-idf histograms, brute force vs inverted file, images without keypoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smoke_retriever

from vitdsi.data import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.features.sift import SiftConfig, dense_grid, extract_descriptors, rootsift
from vitdsi.features.vocabulary import nearest_centroid, nearest_centroid_loop, train_vocabulary
from vitdsi.metrics import indexing_accuracy
from vitdsi.retrievers import create


def with_blanks(images: ImageSet, blank_at: list[int]) -> ImageSet:
    """The same set with the images at `blank_at` replaced by uniform grey ones."""
    imgs = images.images.clone()
    imgs[blank_at] = 128
    return ImageSet(imgs, images.labels, images.source_ids, images.class_names, "with-blanks")


@pytest.fixture(scope="module")
def corpus(tiny_split):
    return tiny_split.corpus  # 60 digits at 32 px


# ---- descriptors ------------------------------------------------------------------------
def test_rootsift_is_the_hellinger_map():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (50, 128)).astype(np.float32)
    a[3] = 0  # a patch without gradients
    r = rootsift(a)
    assert (r >= 0).all()
    norms = np.linalg.norm(r, axis=1)
    np.testing.assert_allclose(np.delete(norms, 3), 1.0, rtol=1e-5)
    assert norms[3] == 0
    # <rootsift(x), rootsift(y)> is the Hellinger kernel of the L1-normalised originals
    p = a / np.maximum(a.sum(1, keepdims=True), 1e-12)
    hellinger = np.sqrt(p[:, None, :] * p[None, :, :]).sum(-1)
    np.testing.assert_allclose(r @ r.T, hellinger, atol=1e-5)


def test_extraction_rootsift_option_and_grid(corpus):
    cfg = SiftConfig(detector="dense", upscale=2, step=8, size=8, rootsift=False)
    raw, owner = extract_descriptors(corpus.images[:5], cfg)
    per_image = len(dense_grid(64, 64, 8, 8))
    assert per_image == 64 and raw.shape == (5 * per_image, 128)
    np.testing.assert_array_equal(owner, np.repeat(np.arange(5), per_image))
    assert np.array_equal(raw, np.round(raw)) and raw.max() > 1  # raw SIFT: integer-valued bins
    rs, _ = extract_descriptors(corpus.images[:5], SiftConfig(detector="dense", upscale=2, step=8, size=8))
    np.testing.assert_allclose(rs, rootsift(raw), atol=1e-6)


def test_parallel_extraction_keeps_image_order(corpus):
    cfg = SiftConfig(detector="sparse", upscale=2)
    one, owner_one = extract_descriptors(corpus.images, cfg, workers=1, chunk=7)
    many, owner_many = extract_descriptors(corpus.images, cfg, workers=3, chunk=4)
    np.testing.assert_array_equal(owner_one, owner_many)
    np.testing.assert_array_equal(one, many)


def test_blank_image_has_no_sparse_keypoints(corpus):
    blank = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    desc, owner = extract_descriptors(blank, SiftConfig(detector="sparse"))
    assert desc.shape == (0, 128) and owner.shape == (0,)


# ---- vocabulary and quantisation --------------------------------------------------------
def test_vectorised_quantiser_equals_the_per_descriptor_loop():
    rng = np.random.default_rng(1)
    # integer-valued like raw SIFT: both computations are exact, so they must agree exactly
    # (ties included: lowest index); a small block size exercises the chunking
    x = rng.integers(0, 8, (3000, 128)).astype(np.float32)
    c = rng.integers(0, 8, (37, 128)).astype(np.float32)
    c[5] = c[4]  # a duplicated centroid: every tie must go to 4, as in the loop
    np.testing.assert_array_equal(
        nearest_centroid(x, c, block_elements=37 * 100), nearest_centroid_loop(x, c)
    )
    # real-valued: the vectorised answer is a nearest centroid up to float32 rounding
    xf = rng.normal(size=(2000, 128)).astype(np.float32)
    cf = rng.normal(size=(64, 128)).astype(np.float32)
    vec, loop = nearest_centroid(xf, cf), nearest_centroid_loop(xf, cf)
    d = ((xf[:, None, :] - cf[None]) ** 2).sum(-1)
    rows = np.arange(len(xf))
    np.testing.assert_allclose(d[rows, vec], d[rows, loop], rtol=1e-5)
    assert (vec == loop).mean() > 0.99


def test_vocabulary_is_seeded_and_needs_enough_descriptors():
    x = np.random.default_rng(2).normal(size=(500, 16)).astype(np.float32)
    a = train_vocabulary(x, 8, seed=3, sample=300, iters=5)
    b = train_vocabulary(x, 8, seed=3, sample=300, iters=5)
    assert a.shape == (8, 16)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(VitDSIError, match="only 500 descriptors to learn K=600"):
        train_vocabulary(x, 600)


def test_histograms_match_a_naive_computation(corpus):
    for weighting in ("tf", "tfidf"):
        r = create("bovw", vocab_size=24, weighting=weighting, kmeans_iters=5, device="cpu")
        r.index(corpus)
        # by hand: descriptors, per-descriptor loop, counts, idf from corpus document frequency
        desc, owner = extract_descriptors(corpus.images, r.sift)
        words = nearest_centroid_loop(desc, r._centroids)
        counts = np.zeros((len(corpus), 24))
        np.add.at(counts, (owner, words), 1)
        df = (counts > 0).sum(0)
        idf = np.log((1 + len(corpus)) / (1 + df)) + 1 if weighting == "tfidf" else np.ones(24)
        w = counts * idf
        expected = w / np.linalg.norm(w, axis=1, keepdims=True)
        np.testing.assert_allclose(r._corpus.toarray(), expected, atol=1e-12)
        np.testing.assert_allclose(r.histograms(corpus.images[:5]).toarray(), expected[:5], atol=1e-12)


@pytest.mark.parametrize("vocab_size", [16, 4096])
def test_small_and_large_vocabularies(corpus, vocab_size):
    # step 2 on 64 px gives 1024 descriptors per image: 8 images give enough for K = 4096
    images = corpus.subset(np.arange(8))
    r = create("bovw", vocab_size=vocab_size, step=2, size=8, kmeans_iters=2, device="cpu")
    r.index(images)
    assert r._corpus.shape == (8, vocab_size)
    assert r._centroids.shape == (vocab_size, 128)
    ids = r.search(images.images, 3).ids
    np.testing.assert_array_equal(ids[:, 0].numpy(), np.arange(8))


def test_too_few_descriptors_for_k_is_a_clear_error(corpus):
    r = create("bovw", vocab_size=4096, device="cpu")
    with pytest.raises(VitDSIError, match="to learn K=4096 visual words; use a smaller K"):
        r.index(corpus.subset(np.arange(4)))


# ---- search -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"detector": "sparse", "weighting": "tfidf", "vocab_size": 32},
        {"detector": "sparse", "weighting": "tf", "rootsift": False, "vocab_size": 32},
        {"detector": "dense", "weighting": "tfidf", "vocab_size": 64},
    ],
)
def test_brute_and_inverted_give_identical_rankings(tiny_split, params):
    corpus = with_blanks(tiny_split.corpus, [0, 17, 42])
    r = create("bovw", kmeans_iters=5, device="cpu", **params)
    r.index(corpus)
    blank = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    queries = torch.cat([tiny_split.test.images, tiny_split.train.images[:20], corpus.images[:10], blank])
    for k in (1, 10, len(corpus)):
        r.set_query_arguments(search="brute", batch_size=16)
        brute = r.search(queries, k)
        r.set_query_arguments(search="inverted", batch_size=7)
        inverted = r.search(queries, k)
        assert torch.equal(brute.ids, inverted.ids)
        assert torch.equal(brute.scores, inverted.scores)


def test_images_without_keypoints_rank_last_in_corpus_order(tiny_split):
    blanks = [3, 17, 42]
    corpus = with_blanks(tiny_split.corpus, blanks)
    n = len(corpus)
    r = create("bovw", detector="sparse", vocab_size=32, kmeans_iters=5, device="cpu")
    r.index(corpus)
    assert set(np.flatnonzero(r._empty)) >= set(blanks)
    empty = np.flatnonzero(r._empty)
    blank_query = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    for mode in ("brute", "inverted"):
        r.set_query_arguments(search=mode)
        full = r.search(torch.cat([tiny_split.test.images, blank_query]), n)
        ids, scores = full.ids.numpy(), full.scores.numpy()
        # every row ends with the empty corpus images, in corpus order, scored -1
        np.testing.assert_array_equal(ids[:, n - len(empty) :], np.tile(empty, (len(ids), 1)))
        assert (scores[:, n - len(empty) :] == -1).all() and (scores[:, : n - len(empty)] >= 0).all()
        # a query without keypoints: images with words in corpus order (score 0), then the empty ones
        np.testing.assert_array_equal(ids[-1], np.concatenate([np.flatnonzero(~r._empty), empty]))


def test_corpus_without_any_keypoint_is_a_clear_error(tiny_split):
    corpus = with_blanks(tiny_split.corpus.subset(np.arange(5)), list(range(5)))
    with pytest.raises(VitDSIError, match="found no keypoint in any of the 5 corpus images"):
        create("bovw", detector="sparse", device="cpu").index(corpus)


def test_indexed_images_come_back_first(corpus):
    r = create("bovw", device="cpu")  # defaults: dense SIFT, K = 200
    r.index(corpus)
    for mode in ("brute", "inverted"):
        r.set_query_arguments(search=mode)
        ia = indexing_accuracy(r.search(corpus.images, 5).ids, len(corpus))
        assert ia["IA@1"].mean == 1.0


def test_unknown_options_are_clear_errors(corpus):
    with pytest.raises(VitDSIError, match="weighting must be one of"):
        create("bovw", weighting="bm25")
    with pytest.raises(VitDSIError, match="detector must be 'sparse' or 'dense'"):
        create("bovw", detector="harris")
    r = smoke_retriever("bovw")
    r.index(corpus)
    r.set_query_arguments(search="lsh")
    with pytest.raises(VitDSIError, match="search must be one of"):
        r.search(corpus.images[:2], 3)
