"""A fixed bank of V training views per image on a frozen encoder (vitdsi.training.view_bank), and
pooled tokens (`encoder_pool`): seeded, computed through the frozen part once and never per batch,
trainable, and misuse is a clear error naming the parameter."""

from __future__ import annotations

import pytest
import torch
from conftest import smoke_retriever

from bench.config import StudyConfigError, resolve
from bench.report.data import StudyRecord
from bench.report.views import views_text
from vitdsi.errors import VitDSIError
from vitdsi.models.borrowed_encoder import BorrowedEncoder
from vitdsi.models.vit_dsi import VitDSI, VitDSIConfig
from vitdsi.retrievers import create
from vitdsi.training.augment import to_input
from vitdsi.training.config import TrainConfig
from vitdsi.training.dsi import DSITrainer
from vitdsi.training.flops import FlopMeter
from vitdsi.training.view_bank import BANK_CHUNK, BankViews, build_view_bank

# a frozen EfficientNet-Lite0 at 64 px (a 2 x 2 feature map) under a tiny decoder: cheap on a CPU
MODEL = dict(encoder="efficientnet-lite0", encoder_size=64, dim=32, ff_dim=64, depth=1, heads=2, dropout=0.0)


def dsi_config(n: int, **extra) -> VitDSIConfig:
    return VitDSIConfig(image_size=32, **MODEL, id_length=1, atomic=True, n_ids=n, **extra)


def count_fixed_calls(encoder: BorrowedEncoder) -> list[int]:
    """Images each call of the encoder's fixed part sees, recorded as it runs."""
    calls: list[int] = []
    encoder.frozen.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    return calls


def bank_of(images: torch.Tensor, seed: int, encoder: BorrowedEncoder, v: int = 2):
    originals = [encoder.precompute(to_input(images))]
    return build_view_bank(encoder, [images], originals, v, "medium", seed)


def test_bank_views_are_seeded_by_the_training_seed(digits32, monkeypatch):
    monkeypatch.setenv("VITDSI_FEATURE_CACHE", "0")  # computed each time, not read back
    images = digits32.images[:10]
    encoder = VitDSI(dsi_config(10)).encoder
    same = [BankViews(images, 3, "medium", seed=1).chunk(0) for _ in range(2)]
    assert same[0].shape == (30, 3, 32, 32) and torch.equal(same[0], same[1])
    assert not torch.equal(same[0], BankViews(images, 3, "medium", seed=2).chunk(0))
    # the train queries' views are drawn apart from the corpus's
    assert not torch.equal(same[0], BankViews(images, 3, "medium", seed=1, stream=1).chunk(0))
    a, b, other = (bank_of(images, s, encoder).views[0] for s in (5, 5, 6))
    assert a.shape[0] == 20 and torch.equal(a, b) and not torch.allclose(a, other)


def test_views_are_made_chunk_by_chunk_in_image_order():
    # flat grey images, one shade each: a light view (shift with replicated edges, flip) keeps the
    # shade, so every row tells which image it is a view of
    n = BANK_CHUNK + 5
    images = (torch.arange(n, dtype=torch.uint8) * 3)[:, None, None, None].expand(n, 3, 8, 8).contiguous()
    source = BankViews(images, 2, "light", seed=0)
    chunks = list(source.inputs())
    assert [len(c) for c in chunks] == [2 * BANK_CHUNK, 10] and len(source) == 2 * n
    shades = torch.cat(chunks)[:, 0, 0, 0]
    torch.testing.assert_close(shades, to_input(images).repeat_interleave(2, dim=0)[:, 0, 0, 0])


def test_bank_features_are_the_fixed_part_on_the_view_images(digits32, tmp_path, monkeypatch):
    monkeypatch.setenv("VITDSI_CACHE_DIR", str(tmp_path))  # through an empty feature cache and back
    images = digits32.images[: BANK_CHUNK + 3]
    encoder = VitDSI(dsi_config(len(images))).encoder
    meter = FlopMeter()
    originals = [encoder.precompute(to_input(images)), None]
    bank = build_view_bank(encoder, [images, None], originals, 2, "strong", 3, meter)
    assert bank.views[1] is None and bank.views[0].shape == (2 * len(images), 1280, 2, 2)
    source = BankViews(images, 2, "strong", seed=3)
    for c in range(2):
        rows = slice(c * 2 * BANK_CHUNK, (c + 1) * 2 * BANK_CHUNK)
        torch.testing.assert_close(bank.views[0][rows], encoder.precompute(source.chunk(c)))
    assert meter.flops > 0  # charged for the views' pass through the fixed part
    calls = count_fixed_calls(encoder)
    again = build_view_bank(encoder, [images, None], originals, 2, "strong", 3, FlopMeter())
    assert [c for c in calls if c > 1] == []  # read back from the cache (one image for the FLOPs)
    torch.testing.assert_close(again.views[0], bank.views[0])


