"""The `embedding` retriever's backbone features go through the feature cache when it indexes
(vitdsi.features.backbone_cache), never when it searches queries: a second index of the same
images runs no network, any change to what decides the features misses, search always runs it;
only the IA@K search of the indexed images (`search_indexed`) reads them back."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from fake_device import FakeCuda
from typer.testing import CliRunner

import vitdsi.device
from bench.cli import app
from vitdsi.features.backbone_cache import batch_features, index_features
from vitdsi.features.backbones import load_backbone
from vitdsi.features.feature_cache import FeatureCache
from vitdsi.metrics import indexing_accuracy
from vitdsi.retrievers import create

N, BATCH = 12, 4  # three forward passes per index


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet-lite0", "cpu")


@pytest.fixture
def images(tiny_split):
    return tiny_split.corpus.images[:N]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty feature cache of this test's own, on."""
    monkeypatch.setenv("VITDSI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VITDSI_FEATURE_CACHE", raising=False)
    return tmp_path / "cache"


class Forwards:
    """Counts the forward passes of a network through a hook."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        model.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.calls += 1


def _embedding(device: str = "cpu"):
    """An EfficientNet-Lite0 embedding retriever whose backbone forward passes are counted."""
    r = create("embedding", backbone="efficientnet-lite0", batch_size=BATCH, device=device)
    r._backbone()
    return r, Forwards(r.model)


def _vectors(r) -> np.ndarray:
    """The normalised vectors in a flat index, in row order."""
    return r._faiss.reconstruct_n(0, r._faiss.ntotal)


def test_second_index_reads_the_cache_and_runs_no_network(tiny_split, images, cache_dir):
    corpus = tiny_split.corpus.subset(np.arange(N))
    first, counted_first = _embedding()
    first.index(corpus)
    assert counted_first.calls == N // BATCH
    [entry] = FeatureCache(cache_dir).entries()
    assert entry.manifest["shape"] == [N, 1280]
    assert entry.manifest["key"]["encoder"].startswith("embedding backbone efficientnet-lite0: pooled 1280-d")

    second, counted_second = _embedding()
    second.index(corpus)
    assert counted_second.calls == 0
    np.testing.assert_array_equal(_vectors(second), _vectors(first))

    added, _ = _embedding()
    added.index(corpus.subset(np.arange(N // 2)))  # a different image set: its own entry
    added.add(corpus.subset(np.arange(N // 2, N)))
    assert len(FeatureCache(cache_dir).entries()) == 3


def test_cached_features_equal_computed_ones(lite0, images, tmp_path):
    computed = torch.cat(list(batch_features(lite0, images, BATCH, "test")))
    index_features(lite0, images, BATCH, "test", FeatureCache(tmp_path))  # computed into the cache
    cached = index_features(lite0, images, BATCH, "test", FeatureCache(tmp_path))  # read back
    assert isinstance(cached, torch.Tensor) and cached.shape == (N, 1280)
    torch.testing.assert_close(cached, computed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("part", ["images", "input size", "weights", "backbone name"])
def test_what_decides_the_features_misses_when_it_changes(lite0, images, tmp_path, part):
    cache = FeatureCache(tmp_path)
    index_features(lite0, images, BATCH, "test", cache)
    net, changed = lite0, images
    if part == "images":
        changed = images.clone()
        changed[-1, 0, 0, 0] ^= 1  # one bit of one pixel
    elif part == "input size":
        net = dataclasses.replace(lite0, input_size=96)
    elif part == "weights":
        model = copy.deepcopy(lite0.model)
        with torch.no_grad():
            next(model.parameters())[0].mul_(1.01)
        net = dataclasses.replace(lite0, model=model.eval())
    else:
        net = dataclasses.replace(lite0, name="efficientnet-lite0-copy")
    counted = Forwards(net.model)
    index_features(net, changed, BATCH, "test", cache)
    assert counted.calls == N // BATCH and len(cache.entries()) == 2


def test_the_key_names_the_device_normalisation_and_width(lite0):
    encoder, preprocessing = lite0.cache_spec()
    assert "1280-d" in encoder and lite0.weights_digest in encoder
    assert "224 px" in preprocessing and "on cpu" in preprocessing
    assert dataclasses.replace(lite0, device=torch.device("cuda")).cache_spec()[1] != preprocessing
    assert dataclasses.replace(lite0, std=(0.5, 0.5, 0.5)).cache_spec()[1] != preprocessing
    assert dataclasses.replace(lite0, dim=640).cache_spec()[0] != encoder


def test_search_never_touches_the_cache(tiny_split, cache_dir, monkeypatch):
    corpus = tiny_split.corpus.subset(np.arange(N))
    r, counted = _embedding()
    r.index(corpus)
    r.index(corpus)  # a cache hit
    assert counted.calls == N // BATCH

    def no_cache(*args, **kwargs):
        raise AssertionError("search went through the feature cache")

    monkeypatch.setattr(FeatureCache, "get", no_cache)
    monkeypatch.setattr(FeatureCache, "_load", no_cache)
    for _ in range(2):  # the indexed images themselves, whose features are in the cache
        ranking = r.search(corpus.images, 5)
    assert counted.calls == N // BATCH + 2 * (N // BATCH)
    assert indexing_accuracy(ranking.ids, N)["IA@1"].mean == 1.0
    r.embed(corpus.images[:BATCH])
    assert counted.calls == N // BATCH + 2 * (N // BATCH) + 1
    assert len(FeatureCache(cache_dir).entries()) == 1


def test_indexed_images_are_searched_from_the_cache(tiny_split, cache_dir):
    """`search_indexed` (IA@K) reads the indexed images' features where indexing put them: no
    forward pass, the same ranking as `search`, which runs the network; then search runs it again."""
    corpus = tiny_split.corpus.subset(np.arange(N))
    r, counted = _embedding()
    r.index(corpus)
    cached = r.search_indexed(corpus.images, 5)
    assert counted.calls == N // BATCH  # the index's passes only
    direct = r.search(corpus.images, 5)
    assert counted.calls == 2 * (N // BATCH)
    assert torch.equal(cached.ids, direct.ids) and indexing_accuracy(cached.ids, N)["IA@1"].mean == 1.0
    torch.testing.assert_close(cached.scores, direct.scores, atol=1e-5, rtol=1e-5)
    assert len(FeatureCache(cache_dir).entries()) == 1


def test_cache_off_computes_every_time(tiny_split, cache_dir, monkeypatch):
    monkeypatch.setenv("VITDSI_FEATURE_CACHE", "0")
    corpus = tiny_split.corpus.subset(np.arange(N))
    r, counted = _embedding()
    r.index(corpus)
    r.index(corpus)
    assert counted.calls == 2 * (N // BATCH) and not cache_dir.exists()


def test_pixels_need_no_cache(tiny_split, cache_dir):
    create("embedding", backbone="pixels", device="cpu").index(tiny_split.corpus)
    assert not cache_dir.exists()


def test_bench_cache_list_names_the_embedding_backbone(tiny_split, cache_dir):
    r, _ = _embedding()
    r.index(tiny_split.corpus.subset(np.arange(N)))
    res = CliRunner().invoke(app, ["cache", "list", "--dir", str(cache_dir)], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "1 entries" in res.output and f"{N}x1280" in res.output
    assert "embedding backbone efficientnet-lite0: pooled 1280-d features, weights" in res.output


def test_index_from_the_cache_and_search_on_a_device(tiny_split, cache_dir, monkeypatch):
    """On a (simulated) GPU: features computed on the device go into the cache, a hit reads them
    on the CPU, and the queries are embedded on the device against the same centring."""
    monkeypatch.setattr(vitdsi.device, "cuda_device_count", lambda: 1)
    corpus = tiny_split.corpus.subset(np.arange(N))
    fake = FakeCuda()
    with fake:
        computed = create("embedding", backbone="efficientnet-lite0", batch_size=BATCH, device="cuda")
        computed.index(corpus)
        cached, counted = _embedding(device="cuda")
        cached.index(corpus)
        assert counted.calls == 0
        ranking = cached.search(corpus.images, 5)
    assert fake.violations == [] and counted.calls == N // BATCH
    assert all(fake.on_device(p) for p in cached.model.parameters()) and fake.on_device(cached._mean)
    assert not fake.on_device(ranking.ids) and indexing_accuracy(ranking.ids, N)["IA@1"].mean == 1.0
    np.testing.assert_allclose(_vectors(cached), _vectors(computed), atol=1e-6)
