"""Continual indexing: `Retriever.add` for every registered retriever, and the DSI's id
extension and training strategies (DSI++, Mehta et al. 2022)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_study_dict, smoke_retriever

from vitdsi.errors import VitDSIError
from vitdsi.ids import extend_ids, make_ids
from vitdsi.retrievers import load_retriever, registered, save_retriever

# text retrievers do not add
NAMES = sorted(n for n, cls in registered().items() if cls.query_kind == "image")
# retrievers whose index of the old images does not change when images are added (no retraining)
FIXED_FEATURES = ("bovw", "classifier", "dual-encoder", "embedding", "pixels-knn")
N_OLD = 40


build = smoke_retriever


@pytest.fixture(scope="module")
def parts(tiny_split):
    corpus = tiny_split.corpus
    return corpus.subset(range(N_OLD)), corpus.subset(range(N_OLD, len(corpus))), tiny_split


@pytest.mark.parametrize("name", NAMES)
def test_add_appends_positions_and_new_images_are_searchable(name, parts):
    old, new, split = parts
    r = build(name)
    r.index(old, train_queries=split.train)
    r.add(new)
    n = N_OLD + len(new)
    assert r.corpus_size == n
    ranking = r.search(torch.cat([old.images[:3], new.images[:3]]), n)
    ids = ranking.ids.numpy()
    assert ((ids >= 0) & (ids < n) | (ids == -1)).all()
    found = set(ids[ids >= 0].tolist())
    assert found & set(range(N_OLD, n)), f"{name}: no added image is ever returned"
    assert found & set(range(N_OLD)), f"{name}: the old images are no longer returned"


@pytest.mark.parametrize("name", FIXED_FEATURES)
def test_add_keeps_the_old_ranking(name, parts):
    """Without retraining, the old images keep their positions and their order for any query:
    the ranking after add, with the added positions taken out, is the ranking before."""
    old, new, split = parts
    r = build(name)
    r.index(old, train_queries=split.train)
    queries = split.test.images
    before = r.search(queries, N_OLD).ids
    r.add(new)
    after = r.search(queries, N_OLD + len(new)).ids
    for b, a in zip(before.numpy(), after.numpy()):
        assert a[(a >= 0) & (a < N_OLD)].tolist() == b[b >= 0].tolist()


@pytest.mark.parametrize("name", ("pixels-knn", "embedding", "dual-encoder", "bovw"))
def test_an_added_image_finds_itself(name, parts):
    old, new, split = parts
    r = build(name)
    r.index(old, train_queries=split.train)
    r.add(new)
    top = r.search(new.images, 1).ids[:, 0]
    assert (top == torch.arange(N_OLD, N_OLD + len(new))).float().mean() >= 0.9


@pytest.mark.parametrize("name", NAMES)
def test_add_survives_save_and_load(name, parts, tmp_path):
    old, new, split = parts
    r = build(name)
    r.index(old, train_queries=split.train)
    r.add(new)
    save_retriever(r, tmp_path / name)
    loaded = load_retriever(tmp_path / name, device="cpu")
    assert loaded.corpus_size == N_OLD + len(new)
    q = split.test.images
    assert torch.equal(loaded.search(q, 5).ids, r.search(q, 5).ids)


def test_add_errors_name_the_problem(parts):
    old, new, split = parts
    r = build("pixels-knn")
    with pytest.raises(VitDSIError, match="before index"):
        r.add(new)
    r.index(old)
    with pytest.raises(VitDSIError, match="at least one image"):
        r.add(new.subset([]))
    small = type(new)(new.images[:, :, :16, :16].contiguous(), new.labels, new.source_ids, new.class_names)
    with pytest.raises(VitDSIError, match="16px but the index was built on 32px"):
        r.add(small)


# ---- the DSI ------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["clustered", "random", "atomic"])
def test_dsi_add_keeps_old_ids_and_decodes_only_valid_ids(scheme, parts):
    old, new, split = parts
    r = build("dsi-vit", id_scheme=scheme, add_strategy="new-only")
    r.index(old, train_queries=split.train)
    before = r.id_map.codes.clone()
    r.add(new)
    assert torch.equal(r.id_map.codes[:N_OLD], before), "old ids changed"
    assert r.id_map.n == N_OLD + len(new)
    if scheme == "atomic":
        assert r.model.cfg.n_ids == N_OLD + len(new) and r.model.head.out_features == N_OLD + len(new)
    n = N_OLD + len(new)
    ids = r.search(split.test.images, n).ids
    assert ((ids >= 0) & (ids < n)).all(), "the DSI decoded an id that is not in the index"
    for row in ids.numpy():
        assert len(set(row.tolist())) == n  # every indexed image, old and new, is reachable


def test_clustered_ids_give_added_images_a_block_of_their_class():
    labels = np.array([0] * 12 + [1] * 5)
    ids = make_ids("clustered", len(labels), labels=labels, length=2)
    grown = extend_ids(ids, 6, labels=np.array([1, 1, 0, 0, 0, 2]))
    assert torch.equal(grown.codes[: len(labels)], ids.codes)
    new = grown.values[len(labels) :].numpy()
    assert set(new[:2] // 10) == {1}  # class 1 owns block 1 (ids 12-16), which has room
    assert set(new[2:5] // 10) == {2}  # class 0's blocks are full: a fresh block
    assert new[5] // 10 == 3  # a new class: a block of its own
    assert len(set(grown.values.tolist())) == grown.n
    again = extend_ids(grown, 2, labels=np.array([0, 2]))  # a second step finds the blocks of the first
    assert again.values[-2] // 10 == 2 and again.values[-1] // 10 == 3


def test_random_and_atomic_ids_take_the_next_free_numbers():
    grown = extend_ids(make_ids("random", 8, length=2, seed=3), 4, seed=1)
    assert sorted(grown.values[8:].tolist()) == [8, 9, 10, 11]
    atomic = extend_ids(make_ids("atomic", 5), 3)
    assert atomic.values.tolist() == list(range(8))


def test_a_full_id_space_is_a_clear_error(parts):
    with pytest.raises(VitDSIError, match="id_length >= 2"):
        extend_ids(make_ids("random", 8), 3)
    with pytest.raises(VitDSIError, match="id_length=1 cannot number 40"):
        make_ids("random", 40, length=1)


def test_replay_needs_the_old_images_a_loaded_index_lacks(parts, tmp_path):
    old, new, split = parts
    r = build("dsi-vit", add_strategy="replay")
    r.index(old, train_queries=split.train)
    save_retriever(r, tmp_path / "dsi")
    loaded = load_retriever(tmp_path / "dsi", device="cpu")
    with pytest.raises(VitDSIError, match="add_strategy='new-only'"):
        loaded.add(new)
    new_only = load_retriever(tmp_path / "dsi", device="cpu")
    new_only.add_strategy = "new-only"
    new_only.add(new)
    assert new_only.corpus_size == N_OLD + len(new)


@pytest.mark.slow
def test_dsi_strategies_forget_and_full_matches_training_from_scratch(parts):
    """A small atomic DSI memorises 40 images; `new-only` then writes 20 more in and forgets
    old ones, `replay` forgets fewer, and `full` reaches what indexing the union from
    scratch reaches (same seed)."""
    old, new, split = parts
    params = dict(
        id_scheme="atomic",
        mode="zero-shot",
        index_epochs=150,
        target_ia=1.0,
        lr=3e-3,
        batch_size=16,
        dim=32,
        ff_dim=64,
        depth=1,
        heads=2,
        patch_size=8,
        dropout=0.0,
        seed=0,
    )

    def ia(r, images, first):
        return (
            (r.search(images, 1).ids[:, 0] == torch.arange(first, first + len(images))).float().mean().item()
        )

    result = {}
    for strategy in ("new-only", "replay", "full"):
        r = build("dsi-vit", add_strategy=strategy, replay_share=0.5, **params)
        r.index(old)
        assert ia(r, old.images, 0) >= 0.95, "the DSI did not memorise the first images"
        r.add(new)
        result[strategy] = (ia(r, old.images, 0), ia(r, new.images, N_OLD))
    scratch = build("dsi-vit", **params)
    scratch.index(old.concat(new))
    union_ia = ia(scratch, old.concat(new).images, 0)
    full_ia = (result["full"][0] * N_OLD + result["full"][1] * len(new)) / (N_OLD + len(new))
    assert result["new-only"][1] >= 0.9, result  # the new images are written in
    assert result["replay"][0] > result["new-only"][0], result  # replay forgets less
    assert abs(full_ia - union_ia) <= 0.05, (result, union_ia)


# ---- the harness: a continual study ---------------------------------------------------------
CONTINUAL_STUDY = {
    "name": "continual_check",
    "scale": "smoke",
    "continual": {"initial": 0.5, "steps": 2},
    "methods": {
        "knn": {"retriever": "pixels-knn"},
        "dsi-replay": {"retriever": "dsi-vit", "params": {"id_scheme": "atomic", "add_strategy": "replay"}},
        "dsi-full": {"retriever": "dsi-vit", "params": {"id_scheme": "atomic", "add_strategy": "full"}},
    },
    "dataset": {"n_total": 120, "split_ratio": 0.5},
    "space": {"method": ["knn", "dsi-replay", "dsi-full"]},
    "repeats": 2,
    "metrics": ["MAP@10", "IA@1"],
    "objective": {"metric": "MAP@10"},
    "mlflow": {"log_index": False},
}


def test_step_bounds_cover_the_corpus():
    from bench.kinds.continual.indexing import step_bounds

    assert step_bounds(60, 0.5, 5) == [30, 36, 42, 48, 54, 60]
    assert step_bounds(7, 0.5, 3) == [4, 5, 6, 7]


def test_first_index_validation_keeps_the_queries_its_images_answer(tiny_split):
    from bench.kinds.continual.indexing import _validation_within
    from vitdsi.data.relevance import Relevance
    from vitdsi.training.monitor import ValidationSet

    sets = tiny_split
    full = ValidationSet(sets.queries("val"), sets.relevance("val"), "MAP@10")
    n = 5
    part = _validation_within(full, sets, n)
    answered = Relevance.between(sets.val, sets.corpus.subset(range(n))).n_relevant() > 0
    assert 0 < answered.sum() < len(sets.val)  # the case is not trivial
    assert part.relevance.corpus_size == n and len(part.queries) == answered.sum()
    assert torch.equal(part.queries, sets.val.images[torch.as_tensor(np.flatnonzero(answered))])
    assert (part.relevance.n_relevant() > 0).all() and part.metric == "MAP@10"
    assert _validation_within(None, sets, n) is None


@pytest.mark.heavy
def test_continual_study_logs_every_step_and_reports_it(tmp_path):
    from mlflow import MlflowClient

    from bench.report import write_report

    outcome, uri = run_study_dict(tmp_path, CONTINUAL_STUDY)
    assert outcome.complete == 3
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("continual_check").experiment_id], "tags.`vitdsi.kind` = 'trial'"
    )
    for r in runs:
        steps = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "continual/n_indexed")}
        assert steps == {0: 30.0, 1: 45.0, 2: 60.0}  # 60 indexed: half first, then two batches
        ia = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "continual/ia_original")}
        assert sorted(ia) == [0, 1, 2] and all(0 <= v <= 1 for v in ia.values())
        if r.data.tags["method"] == "knn":  # exact vectors: nothing is ever forgotten
            assert set(ia.values()) == {1.0} and r.data.metrics["continual/ia_added"] == 1.0
        else:  # the first index stops on the validation queries' plateau, as an ordinary index does
            assert "plateau_reached" in r.data.metrics and "converged" in r.data.metrics
        seeds = json.loads(
            Path(client.download_artifacts(r.info.run_id, "continual.json", str(tmp_path))).read_text()
        )
        assert len(seeds) == 2 and [s["step"] for s in seeds[0]] == [0, 1, 2]
    text = write_report("continual_check", tracking_uri=uri, out_dir=tmp_path / "reports").read_text()
    assert "## Continual indexing" in text and "| `knn` | 0 | 30 | 1.000 |" in text
    assert "x `knn`" in text  # the cost of a DSI add against the baseline's
    assert "Goal for `dsi-replay`" in text and "of `dsi-full`" in text


def test_continual_config_errors_name_the_field(tmp_path):
    from bench.config import StudyConfigError, load_study

    bad = {**CONTINUAL_STUDY, "continual": {"initial": 0.5, "steps": 100}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(StudyConfigError, match="one per add step"):
        load_study(path)
    both = {**CONTINUAL_STUDY, "latency": {"n_queries": 8}}
    path.write_text(yaml.safe_dump(both))
    with pytest.raises(StudyConfigError, match="latency study or a continual-indexing study"):
        load_study(path)
    typo = {**CONTINUAL_STUDY, "continual": {"initial": 0.5, "step": 2}}
    path.write_text(yaml.safe_dump(typo))
    with pytest.raises(StudyConfigError, match="step"):
        load_study(path)


def test_replay_goal_needs_both_ia_parts_and_a_measured_cost():
    from bench.kinds.continual.report import replay_goal

    nan = float("nan")
    assert replay_goal(0.96, 0.99, 0.10) == "met"
    assert replay_goal(0.96, 0.99, 0.30) == "not met"  # too dear
    assert replay_goal(0.94, 0.99, 0.10) == "not met" and replay_goal(0.96, 0.50, 0.10) == "not met"
    assert replay_goal(0.96, 0.99, nan) == "IA@1 part met, cost part not measured here"
    assert replay_goal(0.50, 0.99, nan) == "not met"


def test_replay_queries_bring_the_retrieval_task_into_an_add_step(parts):
    """Under label relevance every train query comes with the first index, so an add step has no
    queries of its own: it trains the indexing task alone unless `replay_queries` replays old ones."""
    old, new, split = parts
    params = dict(
        id_scheme="atomic",
        mode="multitask",
        index_epochs=2,
        retrieval_epochs=1,
        dim=16,
        ff_dim=32,
        depth=1,
        heads=2,
        patch_size=8,
        dropout=0.0,
        seed=0,
        add_strategy="replay",
        replay_share=0.5,
    )
    phases = {}
    for share in (0.0, 0.5):
        r = build("dsi-vit", replay_queries=share, **params)
        r.index(old, train_queries=split.train)
        r.add(new)
        step = [e for e in r.history if e.get("add_step") == N_OLD]
        phases[share] = {e["phase"] for e in step}
        trained_queries = [e["retrieval_loss"] for e in step if e["retrieval_loss"] is not None]
        assert bool(trained_queries) == (share > 0), (share, step[:1])
    assert phases[0.0] == {"index"} and "multitask" in phases[0.5], phases  # multitask: indexing, then both
    with pytest.raises(VitDSIError, match="replay_queries must be in"):
        build("dsi-vit", replay_queries=1.5)