def test_a_bank_draws_the_image_or_one_of_its_views(digits32, monkeypatch):
    """Batches with a bank are not the batches without views: each row is the image's own
    features or one of its V views', and both occur."""
    monkeypatch.setenv("VITDSI_FEATURE_CACHE", "0")
    n, v = 24, 3
    images, codes = digits32.images[:n], torch.arange(n)[:, None]
    cfg = TrainConfig(mode="zero-shot", views="medium", view_bank=v, index_views=1, batch_size=8)
    banked = DSITrainer(VitDSI(dsi_config(n)), images, codes, cfg)
    plain = DSITrainer(VitDSI(dsi_config(n)), images, codes, TrainConfig(mode="zero-shot"))
    assert banked.precomputed and plain.precomputed and plain.bank is None
    torch.testing.assert_close(banked.corpus, plain.corpus)  # the originals are the features without views
    index = torch.arange(n).repeat(4)
    zeros = torch.zeros_like(index)
    x, targets, _ = banked._gather(index, zeros, index)
    without, _, _ = plain._gather(index, zeros, index)
    assert torch.equal(targets[:, 0], index) and not torch.equal(x, without)
    own = (x == without).flatten(1).all(1)
    views = banked.bank.views[0].view(n, v, -1)
    from_view = (x.flatten(1)[:, None, :] == views[index]).all(2).any(1)
    assert bool((own | from_view).all()) and own.any() and from_view.any()


def test_training_with_a_bank_never_runs_the_fixed_part(digits32, monkeypatch):
    monkeypatch.setenv("VITDSI_FEATURE_CACHE", "0")
    n = 16
    model = VitDSI(dsi_config(n))
    calls = count_fixed_calls(model.encoder)
    cfg = TrainConfig(
        mode="zero-shot",
        views="strong",
        view_bank=2,
        index_views=2,
        index_epochs=2,
        eval_every=1,
        batch_size=8,
    )
    trainer = DSITrainer(model, digits32.images[:n], torch.arange(n)[:, None], cfg)
    # built: every image, then every view, once (and one image of each for the FLOP count)
    assert [c for c in calls if c > 1] == [n, 2 * n]
    calls.clear()
    trainer.fit()
    assert len(trainer.history) == 2 and calls == []  # no pass of the fixed part per batch or per IA@1


@pytest.mark.parametrize("name", ["classifier", "dual-encoder"])
def test_baselines_train_on_a_bank_without_running_the_fixed_part_per_batch(name, tiny_split, monkeypatch):
    monkeypatch.setenv("VITDSI_FEATURE_CACHE", "0")
    calls = []
    real = BorrowedEncoder.precompute
    monkeypatch.setattr(
        BorrowedEncoder, "precompute", lambda self, x: len(x) > 1 and calls.append(len(x)) or real(self, x)
    )
    r = create(name, **MODEL, views="medium", view_bank=2, epochs=3, device="cpu")
    r.index(tiny_split.corpus, train_queries=tiny_split.train)
    n = len(tiny_split.corpus) + len(tiny_split.train)
    # every training image and its 2 views once, then the corpus once to build the index: three
    # epochs of fresh views would have been 3 * n more
    assert sum(calls) == 3 * n + len(tiny_split.corpus)
    assert len(r.history) == 3 and r.search(tiny_split.test.images, k=5).ids.shape == (
        len(tiny_split.test),
        5,
    )


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(MODEL, view_bank=2), "view_bank=2 keeps 2 training views of every image, but views is 'none'"),
        (dict(MODEL, views="light", view_bank=-1), "view_bank.? must be"),
        (dict(encoder="vit", views="light", view_bank=2), "view_bank=2 caches views through a borrowed"),
        (dict(MODEL, freeze_encoder=False, views="light", view_bank=2), "freeze_encoder False has none"),
    ],
)
@pytest.mark.parametrize("name", ["dsi-vit", "classifier", "dual-encoder"])
def test_view_bank_misuse_is_a_clear_error(name, params, message):
    with pytest.raises(VitDSIError, match=message):
        create(name, **params)


def test_a_bank_on_an_encoder_without_a_fixed_part_is_an_error_in_the_trainer(digits32):
    cfg = VitDSIConfig(image_size=32, patch_size=8, dim=32, ff_dim=64, depth=1, heads=2, atomic=True, n_ids=4)
    with pytest.raises(VitDSIError, match="view_bank=2 caches views through a borrowed encoder's fixed part"):
        DSITrainer(
            VitDSI(cfg),
            digits32.images[:4],
            torch.arange(4)[:, None],
            TrainConfig(views="light", view_bank=2),
        )
    with pytest.raises(VitDSIError, match="view_bank=1 keeps 1 training views of every image"):
        TrainConfig(view_bank=1)


