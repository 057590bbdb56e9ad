"""Training loops: loss goes down, determinism, batch mixing, targets, schedule, augmentation."""

from __future__ import annotations

import pytest
import torch

from vitdsi.divergence import TrainingDivergedError
from vitdsi.errors import VitDSIError
from vitdsi.ids import make_ids
from vitdsi.models import VitDSI, VitDSIConfig
from vitdsi.training.augment import random_shift
from vitdsi.training.config import TrainConfig
from vitdsi.training.dsi import DSITrainer
from vitdsi.training.optim import lr_factor
from vitdsi.training.sampler import RelevantSampler


@pytest.fixture(scope="module")
def small(tiny_split):
    corpus = tiny_split.corpus.subset(range(32))
    return corpus, tiny_split.train


def make_trainer(corpus, queries=None, scheme="clustered", seed=0, **kw):
    torch.manual_seed(seed)
    ids = make_ids(scheme, len(corpus), labels=corpus.primary_labels(), seed=seed)
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
    model = VitDSI(cfg)
    train_cfg = TrainConfig(**{"lr": 3e-3, "batch_size": 8, "seed": seed, **kw})
    return DSITrainer(
        model,
        corpus.images,
        ids.codes,
        train_cfg,
        query_images=queries.images if queries is not None else None,
        query_labels=queries.labels if queries is not None else None,
        corpus_labels=corpus.labels,
    )


@pytest.mark.parametrize("scheme", ["clustered", "atomic"])
def test_indexing_loss_decreases_and_memorises(small, scheme):
    corpus, _ = small
    trainer = make_trainer(corpus, scheme=scheme, index_epochs=80, target_ia=1.1, eval_every=80)
    history = trainer.fit()
    assert len(history) == 80
    assert history[-1].loss < 0.5 * history[0].loss
    assert history[-1].ia1 is not None and history[-1].ia1 > 0.5  # chance is 1/32


def test_training_is_deterministic_on_cpu(small):
    corpus, queries = small
    runs = [
        make_trainer(
            corpus,
            queries,
            mode="multitask",
            index_epochs=2,
            retrieval_epochs=2,
            views="medium",
            index_views=1,
        ).fit()
        for _ in range(2)
    ]
    assert [e.loss for e in runs[0]] == [e.loss for e in runs[1]]


def test_early_stop_at_target_ia(small):
    corpus, _ = small
    history = make_trainer(corpus, index_epochs=50, target_ia=0.0).fit()
    assert len(history) == 1 and history[0].ia1 is not None


def test_multitask_batches_mix_both_tasks_and_target_relevant_images(small):
    corpus, queries = small
    trainer = make_trainer(corpus, queries, mode="multitask")
    batches = trainer._batches("multitask")
    n_corpus = n_query = 0
    for index, src, target in batches:
        assert (src == 0).any() and (src == 1).any(), "every multitask batch holds both tasks"
        corpus_rows = src == 0
        assert torch.equal(index[corpus_rows], target[corpus_rows]), "indexing examples target their own id"
        q_labels, t_labels = trainer_labels(queries, corpus, index[~corpus_rows], target[~corpus_rows])
        assert torch.equal(q_labels, t_labels), "retrieval examples target a relevant corpus image"
        n_corpus += int(corpus_rows.sum())
        n_query += int((~corpus_rows).sum())
    assert n_corpus == len(corpus) and n_query == len(queries)

    # targets are drawn afresh each epoch
    def per_query(batches):
        out = torch.full((len(queries),), -1)
        for index, src, target in batches:
            out[index[src == 1]] = target[src == 1]
        return out

    assert (per_query(batches) >= 0).all()
    assert not torch.equal(per_query(batches), per_query(trainer._batches("multitask")))


def trainer_labels(queries, corpus, q_index, target):
    return queries.labels[q_index], corpus.labels[target]


def test_fine_tuned_phase_uses_queries_only(small):
    corpus, queries = small
    trainer = make_trainer(corpus, queries, mode="fine-tuned", index_epochs=1, retrieval_epochs=1)
    assert all((s == 1).all() for _, s, _ in trainer._batches("retrieval"))
    history = trainer.fit()
    assert [e.phase for e in history] == ["index", "retrieval"]
    assert history[1].index_loss is None and history[1].retrieval_loss > 0


def test_modes_that_learn_from_queries_need_them(small):
    corpus, _ = small
    with pytest.raises(VitDSIError, match="train queries"):
        make_trainer(corpus, mode="multitask")
    with pytest.raises(VitDSIError, match="mode must be one of"):
        TrainConfig(mode="joint")


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] < f[5] < f[9] == 1.0
    assert all(a >= b for a, b in zip(f[9:], f[10:]))
    assert abs(lr_factor(100, 100, 10, 0.1) - 0.1) < 1e-9


