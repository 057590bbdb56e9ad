"""Model choice on validation, numbers on test, and no query leaking into training.

Every registered retriever is run through `bench.trial.run_trial` with two seeds (each with its
own split) while `Retriever.index` is instrumented: only indexed images and train queries may
reach it, never a validation or test query. The Holm correction is checked by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import smoke_retriever

from bench.config import resolve
from bench.trial import prepare, repeat_data, run_trial
from vitdsi.retrievers.base import Retriever
from vitdsi.retrievers.registry import registered
from vitdsi.statistics import holm

IMAGE_NAMES = sorted(n for n, cls in registered().items() if cls.query_kind == "image")
TEXT_NAMES = sorted(n for n, cls in registered().items() if cls.query_kind == "text")
PROTOCOL_CASES = [(name, "class") for name in IMAGE_NAMES] + [
    (name, protocol)
    for protocol in ("instance", "unseen-classes")
    for name in ("dsi-vit", "classifier", "dual-encoder")
]


@pytest.mark.parametrize(("name", "protocol"), PROTOCOL_CASES)
def test_validation_and_test_queries_never_reach_index(name, protocol, monkeypatch):
    seen: list[tuple[set, set]] = []
    labels_seen: list[set] = []  # every label that reached index(), corpus and train queries
    original = Retriever.index

    def spy(self, corpus, *, train_queries=None, **kw):
        seen.append(
            (
                set(corpus.source_ids.tolist()),
                set() if train_queries is None else set(train_queries.source_ids.tolist()),
            )
        )
        labels_seen.append(
            set(corpus.labels.tolist())
            | (set() if train_queries is None else set(train_queries.labels.tolist()))
        )
        return original(self, corpus, train_queries=train_queries, **kw)

    monkeypatch.setattr(Retriever, "index", spy)
    study = resolve(
        {
            "name": f"leak-{name}",
            "retriever": name,
            "scale": "smoke",
            "repeats": 2,
            "dataset": {"n_total": 120, "split_ratio": 0.5, "protocol": protocol},
            "metrics": ["MAP@10", "P@10"],
        }
    )
    cfg = study.trial_config({})
    result = run_trial(cfg, device="cpu")
    assert len(seen) == 2
    test_sets = []
    for r, (corpus_ids, train_ids) in enumerate(seen):
        _, sets = prepare(repeat_data(cfg.dataset, r))
        held_out = set(sets.val.source_ids.tolist()) | set(sets.test.source_ids.tolist())
        assert held_out and not (corpus_ids | train_ids) & held_out, (
            "a validation / test query reached index()"
        )
        assert corpus_ids == set(sets.corpus.source_ids.tolist()) and train_ids == set(
            sets.train.source_ids.tolist()
        )
        test_sets.append(set(sets.test.source_ids.tolist()))
        if protocol == "unseen-classes":  # no label of an unseen class reaches training
            hidden = set(sets.corpus.meta["unseen_classes"])
            assert hidden and not labels_seen[r] & hidden and hidden <= set(sets.test.labels.tolist())
    assert test_sets[0] != test_sets[1]  # the split seed moves with the repeat
    # the objective reads the validation queries; the reported numbers are the test ones
    assert result.objective("MAP@10") == pytest.approx(
        np.mean([x.val_metrics["MAP@10"].mean for x in result.repeats])
    )
    assert result.value("MAP@10") == pytest.approx(
        np.mean([x.metrics["MAP@10"].mean for x in result.repeats])
    )


@pytest.mark.parametrize("name", TEXT_NAMES)
def test_validation_and_test_captions_never_reach_index(name, monkeypatch, tmp_path):
    """The text protocol: only the indexed images and their training captions reach index(); no
    validation or test caption (the queries), and no caption of the untrained share."""
    seen: list[tuple[set, set]] = []
    original = Retriever.index

    def spy(self, corpus, *, train_queries=None, **kw):
        assert train_queries is None
        seen.append((set(corpus.source_ids.tolist()), set(corpus.captions.ids.tolist())))
        return original(self, corpus, train_queries=train_queries, **kw)

    monkeypatch.setattr(Retriever, "index", spy)
    study = resolve(
        {
            "name": f"leak-{name}",
            "retriever": name,
            "scale": "smoke",
            "repeats": 2,
            "dataset": {
                "name": "coco-mosaic",
                "root": str(tmp_path),
                "size": 32,
                "n_total": 80,
                "split_ratio": 0.5,
                "options": {"n_images": 80, "tile_size": 16, "captions": 1},
                "protocol": "text",
            },
            "metrics": ["MRR", "R@1"],
            "objective": {"metric": "MRR"},
        }
    )
    cfg = study.trial_config({})
    result = run_trial(cfg, device="cpu")
    assert len(seen) == 2
    for r, (corpus_ids, caption_ids) in enumerate(seen):
        _, sets = prepare(repeat_data(cfg.dataset, r))
        queries = set(sets.text["val"].ids.tolist()) | set(sets.text["test"].ids.tolist())
        assert queries and not caption_ids & queries, "a validation / test caption reached index()"
        assert corpus_ids == set(sets.corpus.source_ids.tolist()) and caption_ids == set(
            sets.text["train"].ids.tolist()
        )
        # the untrained share: indexed, but none of its captions reached index()
        untrained = set(range(len(sets.corpus))) - set(sets.text["train"].image.tolist())
        assert len(untrained) == 20 and untrained <= set(sets.text["test"].image.tolist())
    assert result.objective("MRR") == pytest.approx(
        np.mean([x.val_metrics["MRR"].mean for x in result.repeats])
    )
    assert result.value("MRR") == pytest.approx(np.mean([x.metrics["MRR"].mean for x in result.repeats]))


def test_holm_matches_a_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    expected = [0.03, 0.06, 0.06, 0.02, float("nan")]
    assert holm(p) == pytest.approx(expected, nan_ok=True)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])  # one comparison: unchanged
    assert np.isnan(holm([float("nan")])).all()


def test_supervision_is_declared_and_narrowed_by_parameters():
    from typer.testing import CliRunner

    from bench.cli import app
    from vitdsi.retrievers import create

    assert (
        create("dsi-vit", id_scheme="random", mode="zero-shot").supervision_used().describe() == "label-free"
    )
    clustered = create("dsi-vit", id_scheme="clustered", mode="fine-tuned").supervision_used()
    assert clustered.corpus_labels and clustered.query_pairs and clustered.uses_labels
    semantic = create("dsi-vit", id_scheme="semantic", mode="multitask").supervision_used()
    assert not semantic.corpus_labels and semantic.query_pairs
    assert create("embedding", backbone="pixels").supervision_used().describe() == "label-free"
    assert create("embedding", backbone="efficientnet-lite0").supervision_used().describe() == "pretrained"
    assert create("bovw").supervision_used().describe() == "label-free"
    for name, cls in registered().items():  # an instance never claims more than its class declares
        used, most = smoke_retriever(name).supervision_used(), cls.supervision
        assert all(
            getattr(most, f) or not getattr(used, f)
            for f in ("corpus_labels", "query_pairs", "pretrained", "captions")
        ), name
    out = CliRunner().invoke(app, ["list", "retrievers"], env={"COLUMNS": "200"}).output
    assert "learns from" in out and "label-free" in out and "corpus labels + query pairs" in out
