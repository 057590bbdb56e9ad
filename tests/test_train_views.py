"""The training-view family (vitdsi.training.train_views) and the DSI's pseudo-query views (index_views)."""

from __future__ import annotations

import pytest
import torch

from vitdsi.errors import VitDSIError
from vitdsi.ids import make_ids
from vitdsi.models import VitDSI, VitDSIConfig
from vitdsi.retrievers import create
from vitdsi.training.augment import to_input
from vitdsi.training.config import TrainConfig
from vitdsi.training.dsi import DSITrainer
from vitdsi.training.train_views import VIEW_STRENGTHS, apply_views, describe_views


@pytest.fixture(scope="module")
def batch(digits32):
    return to_input(digits32.images[:64])


@pytest.fixture(scope="module")
def small(tiny_split):
    return tiny_split.corpus.subset(range(24)), tiny_split.train


def _views(x, strength, seed):
    return apply_views(x, torch.Generator().manual_seed(seed), strength)


def test_views_are_seeded(batch):
    a, b, c = (_views(batch, "medium", s) for s in (0, 0, 1))
    assert a.shape == batch.shape and torch.equal(a, b)
    assert not torch.equal(a, c)


def test_stronger_presets_change_pixels_more(batch):
    change = {s: (_views(batch, s, 0) - batch).abs().mean().item() for s in VIEW_STRENGTHS}
    assert change["none"] == 0.0
    assert 0 < change["light"] < change["medium"] < change["strong"]


def test_none_is_the_batch_itself_and_draws_nothing(batch):
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    assert apply_views(batch, gen, "none") is batch
    assert torch.equal(gen.get_state(), state)
    assert describe_views("none") == "none (the image as is)"
    assert describe_views("medium") == "medium (shift <= 1/8 side, flip, brightness/contrast 0.3)"


def test_bad_strength_and_index_views_are_clear_errors(batch):
    with pytest.raises(VitDSIError, match="views must be one of none, light, medium, strong, got 'heavy'"):
        apply_views(batch, torch.Generator(), "heavy")
    with pytest.raises(VitDSIError, match="views must be one of"):
        TrainConfig(views="heavy")
    with pytest.raises(VitDSIError, match="index_views must be >= 0"):
        TrainConfig(views="light", index_views=-1)
    with pytest.raises(VitDSIError, match="index_views=2 .* views is 'none'"):
        TrainConfig(index_views=2)
    for name in ("dsi-vit", "classifier", "dual-encoder"):
        with pytest.raises(VitDSIError, match=f"{name}: views must be one of"):
            create(name, views="heavy")


def _trainer(corpus, queries=None, seed=0, **kw) -> DSITrainer:
    torch.manual_seed(seed)
    ids = make_ids("clustered", len(corpus), labels=corpus.primary_labels(), seed=0)
    cfg = VitDSIConfig(
        image_size=corpus.image_size,
        patch_size=8,
        dim=32,
        ff_dim=64,
        depth=1,
        heads=2,
        dropout=0.0,
        id_length=ids.length,
        atomic=ids.atomic,
        n_ids=ids.n,
    )
    train = TrainConfig(**{"lr": 3e-3, "batch_size": 8, "seed": seed, "target_ia": 1.1, **kw})
    return DSITrainer(
        VitDSI(cfg),
        corpus.images,
        ids.codes,
        train,
        query_images=queries.images if queries is not None else None,
        query_labels=queries.labels if queries is not None else None,
        corpus_labels=corpus.labels,
    )


def _seen(trainer: DSITrainer) -> list[torch.Tensor]:
    """Fit `trainer` and return the model input of every training batch, in order."""
    seen, gather = [], trainer._gather

    def recording(*args):
        x, codes, from_corpus = gather(*args)
        seen.append(x.clone())
        return x, codes, from_corpus

    trainer._gather = recording
    trainer.fit()
    return seen


def test_index_views_present_each_image_one_plus_k_times(small):
    corpus, queries = small
    n, k = len(corpus), 2
    trainer = _trainer(corpus, views="light", index_views=k)
    batches = trainer._batches("index")
    index = torch.cat([b[0] for b in batches])
    assert len(index) == n * (1 + k) and len(batches) == trainer._steps_per_epoch("index")
    assert torch.equal(torch.bincount(index, minlength=n), torch.full((n,), 1 + k))
    assert all(torch.equal(b[0], b[2]) for b in batches)  # each view is labelled with its own image's id
    # multitask: the indexing share grows the same way, the train queries are presented once
    trainer = _trainer(corpus, queries, mode="multitask", views="light", index_views=k)
    src = torch.cat([b[1] for b in trainer._batches("multitask")])
    assert int((src == 0).sum()) == n * (1 + k) and int((src == 1).sum()) == len(trainer.queries)
    history = _trainer(corpus, views="light", index_views=k, index_epochs=1).fit()
    assert history[0].images_per_s * history[0].seconds == pytest.approx(n * (1 + k))


def test_views_change_the_training_batches(small):
    corpus, _ = small
    plain = _seen(_trainer(corpus, index_epochs=2))
    viewed = _seen(_trainer(corpus, views="medium", index_epochs=2))
    pseudo = _seen(_trainer(corpus, views="medium", index_views=2, index_epochs=2))
    assert sum(len(x) for x in plain) == sum(len(x) for x in viewed) == 2 * len(corpus)
    assert sum(len(x) for x in pseudo) == 2 * 3 * len(corpus)
    # without views every example is a corpus image as is; with them (same order: same seed) none is
    clean = {tuple(x.flatten().tolist()) for x in to_input(corpus.images)}
    assert all(tuple(r.flatten().tolist()) in clean for x in plain for r in x)
    assert not any(torch.equal(a, b) for a, b in zip(plain, viewed))
    # the epochs differ from each other: fresh views every epoch
    half = len(pseudo) // 2
    assert not torch.equal(torch.cat(pseudo[:half]), torch.cat(pseudo[half:]))


def test_pseudo_query_views_are_seeded(small):
    corpus, _ = small
    a, b, c = (
        _seen(_trainer(corpus, seed=s, views="medium", index_views=2, index_epochs=1)) for s in (0, 0, 1)
    )
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(len(x) == len(z) and torch.equal(x, z) for x, z in zip(a, c))


def test_baselines_train_on_views_of_the_shared_family(small):
    corpus, _ = small
    x = corpus.images[:16]
    # parity by default
    assert {create(name).views for name in ("dsi-vit", "classifier", "dual-encoder")} == {"none"}
    for name in ("classifier", "dual-encoder"):
        for strength in VIEW_STRENGTHS:
            r = create(name, views=strength)
            got = r._train_input(x, torch.Generator().manual_seed(5))
            assert torch.equal(got, _views(to_input(x), strength, 5)), (name, strength)


def test_an_index_saved_with_the_former_augment_parameter_loads(small, tmp_path):
    import json

    from vitdsi.retrievers.persistence import load_retriever, save_retriever

    corpus, _ = small
    r = create("dsi-vit", patch_size=8, dim=32, ff_dim=64, depth=1, heads=2, index_epochs=1, device="cpu")
    r.index(corpus)
    save_retriever(r, tmp_path)
    config = json.loads((tmp_path / "retriever.json").read_text())
    del config["build_params"]["views"], config["build_params"]["index_views"]
    config["build_params"]["augment"] = True
    (tmp_path / "retriever.json").write_text(json.dumps(config))
    loaded = load_retriever(tmp_path)
    assert torch.equal(loaded.search(corpus.images, 3).ids, r.search(corpus.images, 3).ids)