def test_random_shift_translates_images():
    x = torch.zeros(4, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    out = random_shift(x, torch.Generator().manual_seed(0), 2)
    assert out.shape == x.shape
    where = out[:, 0].flatten(1).argmax(1)
    rows, cols = where // 9, where % 9
    assert ((rows - 4).abs() <= 2).all() and ((cols - 4).abs() <= 2).all()
    assert ((rows != 4) | (cols != 4)).any()
    assert torch.equal(random_shift(x, torch.Generator(), 0), x)


def test_relevant_sampler_draws_uniformly_among_relevant_images():
    corpus_labels = torch.tensor([2, 0, 2, 1, 2, 0])
    query_labels = torch.tensor([2, 0, 3, 1])  # class 3 has no corpus image: dropped
    sampler = RelevantSampler(query_labels, corpus_labels)
    assert sampler.has_relevant.tolist() == [True, True, False, True] and len(sampler) == 3
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sampler.sample(torch.arange(3), gen) for _ in range(3000)])  # [3000, 3]
    assert set(draws[:, 0].tolist()) == {0, 2, 4} and set(draws[:, 1].tolist()) == {1, 5}
    assert set(draws[:, 2].tolist()) == {3}
    counts = torch.bincount(draws[:, 0], minlength=5)[[0, 2, 4]].float()
    assert (counts / 3000 - 1 / 3).abs().max() < 0.04
    multi = RelevantSampler(
        torch.tensor([[1, 0, 0], [0, 0, 1]]).bool(), torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 0]]).bool()
    )
    assert multi.has_relevant.tolist() == [True, False]
    assert set(torch.stack([multi.sample(torch.tensor([0]), gen) for _ in range(200)])[:, 0].tolist()) == {
        0,
        2,
    }


def test_bf16_on_the_cpu_trains_close_to_fp32(small):
    """precision='bf16' runs the forward pass under bf16 autocast on the CPU too; it learns
    like float32 (loss within a few percent after a few epochs) and 'fp32' equals 'auto' there."""
    corpus, _ = small
    runs = {
        p: make_trainer(corpus, index_epochs=4, target_ia=1.1, eval_every=100, precision=p).fit()
        for p in ("auto", "fp32", "bf16")
    }
    assert [e.loss for e in runs["auto"]] == [e.loss for e in runs["fp32"]]
    assert runs["bf16"][-1].loss == pytest.approx(runs["fp32"][-1].loss, rel=0.05)
    assert runs["bf16"][-1].loss < runs["bf16"][0].loss
    with pytest.raises(VitDSIError, match="precision must be one of auto, fp32, bf16"):
        TrainConfig(precision="fp16")


def test_ia_is_measured_on_a_fixed_sample_when_asked(small):
    corpus, _ = small
    sampled = make_trainer(
        corpus, scheme="atomic", index_epochs=15, target_ia=1.1, eval_every=100, ia_sample=8
    )
    sampled.fit()
    sampled.model.eval()
    with torch.no_grad():  # which of the 32 images the model gets right, one by one
        logits = sampled._forward(sampled._input(sampled.corpus), sampled.targets)[0]
        right = sampled._exact(logits, sampled.targets).float()
    rows = torch.randperm(32, generator=torch.Generator().manual_seed(0))[:8]  # the trainer's seed
    assert 0 < right.mean() < 1  # so which 8 images are read matters
    assert sampled.greedy_ia1() == pytest.approx(right[rows].mean().item())
    with pytest.raises(VitDSIError, match="ia_sample must be >= 0"):
        TrainConfig(ia_sample=-1)


def test_a_non_finite_loss_stops_dsi_training_naming_epoch_step_and_lr(small):
    corpus, _ = small
    trainer = make_trainer(corpus, lr=float("inf"), index_epochs=3, target_ia=1.1)
    with pytest.raises(
        TrainingDivergedError,
        match=r"dsi index: training loss became nan at epoch 1 \(step 2\): lower lr \(now inf\)",
    ):
        trainer.fit()


def test_a_non_finite_loss_stops_the_shared_epoch_loop():
    from vitdsi.training.loop import LoopConfig, train_epochs

    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)

    def step(batch):
        xb, yb = batch
        return torch.nn.functional.cross_entropy(model(xb), yb), len(xb), 0

    batches = lambda: [(x[:4], y[:4]), (x[4:], y[4:])]  # noqa: E731
    with pytest.raises(
        TrainingDivergedError, match=r"classify: training loss became nan at epoch 1 \(step 2\)"
    ):
        train_epochs(
            model,
            LoopConfig(epochs=2, lr=float("inf")),
            "classify",
            batches,
            step,
            steps_per_epoch=2,
            device=torch.device("cpu"),
        )
    model = torch.nn.Linear(4, 2)
    history = train_epochs(
        model,
        LoopConfig(epochs=2, lr=1e-2),
        "classify",
        batches,
        step,
        steps_per_epoch=2,
        device=torch.device("cpu"),
    )
    assert len(history) == 2
