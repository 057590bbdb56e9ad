"""The label-matched baselines of the ViT-DSI (`classifier`, `dual-encoder`) and the encoder
they share with it: ranking order, multi-label data, FAISS variants, learning, persistence,
parameter errors. (The retriever contract itself is tests/test_contract.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitdsi.data import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.models import VitDSI, VitDSIConfig, VitEncoder, VitEncoderConfig
from vitdsi.retrievers import create, get, load_retriever, save_retriever
from vitdsi.retrievers.base import Supervision

TINY = dict(
    patch_size=8, dim=32, ff_dim=64, depth=1, heads=2, dropout=0.0, lr=2e-3, batch_size=32, device="cpu"
)
LEARN = dict(TINY, lr=3e-3, batch_size=16, epochs=30)  # enough steps to learn something from 108 images


def ap_at_10(ids: torch.Tensor, relevant: torch.Tensor) -> float:
    """Mean AP@10 of rankings `ids` [Q, 10] given the [Q, N] relevance matrix."""
    rel = relevant.gather(1, ids).float()
    prec = rel.cumsum(1) / torch.arange(1, ids.shape[1] + 1)
    return float(((prec * rel).sum(1) / relevant.sum(1).clamp(max=ids.shape[1]).clamp(min=1)).mean())


@pytest.fixture(scope="module")
def held_out(digits32, tiny_split):
    """200 digits outside the tiny split: queries neither indexed nor trained on."""
    used = set(
        np.concatenate(
            [s.source_ids for s in (tiny_split.corpus, tiny_split.train, tiny_split.val, tiny_split.test)]
        ).tolist()
    )
    free = np.array([i for i, s in enumerate(digits32.source_ids.tolist()) if s not in used])[:200]
    return digits32.subset(free)


@pytest.fixture(scope="module")
def classifier(tiny_split):
    r = create("classifier", **{**LEARN, "lr": 5e-3, "batch_size": 8})
    r.index(tiny_split.corpus, train_queries=tiny_split.train)
    return r


@pytest.fixture(scope="module")
def dual(tiny_split):
    r = create("dual-encoder", **LEARN, embed_dim=16)
    r.index(tiny_split.corpus, train_queries=tiny_split.train)
    return r


# ---- the shared encoder -----------------------------------------------------------------
def test_encoder_shapes_and_the_dsi_uses_it():
    torch.manual_seed(0)
    cfg = VitEncoderConfig(image_size=16, patch_size=4, dim=32, ff_dim=64, depth=2, heads=2, dropout=0.0)
    enc = VitEncoder(cfg).eval()
    x = torch.randn(3, 3, 16, 16)
    assert enc(x).shape == (3, 16, 32)
    assert torch.allclose(enc.embed(x), enc(x).mean(1))
    dsi = VitDSI(VitDSIConfig(image_size=16, patch_size=4, dim=32, ff_dim=64, depth=2, heads=2)).eval()
    assert isinstance(dsi.encoder, VitEncoder) and dsi.cfg.encoder_config() == VitEncoderConfig(
        image_size=16, patch_size=4, dim=32, ff_dim=64, depth=2, heads=2
    )
    assert torch.equal(dsi.encode(x), dsi.encoder(x))


def test_dsi_state_dicts_from_before_the_encoder_module_still_load():
    cfg = VitDSIConfig(
        image_size=16, patch_size=4, dim=32, ff_dim=64, depth=2, heads=2, pos_encoding="learned"
    )
    torch.manual_seed(0)
    model = VitDSI(cfg)
    old = {}
    for key, value in model.state_dict().items():  # the key names of the former flat layout
        key = key.replace("encoder.layers.", "encoder.", 1) if key.startswith("encoder.layers.") else key
        old[
            key[len("encoder.") :] if key.startswith("encoder.") and not key.split(".")[1].isdigit() else key
        ] = value
    assert "patch_embed.weight" in old and "encoder.0.attn.qkv.weight" in old
    torch.manual_seed(1)
    again = VitDSI(cfg)
    again.load_state_dict(old)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


# ---- classifier -------------------------------------------------------------------------
def test_classifier_ranks_by_class_then_cosine(classifier, tiny_split):
    corpus = tiny_split.corpus
    queries = torch.cat([tiny_split.test.images, tiny_split.val.images, tiny_split.train.images[:8]])
    n = len(corpus)
    ranking = classifier.search(queries, n)
    probs, emb = classifier.predict(queries)
    _, corpus_emb = classifier.predict(corpus.images)
    cos = emb @ corpus_emb.T
    labels = corpus.labels.tolist()
    for q in range(len(queries)):
        class_rank = torch.argsort(probs[q], descending=True, stable=True).argsort().tolist()
        expected = sorted(range(n), key=lambda i: (class_rank[labels[i]], -cos[q, i].item(), i))
        got = ranking.ids[q].tolist()
        assert got[:n] == expected, f"query {q}: ranking differs from (class rank, cosine) order"
        top = int(probs[q].argmax())
        n_top = labels.count(top)
        assert all(labels[i] == top for i in got[:n_top]), "all images of the top class come first"
    scores = ranking.scores
    assert torch.isfinite(scores).all() and (scores.diff(dim=1) <= 0).all()


def test_classifier_learns_the_classes(classifier, held_out):
    probs, _ = classifier.predict(held_out.images)
    accuracy = (probs.argmax(1) == held_out.labels).float().mean().item()
    assert accuracy > 0.2, f"accuracy {accuracy:.2f} on held-out digits (chance 0.1)"
    assert classifier.history[-1]["loss"] < classifier.history[0]["loss"]
    assert {"phase", "epoch", "step", "lr", "loss", "seconds", "images_per_s", "train_accuracy"} <= set(
        classifier.history[0]
    )


def multi_label(s: ImageSet) -> ImageSet:
    """Digits as multi-label data: the digit, plus 'even' / 'odd', plus 'large' (>= 5)."""
    digit = torch.nn.functional.one_hot(s.labels, 10).bool()
    extra = torch.stack([s.labels % 2 == 0, s.labels % 2 == 1, s.labels >= 5], 1)
    names = (*s.class_names, "even", "odd", "large")
    return ImageSet(s.images, torch.cat([digit, extra], 1), s.source_ids, names, "digits-multi")


def test_multilabel_classifier_ranks_by_summed_category_probability(tiny_split, tmp_path):
    corpus, train = multi_label(tiny_split.corpus), multi_label(tiny_split.train)
    r = create("classifier", **TINY, epochs=4)
    r.index(corpus, train_queries=train)
    queries = tiny_split.test.images
    ranking = r.search(queries, len(corpus))
    probs, emb = r.predict(queries)
    _, corpus_emb = r.predict(corpus.images)
    group_score = (probs.double() @ corpus.labels.double().T).gather(1, ranking.ids)  # in ranked order
    cos = (emb @ corpus_emb.T).gather(1, ranking.ids)
    assert (group_score.diff(dim=1) <= 1e-6).all(), "summed category probability must not increase"
    # same category set
    same = corpus.labels[ranking.ids[:, 1:]].eq(corpus.labels[ranking.ids[:, :-1]]).all(-1)
    assert (cos.diff(dim=1)[same] <= 1e-6).all(), "cosine breaks ties within a category set"
    assert (ranking.scores.diff(dim=1) <= 0).all() and torch.isfinite(ranking.scores).all()
    save_retriever(r, tmp_path / "multi")
    loaded = load_retriever(tmp_path / "multi", device="cpu")
    assert torch.equal(loaded.search(queries, 10).ids, ranking.ids[:, :10])


def test_classifier_without_labels_is_a_clear_error(tiny_split):
    c = tiny_split.corpus
    unlabelled = ImageSet(c.images, torch.full_like(c.labels, -1), c.source_ids, c.class_names, "unlabelled")
    with pytest.raises(VitDSIError, match="classifier: the corpus has no labels"):
        create("classifier", **TINY, epochs=1).index(unlabelled)


# ---- dual encoder -----------------------------------------------------------------------
def test_dual_encoder_flat_and_hnsw_agree(dual, tiny_split, held_out):
    hnsw = create("dual-encoder", **LEARN, embed_dim=16, index_type="hnsw", hnsw_m=8)
    hnsw.index(tiny_split.corpus, train_queries=tiny_split.train)
    flat_top = dual.search(held_out.images, 5)
    hnsw_top = hnsw.search(held_out.images, 5)
    assert (flat_top.ids[:, 0] == hnsw_top.ids[:, 0]).float().mean() > 0.9
    torch.testing.assert_close(flat_top.scores[:, 0], hnsw_top.scores[:, 0], atol=1e-5, rtol=0)
    # the scores are cosines of the model's unit-norm embeddings
    exact = torch.from_numpy(dual.embed(held_out.images[:4]) @ dual.embed(tiny_split.corpus.images).T)
    torch.testing.assert_close(flat_top.scores[:4], exact.gather(1, flat_top.ids[:4]), atol=1e-5, rtol=0)


def test_dual_encoder_training_beats_the_untrained_tower(dual, tiny_split, held_out):
    untrained = create("dual-encoder", **{**LEARN, "epochs": 0}, embed_dim=16)
    untrained.index(tiny_split.corpus, train_queries=tiny_split.train)
    relevant = held_out.labels[:, None] == tiny_split.corpus.labels[None, :]
    before = ap_at_10(untrained.search(held_out.images, 10).ids, relevant)
    after = ap_at_10(dual.search(held_out.images, 10).ids, relevant)
    assert after > before + 0.05, f"mAP@10 trained {after:.3f} vs untrained {before:.3f}"
    assert untrained.history == [] and len(dual.history) == 30
    assert dual.history[-1]["loss"] < dual.history[0]["loss"]


def test_dual_encoder_on_epoch_hook_stops_training(tiny_split):
    r = create("dual-encoder", **TINY, epochs=10, embed_dim=16)
    seen = []
    # view pairs only
    r.index(tiny_split.corpus, on_epoch=lambda entry: seen.append(entry) or entry["epoch"] >= 2)
    assert [e["epoch"] for e in r.history] == [1, 2] and seen == r.history
    assert r.history[0]["phase"] == "contrastive"


# ---- both -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["classifier", "dual-encoder-hnsw"])
def test_save_load_gives_identical_rankings_and_loads_weights_only(name, classifier, tiny_split, tmp_path):
    if name == "classifier":
        r = classifier
    else:
        r = create("dual-encoder", **TINY, epochs=2, index_type="hnsw", hnsw_m=8)
        r.index(tiny_split.corpus, train_queries=tiny_split.train)
        r.set_query_arguments(ef_search=16)
    queries = torch.cat([tiny_split.test.images, tiny_split.train.images])
    before = r.search(queries, 10)
    save_retriever(r, tmp_path / "index")
    state = torch.load(tmp_path / "index" / "state.pt", weights_only=True)
    assert isinstance(state, dict) and state["history"] == r.history
    loaded = load_retriever(tmp_path / "index", device="cpu")
    assert loaded.query_args == r.query_args and loaded.build_params() == r.build_params()
    after = loaded.search(queries, 10)
    assert torch.equal(before.ids, after.ids) and torch.equal(before.scores, after.scores)


def test_supervision_follows_use_queries():
    assert create("classifier", **TINY).supervision_used() == Supervision(
        corpus_labels=True, query_pairs=True
    )
    assert create("classifier", **TINY, use_queries=False).supervision_used() == Supervision(
        corpus_labels=True
    )
    assert create("dual-encoder", **TINY).supervision_used() == Supervision(query_pairs=True)
    assert not create("dual-encoder", **TINY, use_queries=False).supervision_used().uses_labels


@pytest.mark.parametrize("name", ["classifier", "dual-encoder"])
def test_bad_parameters_are_clear_errors(name, tiny_split):
    with pytest.raises(VitDSIError, match=f"{name}: patch_size 5 does not divide the image size 32"):
        create(name, **{**TINY, "patch_size": 5}).index(tiny_split.corpus)
    with pytest.raises(VitDSIError, match="choose a divisor of 32"):
        create(name, **{**TINY, "patch_size": 5}).check_image_size(32)
    with pytest.raises(VitDSIError, match=rf"{name}: heads \(3\) must divide dim \(32\)"):
        create(name, **{**TINY, "heads": 3})
    with pytest.raises(VitDSIError, match="pos_encoding"):
        create(name, **{**TINY, "pos_encoding": "rotary"})
    with pytest.raises(VitDSIError, match=rf"{name}: parameter 'epochs' must be in 0\.\.100,000,000, got -1"):
        create(name, **{**TINY, "epochs": -1})  # bounds of integer parameters (vitdsi.limits)
    with pytest.raises(VitDSIError, match="epochs >= 0"):
        get(name)(**{**TINY, "epochs": -1})  # built directly: the retriever's own check


def test_dual_encoder_parameter_errors():
    with pytest.raises(
        VitDSIError,
        match=r"dual-encoder: index_type must be one of \('flat', 'hnsw', 'ivf', 'ivfpq'\), got 'lsh'",
    ):
        create("dual-encoder", **TINY, index_type="lsh")
    with pytest.raises(VitDSIError, match="temperature must be > 0"):
        create("dual-encoder", **TINY, temperature=0)
    with pytest.raises(VitDSIError, match="need hnsw_m >= 2 and ef_construction >= 1, got 1, 40"):
        create("dual-encoder", **TINY, hnsw_m=1)
    with pytest.raises(VitDSIError, match="embed_dim"):
        create("dual-encoder", **TINY, embed_dim=0)
    with pytest.raises(VitDSIError, match="label_smoothing"):
        create("classifier", **TINY, label_smoothing=1.5)
