"""The `embedding` retriever: backbones (pixels, EfficientNet-Lite0, torchvision by name,
local weights only) and FAISS indexes (flat exact, hnsw, ivf) with their query parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitdsi.errors import VitDSIError
from vitdsi.features.backbones import TFLITE_MEAN, load_backbone, torchvision_weights_file
from vitdsi.metrics import indexing_accuracy
from vitdsi.retrievers import create


@pytest.fixture(scope="module")
def digits_corpus(digits32):
    return digits32.subset(np.arange(600))


def recall_at(approx: torch.Tensor, exact: torch.Tensor) -> float:
    k = exact.shape[1]
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
    return float(np.sum(hits) / (len(exact) * k))


def test_flat_index_equals_exact_torch_cosine(tiny_split):
    corpus, queries = tiny_split.corpus, tiny_split.train.images
    r = create("embedding", backbone="pixels", index_type="flat", device="cpu")
    r.index(corpus)
    got = r.search(queries, 10)
    # by hand: centred, L2-normalised raw pixels, cosine by matrix product
    x = corpus.images.float().flatten(1) / 255
    q = queries.float().flatten(1) / 255
    mean = x.mean(0)
    x = torch.nn.functional.normalize(x - mean, dim=1)
    q = torch.nn.functional.normalize(q - mean, dim=1)
    exact = q @ x.T
    vals, ids = torch.sort(exact, dim=1, descending=True, stable=True)
    torch.testing.assert_close(got.scores, vals[:, :10], atol=1e-5, rtol=0)
    assert (got.ids == ids[:, :10]).float().mean() > 0.99  # differences only at float-level ties
    np.testing.assert_allclose(r.embed(queries), q.numpy(), atol=1e-6)


def test_hnsw_and_ivf_recall(digits_corpus, digits32):
    queries = digits32.images[600:700]
    exact = create("embedding", backbone="pixels", device="cpu")
    exact.index(digits_corpus)
    truth = exact.search(queries, 10).ids

    hnsw = create("embedding", backbone="pixels", index_type="hnsw", hnsw_m=16, device="cpu")
    hnsw.index(digits_corpus)
    hnsw.set_query_arguments(ef_search=64)
    assert recall_at(hnsw.search(queries, 10).ids, truth) >= 0.95
    hnsw.set_query_arguments(ef_search=10)
    assert recall_at(hnsw.search(queries, 10).ids, truth) >= 0.7

    ivf = create("embedding", backbone="pixels", index_type="ivf", nlist=16, device="cpu")
    ivf.index(digits_corpus)
    recalls = []
    for nprobe in (1, 4, 16):
        ivf.set_query_arguments(nprobe=nprobe)
        recalls.append(recall_at(ivf.search(queries, 10).ids, truth))
    assert recalls[0] >= 0.5 and recalls == sorted(recalls) and recalls[0] < recalls[-1]  # nprobe matters
    assert recalls[-1] >= 0.99  # all lists visited: exact


def test_ivfpq_compresses_and_keeps_recall(digits_corpus, digits32):
    """IVF-PQ (product-quantised lists): far fewer bytes than the flat index, recall that grows
    with nprobe, and a clear error when the corpus is too small to train its codebooks."""
    from bench.kinds.latency.measure import index_bytes

    queries = digits32.images[600:700]
    exact = create("embedding", backbone="pixels", device="cpu")
    exact.index(digits_corpus)
    truth = exact.search(queries, 10).ids
    pq = create("embedding", backbone="pixels", index_type="ivfpq", nlist=8, pq_m=64, device="cpu")
    pq.index(digits_corpus)
    assert pq._faiss.pq.M == 64 and pq._faiss.pq.nbits == 8
    recalls = []
    for nprobe in (1, 8):
        pq.set_query_arguments(nprobe=nprobe)
        recalls.append(recall_at(pq.search(queries, 10).ids, truth))
    assert recalls[0] < recalls[1] and recalls[1] >= 0.6
    # 64 bytes of codes per image against 3072 floats (at 600 images the codebooks still weigh most)
    assert pq._faiss.code_size == 64 and index_bytes(pq) < index_bytes(exact) / 2
    with pytest.raises(VitDSIError, match="ivfpq with pq_bits=8 trains 2\\^8 = 256 centroids .* got 100"):
        create("embedding", backbone="pixels", index_type="ivfpq").index(
            digits_corpus.subset(torch.arange(100))
        )
    with pytest.raises(VitDSIError, match="pq_m=7 sub-quantisers must divide the vector width 3072"):
        create("embedding", backbone="pixels", index_type="ivfpq", pq_m=7).index(digits_corpus)


def test_approximate_indexes_are_reproducible_and_round_trip(digits_corpus, tmp_path):
    from vitdsi.retrievers import load_retriever, save_retriever

    queries = digits_corpus.images[:50]
    for index_type in ("hnsw", "ivf", "ivfpq"):
        a = create("embedding", backbone="pixels", index_type=index_type, device="cpu")
        b = create("embedding", backbone="pixels", index_type=index_type, device="cpu")
        a.index(digits_corpus)
        b.index(digits_corpus)
        a.set_query_arguments(nprobe=2, ef_search=16)
        first = a.search(queries, 10)
        b.set_query_arguments(nprobe=2, ef_search=16)
        assert torch.equal(first.ids, b.search(queries, 10).ids)
        save_retriever(a, tmp_path / index_type)
        loaded = load_retriever(tmp_path / index_type, device="cpu")
        assert loaded.query_args["nprobe"] == 2
        assert torch.equal(loaded.search(queries, 10).ids, first.ids)


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_indexed_images_come_back_first(digits_corpus, index_type):
    r = create("embedding", backbone="pixels", index_type=index_type, device="cpu")
    r.index(digits_corpus)
    ia = indexing_accuracy(r.search(digits_corpus.images, 5).ids, len(digits_corpus))
    assert ia["IA@1"].mean == 1.0


def test_efficientnet_lite0_features(tiny_split):
    net = load_backbone("efficientnet-lite0", "cpu")
    assert net.input_size == 224 and net.mean == TFLITE_MEAN
    with torch.inference_mode():
        feats = net(tiny_split.corpus.images[:3])
    assert feats.shape == (3, 1280)
    assert (feats >= 0).all() and (feats <= 6).all()  # pooled ReLU6 activations

    # the ImageNet weights, input size and normalisation are right: the package's own
    # classifier on these features names scikit-learn's bundled photos sensibly
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images  # a Chinese palace, a dahlia
    photos = torch.stack(
        [torch.from_numpy(np.ascontiguousarray(p[:, :427])).permute(2, 0, 1) for p in (china, flower)]
    )
    with torch.inference_mode():
        top5 = net.model.net._fc(net(photos)).topk(5).indices
    assert {698, 442, 663} & set(top5[0].tolist())  # palace, bell cote, monastery
    assert 985 in top5[1].tolist()  # daisy

    corpus = tiny_split.corpus.subset(np.arange(16))
    r = create("embedding", backbone="efficientnet-lite0", batch_size=8, device="cpu")
    r.index(corpus)
    ia = indexing_accuracy(r.search(corpus.images, 5).ids, len(corpus))
    assert ia["IA@1"].mean == 1.0


def test_input_size_gives_a_borrowed_encoders_pooled_features(tiny_split):
    """At `input_size` 96 the embedding baseline reads what a frozen, pooled EfficientNet-Lite0
    at `encoder_size` 96 gives a DSI: the same network, resize and normalisation, two code paths."""
    from vitdsi.models.borrowed_encoder import BorrowedEncoder
    from vitdsi.models.vit_dsi import VitDSIConfig
    from vitdsi.training.augment import to_input

    images = tiny_split.corpus.images[:4]
    net = load_backbone("efficientnet-lite0", "cpu", input_size=96)
    assert net.input_size == 96 and "resize to 96 px" in net.cache_spec()[1]
    assert net.cache_spec() != load_backbone("efficientnet-lite0", "cpu").cache_spec()
    cfg = VitDSIConfig(
        encoder="efficientnet-lite0", encoder_size=96, freeze_encoder=True, encoder_pool=True, dim=32
    )
    with torch.inference_mode():
        ours = net(images)
        theirs = BorrowedEncoder(cfg).eval().precompute(to_input(images)).flatten(1)
        at_224 = load_backbone("efficientnet-lite0", "cpu")(images)
    assert ours.shape == theirs.shape == (4, 1280)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert (ours - at_224).abs().max() > 0.1  # 96 px is not 224 px

    r = create("embedding", backbone="efficientnet-lite0", input_size=96, batch_size=8, device="cpu")
    assert r.build_params()["input_size"] == 96
    with pytest.raises(VitDSIError, match="input_size 16 px is too small"):
        load_backbone("efficientnet-lite0", "cpu", input_size=16)


def test_missing_torchvision_weights_name_the_file(tmp_path, monkeypatch, tiny_split):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(
        VitDSIError, match=r"not available locally: expected the file .*resnet18-f37072fd\.pth"
    ):
        load_backbone("resnet18")
    with pytest.raises(VitDSIError, match="not available locally"):
        create("embedding", backbone="resnet18", device="cpu").index(tiny_split.corpus)
    assert not (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()  # nothing downloaded
    with pytest.raises(VitDSIError, match="unknown backbone 'no-such-net'.*resnet18"):
        load_backbone("no-such-net")
    with pytest.raises(VitDSIError, match="has no weights 'NOPE'"):
        load_backbone("resnet18:NOPE")


def test_torchvision_model_with_local_weights(tmp_path, monkeypatch, tiny_split):
    """A torchvision model whose weights file is in the local hub cache is used as is (a
    randomly initialised state dict stands in for the real file here)."""
    from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    reference = mobilenet_v3_small().eval()
    file = torchvision_weights_file(MobileNet_V3_Small_Weights.DEFAULT)
    file.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), file)

    net = load_backbone("mobilenet_v3_small", "cpu")
    assert net.input_size == 224
    images = tiny_split.corpus.images[:4]
    with torch.inference_mode():
        feats = net(images)
        # the features are the input of the final linear layer, with the saved weights
        x = torch.nn.functional.interpolate(
            images.float() / 255, size=(224, 224), mode="bilinear", antialias=True
        )
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]
        ).view(1, 3, 1, 1)
        expected = reference.classifier[:-1](reference.avgpool(reference.features(x)).flatten(1))
    assert feats.shape == (4, 1024)
    torch.testing.assert_close(feats, expected, atol=1e-4, rtol=1e-4)


def test_options_are_clear_errors():
    with pytest.raises(VitDSIError, match="index_type must be one of"):
        create("embedding", index_type="lsh")
    r = create("embedding", backbone="pixels")
    with pytest.raises(VitDSIError, match="unknown query argument"):
        r.set_query_arguments(ef=3)
