"""Text queries: the text protocol (captions of indexed images, held-out phrasing), the text
retrievers' behaviour (dsi-text, text-dual-encoder, text-embedding-knn), study checks and
`bench search --text`. The shared contract of text retrievers is in test_contract.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import smoke_retriever

from vitdsi.data.captions import Captions
from vitdsi.data.relevance import OWN_IMAGE_FAMILIES
from vitdsi.data.text_protocol import caption_roles, captioned_images
from vitdsi.errors import VitDSIError
from vitdsi.metrics import evaluate, per_query


def _own_image_r1(retriever, captions: Captions) -> float:
    ids = retriever.search(captions.texts.tolist(), 1).ids[:, 0].numpy()
    return float((ids == captions.image).mean())


def test_text_queries_are_held_out_captions_of_indexed_images(captioned_mosaic, text_split):
    corpus, text = text_split.corpus, text_split.text
    assert (
        text_split.query_kind == "text"
        and len(text_split.train) == len(text_split.val) == len(text_split.test) == 0
    )
    doc = json.loads((captioned_mosaic / "annotations" / "captions.json").read_text())
    by_id = {a["id"]: a for a in doc["annotations"]}
    for part in ("train", "val", "test"):
        caps = text[part]
        assert len(caps) and caps.image.max() < len(corpus)
        # every caption is the file's caption of the very image at its corpus position, in its part's phrasing
        for cid, pos, t in zip(caps.ids.tolist(), caps.image.tolist(), caps.texts.tolist()):
            assert by_id[cid]["caption"] == t and str(by_id[cid]["image_id"]) == corpus.source_ids[pos]
            assert by_id[cid]["phrasing"] == part
    # validation and test ask about every indexed image; training captions cover the captioned half only
    for part in ("val", "test"):
        assert (text[part].per_image(len(corpus)) == 2).all()
    captioned = np.unique(text["train"].image)
    assert len(captioned) == len(corpus) - round(0.5 * len(corpus))
    assert (text["train"].per_image(len(corpus))[captioned] == 2).all()
    assert corpus.captions is text["train"]  # what the retrievers may read or train on
    assert text_split.queries("test") == text["test"].texts.tolist()
    assert text_split.n_queries("val") == 90 and text_split.grading == "shared"


def test_untagged_captions_are_dealt_per_image_and_the_captioned_share_is_seeded():
    caps = Captions.build([f"c{i}" for i in range(13)], [0] * 5 + [1] * 5 + [2] * 2 + [3], np.arange(13))
    roles = caption_roles(caps, seed=0)
    for image, n in ((0, 5), (1, 5), (2, 2), (3, 1)):
        got = sorted(roles[caps.image == image].tolist())
        want = sorted((["test", "val"] + ["train"] * 3)[:n]) if n >= 2 else ["test"]
        assert got == want
    assert not np.array_equal(caption_roles(caps, seed=1), roles) or not np.array_equal(
        caption_roles(caps, seed=2), roles
    )
    tagged = Captions.build(["a", "b"], [0, 0], [1, 2], ["val", "train"])
    assert caption_roles(tagged, seed=0).tolist() == ["val", "train"]  # tags win
    keep = captioned_images(100, 0.3, seed=4)
    assert keep.sum() == 70 and np.array_equal(keep, captioned_images(100, 0.3, seed=4))
    assert not np.array_equal(keep, captioned_images(100, 0.3, seed=5))


def test_text_protocol_needs_captions(tiny_split):
    from vitdsi.data.protocols import apply_protocol

    with pytest.raises(VitDSIError, match="text protocol needs captions of the indexed images"):
        apply_protocol(tiny_split, "text", 0, indexed_captions=None)


def test_caption_relevance_is_the_own_image_for_recall_and_categories_for_the_rest(text_split):
    rel = text_split.relevance("test")
    own = text_split.text["test"].image
    n = len(text_split.corpus)
    for family in OWN_IMAGE_FAMILIES:
        assert (rel.for_family(family).n_relevant() == 1).all()
    shares = text_split.corpus.labels.numpy()
    want = (shares[own].astype(int) @ shares.T.astype(int) > 0).sum(1)
    assert np.array_equal(rel.for_family("MAP").n_relevant(), want) and rel.for_family("nDCG").graded
    perfect = np.stack([own] + [(own + j) % n for j in range(1, 10)], axis=1)  # own image first
    values = evaluate(perfect, rel, ["R@1", "MRR", "MAP@10", "nDCG@10"])
    assert values["R@1"].mean == 1.0 and values["MRR"].mean == 1.0
    assert values["R@1"].chance == pytest.approx(1 / n)
    assert values["MAP@10"].mean < 1.0  # the other nine are not all sharing a category


def test_dsi_text_learns_captions_to_ids_with_beam_search(text_split):
    """Seq2seq ids (random, decoded by constrained beam search) from captions: after multitask
    training, the training captions find their own image; an index of zero-shot training (images
    only) cannot."""
    corpus = text_split.corpus
    r = smoke_retriever("dsi-text", id_scheme="random", index_epochs=30, retrieval_epochs=30, target_ia=1.0)
    r.index(corpus)
    assert r.id_map.length == 2 and r.supervision_used().captions
    assert {e["phase"] for e in r.history} == {"index", "multitask"}
    trained = _own_image_r1(r, corpus.captions)
    assert trained > 0.6, trained
    zero = smoke_retriever("dsi-text", id_scheme="random", mode="zero-shot", index_epochs=20)
    zero.index(corpus)
    assert not zero.supervision_used().captions
    assert _own_image_r1(zero, corpus.captions) < 0.2
    ranking = r.search(text_split.queries("test")[:5], len(corpus))
    assert (np.sort(ranking.ids.numpy(), axis=1) == np.arange(len(corpus))).all()  # every valid id, once


def test_dsi_text_caches_the_frozen_text_encoder_exactly(text_split):
    from vitdsi.training.config import TrainConfig
    from vitdsi.training.text_dsi import TextDSITrainer

    r = smoke_retriever("dsi-text")
    r._start_index(text_split.corpus)
    model, caps = r.model, text_split.corpus.captions
    trainer = TextDSITrainer(
        model,
        text_split.corpus.images,
        r.id_map.codes,
        TrainConfig(mode="multitask"),
        captions=caps.texts.tolist(),
        caption_image=torch.as_tensor(caps.image),
    )
    assert trainer.queries.precomputed and len(trainer.queries) == len(caps)
    rows = trainer.queries.rows(torch.tensor([0, 3, 5]))
    batch = model.text.encoder.tokenize(caps.texts[[0, 3, 5]].tolist())
    model.eval()
    with torch.no_grad():
        cached = model.encode_text(rows.x, rows.mask, precomputed=True)
        fresh = model.encode_text(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert rows.x.shape[1] == real.shape[1] and torch.allclose(cached[real], fresh[real], atol=1e-5)
    with pytest.raises(VitDSIError, match="learns caption -> id from the captions of the indexed images"):
        TextDSITrainer(model, text_split.corpus.images, r.id_map.codes, TrainConfig(mode="multitask"))


def test_text_embedding_knn_finds_the_image_of_a_known_caption_and_ranks_uncaptioned_last(text_split):
    corpus = text_split.corpus
    r = smoke_retriever("text-embedding-knn")
    r.index(corpus)
    ranking = r.search(corpus.captions.texts.tolist(), len(corpus))
    first, scores = ranking.ids[:, 0].numpy(), ranking.scores.numpy()
    # a caption the index holds scores cosine 1 with itself (another image may hold the same sentence)
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    same = corpus.captions.texts[:, None] == corpus.captions.texts[None, :]
    holders = [set(corpus.captions.image[row].tolist()) for row in same]
    assert all(f in h for f, h in zip(first.tolist(), holders))
    captioned = set(corpus.captions.image.tolist())
    n_cap = len(captioned)
    assert all(set(row[:n_cap].tolist()) == captioned for row in ranking.ids.numpy())
    assert (scores[:, n_cap:] == -2.0).all()  # images without captions: last, in corpus order
    assert (np.diff(ranking.ids.numpy()[:, n_cap:], axis=1) > 0).all()
    assert r.supervision_used().describe() == "corpus captions + pretrained"


def test_text_dual_encoder_learns_caption_image_pairs(text_split):
    corpus = text_split.corpus
    r = smoke_retriever("text-dual-encoder", epochs=30, lr=3e-3, batch_size=16)
    r.index(corpus)
    losses = [e["loss"] for e in r.history]
    assert len(losses) == 30 and losses[-1] < 0.6 * losses[0]
    ranking = r.search(corpus.captions.texts.tolist(), 5)
    r5 = float((ranking.ids.numpy() == corpus.captions.image[:, None]).any(1).mean())
    assert r5 > 3 * 5 / len(corpus), r5  # chance of R@5 is 5 / 45
    with pytest.raises(VitDSIError, match="learns from the captions the indexed images carry"):
        smoke_retriever("text-dual-encoder").index(dataclasses.replace(corpus, captions=None))


def test_text_metrics_of_a_trial_read_their_own_relevance(text_split):
    """R@K / MRR count only the own image; MAP@10 counts any image sharing a category."""
    rel = text_split.relevance("test")
    own = text_split.text["test"].image
    n = len(text_split.corpus)
    shifted = np.stack([(own + 1 + j) % n for j in range(10)], axis=1)  # never the own image
    values = per_query(shifted, rel, ["R@10", "MRR", "MAP@10"])
    assert (values["R@10"] == 0).all() and (values["MRR"] == 0).all() and values["MAP@10"].mean() > 0.5


# ---- the harness -------------------------------------------------------------------------
def _text_study(tmp_path, retriever="text-embedding-knn", **extra):
    return {
        "name": "captions",
        "scale": "smoke",
        "retriever": retriever,
        "metrics": ["R@1", "MRR", "MAP@10"],
        "objective": {"metric": "MRR"},
        "mlflow": {"log_index": True},
        "dataset": {
            "name": "coco-mosaic",
            "root": str(tmp_path / "data"),
            "size": 32,
            "n_total": 60,
            "split_ratio": 0.5,
            "options": {"n_images": 60, "tile_size": 16, "captions": 1},
            "protocol": "text",
        },
        **extra,
    }


def test_study_checks_match_retrievers_to_the_protocol(tmp_path):
    from bench.config import resolve
    from bench.config.errors import StudyConfigError

    with pytest.raises(
        StudyConfigError,
        match="retriever 'pixels-knn' answers image queries but `dataset.protocol: "
        "text` asks captions; use dsi-text, text-dual-encoder, text-embedding-knn",
    ):
        resolve(_text_study(tmp_path, "pixels-knn"))
    plain = _text_study(tmp_path)
    plain["dataset"] = {"n_total": 60}
    with pytest.raises(
        StudyConfigError, match="'text-embedding-knn' answers text queries but `dataset.protocol: class`"
    ):
        resolve(plain)
    with pytest.raises(StudyConfigError, match="IA@1 query the indexed images with themselves"):
        resolve({**_text_study(tmp_path), "metrics": ["R@1", "IA@1"]})
    with pytest.raises(StudyConfigError, match="the text protocol has none"):
        resolve({**_text_study(tmp_path), "continual": {"initial": 0.5, "steps": 2}})
    digits = _text_study(tmp_path)
    digits["dataset"] = {"name": "digits", "n_total": 60, "protocol": "text"}
    with pytest.raises(StudyConfigError, match="text protocol asks captions .* dataset 'digits' has none"):
        resolve(digits)
    off = _text_study(tmp_path)
    off["dataset"]["options"]["captions"] = 0
    with pytest.raises(StudyConfigError, match="options.captions is off"):
        resolve(off)
    with pytest.raises(StudyConfigError, match="dataset.text.*protocol: text"):
        resolve({**_text_study(tmp_path), "dataset": {"n_total": 60, "text": {"untrained_share": 0.2}}})
    study = resolve(
        {
            **_text_study(tmp_path),
            "dataset": {**_text_study(tmp_path)["dataset"], "text": {"untrained_share": 0.2}},
        }
    )
    assert study.trial_config({}).dataset.protocol_options().untrained_share == 0.2


def test_protocol_options_enter_the_record_only_where_given(tmp_path):
    """A trial's record (what its fingerprint hashes) carries the options block of its protocol
    when the study gives one, with defaults filled in, and round-trips through the record."""
    from bench.config import resolve

    cfg = resolve({"name": "x", "scale": "smoke", "retriever": "pixels-knn"}).trial_config({})
    assert cfg.model_dump(mode="json")["dataset"]["protocol_args"] == {}
    text = resolve(
        {
            **_text_study(tmp_path),
            "dataset": {**_text_study(tmp_path)["dataset"], "text": {"untrained_share": 0.2}},
        }
    ).trial_config({})
    assert text.model_dump(mode="json")["dataset"]["protocol_args"] == {
        "text": {"untrained_share": 0.2, "gain": "shared"}
    }
    assert type(text).model_validate(text.model_dump(mode="json")) == text
    assert text.fingerprint() != resolve(_text_study(tmp_path)).trial_config({}).fingerprint()


def test_bench_search_with_captions(tmp_path):
    from conftest import run_study_dict
    from typer.testing import CliRunner

    from bench.cli import app

    outcome, uri = run_study_dict(tmp_path, _text_study(tmp_path))
    assert outcome.complete == 1
    run_id = outcome.best["run_id"]
    out = tmp_path / "grid.png"
    runner = CliRunner()
    args = ["search", "--run", run_id, "--k", "3", "--out", str(out), "--tracking-uri", uri]
    res = runner.invoke(
        app, [*args, "--text", "a 7 left of a 1", "--text", "two fours"], env={"COLUMNS": "300"}
    )
    assert res.exit_code == 0, res.output
    assert out.is_file() and res.output.count("\n") > 6 and "a 7 left of a 1" in res.output
    image = tmp_path / "q.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    res = runner.invoke(app, [*args, str(image)], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "answers text queries; give it --text CAPTION" in res.output, res.output
    res = runner.invoke(app, [*args, str(image), "--text", "a one"], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "one kind, not both" in res.output, res.output