def test_study_check_names_the_field_of_a_bad_view_bank():
    study = {
        "name": "t",
        "scale": "smoke",
        "methods": {"dsi": {"retriever": "dsi-vit", "params": {"view_bank": 4}}},
        "space": {"method": ["dsi"]},
    }
    with pytest.raises(StudyConfigError, match=r"methods\.dsi\.params\.view_bank.*views is 'none'"):
        resolve(study)


def test_report_declares_the_bank():
    methods = {
        "dsi": {"retriever": "dsi-vit", "params": {**MODEL, "view_bank": 4}},
        "dual-encoder": {"retriever": "dual-encoder"},
    }
    sf = resolve(
        {
            "name": "t",
            "scale": "smoke",
            "methods": methods,
            "space": {"method": list(methods)},
            "views": {"strength": "medium", "index_views": 2},
        }
    )
    record = StudyRecord(
        name="t",
        run_id="r",
        experiment_id="0",
        tracking_uri="",
        params={},
        tags={},
        resolved=sf.model_dump(mode="json"),
    )
    text = views_text(record)
    assert "dsi bank of 4 views" in text and "dual-encoder bank" not in text and "dsi K=2" in text


def test_pooled_tokens_are_one_per_image_and_another_cache_entry(digits32):
    x = to_input(digits32.images[:4])
    plain = VitDSI(dsi_config(4)).encoder
    pooled = VitDSI(dsi_config(4, encoder_pool=True)).encoder
    fmap = plain.precompute(x)
    assert fmap.shape == (4, 1280, 2, 2) and pooled.precompute(x).shape == (4, 1280, 1, 1)
    torch.testing.assert_close(pooled.precompute(x), fmap.mean(dim=(2, 3), keepdim=True))
    with torch.no_grad():
        assert pooled(x).shape == (4, 1, 32) and plain(x).shape == (4, 4, 32)
    assert pooled.cache_spec()[0] != plain.cache_spec()[0] and "pooled" in pooled.cache_spec()[0]
    assert pooled.cache_spec()[1] == plain.cache_spec()[1]


@pytest.mark.parametrize(
    "fields", [dict(encoder="vit"), dict(encoder="efficientnet-lite0", freeze_encoder=2)]
)
def test_encoder_pool_needs_a_wholly_frozen_borrowed_encoder(fields):
    with pytest.raises(VitDSIError, match="encoder_pool pools a fixed borrowed encoder's feature map"):
        VitDSIConfig(image_size=32, patch_size=8, encoder_pool=True, **fields)
    with pytest.raises(VitDSIError, match="dsi-vit: encoder_pool"):
        create("dsi-vit", patch_size=8, encoder_pool=True, **fields)


def test_pooled_dsi_with_a_bank_memorises_a_small_set(digits32, monkeypatch):
    monkeypatch.setenv("VITDSI_FEATURE_CACHE", "0")
    n = 32
    model = VitDSI(dsi_config(n, encoder_pool=True))
    torch.manual_seed(0)
    cfg = TrainConfig(
        mode="zero-shot",
        views="medium",
        view_bank=4,
        index_views=2,
        index_epochs=40,
        lr=1e-2,
        batch_size=16,
        target_ia=0.95,
        eval_every=5,
    )
    trainer = DSITrainer(model, digits32.images[:n], torch.arange(n)[:, None], cfg)
    assert trainer.corpus.shape == (n, 1280, 1, 1) and trainer.bank.views[0].shape == (4 * n, 1280, 1, 1)
    trainer.fit()
    assert trainer.greedy_ia1() >= 0.9


@pytest.mark.parametrize(
    "name, params",
    [
        ("dsi-text", dict(index_epochs=2, retrieval_epochs=2, id_scheme="atomic", target_ia=1.0)),
        ("text-dual-encoder", dict(epochs=3)),
    ],
)
def test_caption_retrievers_read_their_images_from_a_bank(name, params, text_split, monkeypatch):
    monkeypatch.setenv("VITDSI_FEATURE_CACHE", "0")
    calls = []
    real = BorrowedEncoder.precompute
    monkeypatch.setattr(
        BorrowedEncoder, "precompute", lambda self, x: len(x) > 1 and calls.append(len(x)) or real(self, x)
    )
    seen = []  # images through the fixed part so far, at the end of each epoch
    r = smoke_retriever(name, **MODEL, views="light", view_bank=2, **params)
    r.index(text_split.corpus, on_epoch=lambda e: seen.append(sum(calls)))
    assert len(seen) >= 3 and seen[0] == seen[-1] == 3 * len(text_split.corpus)  # images and views, once
