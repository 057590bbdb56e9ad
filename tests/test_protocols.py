"""The instance protocol: queries are new views of indexed images, each relevant to its source only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from bench.config import StudyConfigError, resolve
from bench.trial import prepare, run_trial
from vitdsi.data import Relevance, make_split
from vitdsi.data.protocols import InstanceOptions, apply_protocol, instance_sets, trained_sources
from vitdsi.data.relevance import relevance_keys
from vitdsi.errors import VitDSIError
from vitdsi.training.sampler import RelevantSampler


@pytest.fixture(scope="module")
def corpus(digits32):
    return make_split(digits32, n_total=200, split_ratio=0.5, seed=0).apply(digits32).corpus


def test_views_cover_the_corpus_by_role(corpus):
    options = InstanceOptions(strength="light", train_views=2, untrained_share=0.5)
    sets = instance_sets(corpus, seed=0, options=options)
    n = len(corpus)
    trained = trained_sources(n, options, 0)
    assert len(trained) == n // 2 and torch.equal(sets.corpus.images, corpus.images)
    # train views: two of each trained image and none of the others; val / test: one of every image
    assert sorted(sets.train.view_of.tolist()) == sorted(trained.tolist() * 2)
    assert sets.val.view_of.tolist() == sets.test.view_of.tolist() == list(range(n))
    assert options.view_counts(n) == {"train": len(sets.train), "val": n, "test": n}
    # views keep their source's class and have source ids of their own
    assert torch.equal(sets.test.labels, corpus.labels)
    assert not set(sets.test.source_ids) & (
        set(corpus.source_ids) | set(sets.val.source_ids) | set(sets.train.source_ids)
    )
    # each role draws its own views, and the same seed draws the same ones
    assert not torch.equal(sets.val.images, sets.test.images)
    again = instance_sets(
        corpus, seed=0, options=InstanceOptions(strength="light", train_views=2, untrained_share=0.5)
    )
    assert torch.equal(again.test.images, sets.test.images) and torch.equal(
        again.train.images, sets.train.images
    )


def test_sampled_queries_and_a_fixed_number_of_trained_images(corpus):
    options = InstanceOptions(strength="light", train_views=2, queries=30, trained_images=12)
    sets = instance_sets(corpus, seed=0, options=options)
    n = len(corpus)
    # 30 validation and 30 test views, each of a distinct indexed image, the two parts sampled apart
    for part in (sets.val, sets.test):
        assert len(part) == 30 and len(set(part.view_of.tolist())) == 30 and part.view_of.max() < n
    assert sets.val.view_of.tolist() != sets.test.view_of.tolist()
    # two train views of each of 12 images
    assert len(sets.train) == 24 and len(set(sets.train.view_of.tolist())) == 12
    # what `bench run --check` announces is what the protocol makes
    assert options.view_counts(n) == {"train": 24, "val": 30, "test": 30}
    with pytest.raises(VitDSIError, match=f"queries={n + 1} is more than the {n} indexed images"):
        instance_sets(corpus, seed=0, options=InstanceOptions(queries=n + 1))
    with pytest.raises(VitDSIError, match="trained_images must be >= 0"):
        InstanceOptions(trained_images=-1)


def test_relevance_and_training_pairs_are_the_source(corpus):
    sets = instance_sets(corpus, seed=1, options=InstanceOptions())
    relevance = Relevance.between(sets.test, sets.corpus)
    assert (relevance.n_relevant() == 1).all()
    ids = np.stack([np.arange(len(corpus)), (np.arange(len(corpus)) + 1) % len(corpus)], axis=1)
    assert relevance.gather(ids)[:, 0].all() and not relevance.gather(ids)[:, 1].any()
    # a class-relevance sampler would pair a view with any image of its class; this one, its source
    sampler = RelevantSampler(*relevance_keys(sets.train, sets.corpus))
    drawn = sampler.sample(torch.arange(len(sampler)), torch.Generator().manual_seed(0))
    assert torch.equal(drawn, torch.as_tensor(sets.train.view_of))


def test_class_protocol_is_unchanged_and_unknown_is_an_error(digits32, corpus):
    sets = make_split(digits32, n_total=200, split_ratio=0.5, seed=0).apply(digits32)
    assert apply_protocol(sets, "class", 0) is sets and sets.test.view_of is None
    with pytest.raises(VitDSIError, match="unknown protocol 'instanse'; known: class, instance"):
        apply_protocol(sets, "instanse", 0)
    with pytest.raises(VitDSIError, match="untrained_share"):
        InstanceOptions(untrained_share=1.5)


def test_study_under_the_instance_protocol():
    study = resolve(
        {
            "name": "inst",
            "retriever": "pixels-knn",
            "scale": "smoke",
            "metrics": ["R@1", "R@10", "MRR"],
            "objective": {"metric": "R@1"},
            "dataset": {
                "n_total": 128,
                "split_ratio": 0.5,
                "protocol": "instance",
                "instance": {"strength": "light"},
            },
        }
    )
    cfg = study.trial_config({})
    assert cfg.dataset.protocol == "instance" and cfg.dataset.protocol_options().strength == "light"
    _, sets = prepare(cfg.dataset)
    n = len(sets.corpus)
    result = run_trial(cfg, device="cpu")
    r1, r10 = result.summary["R@1"], result.summary["R@10"]
    # exact chance with one relevant image among n: k / n
    assert r1.chance == pytest.approx(1 / n) and r10.chance == pytest.approx(10 / n)
    assert r1.n_queries == n  # one test view of every indexed image
    # light views of digits are mostly found by raw-pixel cosine, far above chance
    assert r1.mean > 0.5 and r10.mean >= r1.mean


def test_instance_options_need_the_instance_protocol():
    with pytest.raises(StudyConfigError, match="dataset.instance.*protocol: instance"):
        resolve(
            {
                "name": "x",
                "retriever": "pixels-knn",
                "scale": "smoke",
                "dataset": {"instance": {"strength": "light"}},
            }
        )
    with pytest.raises(StudyConfigError, match="strength"):
        resolve(
            {
                "name": "x",
                "retriever": "pixels-knn",
                "scale": "smoke",
                "dataset": {"protocol": "instance", "instance": {"strength": "huge"}},
            }
        )


@dataclass(frozen=True)
class HalfOptions:
    keep: float = 0.5  # share of the test queries kept

    def __post_init__(self) -> None:
        if not 0 < self.keep <= 1:
            raise VitDSIError(f"half protocol: keep must be in (0, 1], got {self.keep}")


def _half_sets(sets, seed, options: HalfOptions, captions):
    from vitdsi.data import SplitSets

    kept = np.arange(int(len(sets.test) * options.keep))
    return SplitSets(sets.corpus, sets.train, sets.val, sets.test.subset(kept))


def test_a_new_protocol_is_one_registry_entry(request):
    """A toy protocol registered in vitdsi.data.protocols alone is known to the study schema
    (its options block checked, typos named), resolution, trials and the report's set-up."""
    from vitdsi.data.protocols import PROTOCOLS, Protocol, register_protocol

    register_protocol(
        Protocol(
            "half",
            apply=_half_sets,
            options=HalfOptions,
            block="half",
            describe=lambda o: f"half: class relevance on {o.keep:.0%} of the test queries",
        )
    )
    request.addfinalizer(lambda: PROTOCOLS.pop("half"))
    base = {
        "name": "half",
        "retriever": "pixels-knn",
        "scale": "smoke",
        "dataset": {"n_total": 128, "split_ratio": 0.5, "protocol": "half", "half": {"keep": 0.25}},
    }
    cfg = resolve(base).trial_config({})
    assert cfg.dataset.protocol_options() == HalfOptions(keep=0.25)
    full = resolve({**base, "dataset": {**base["dataset"], "protocol": "class", "half": None}}).trial_config(
        {}
    )
    assert len(prepare(cfg.dataset)[1].test) == len(prepare(full.dataset)[1].test) // 4
    from bench.report.results import protocol_description

    assert (
        protocol_description(cfg.dataset.model_dump()) == "half: class relevance on 25% of the test queries"
    )
    with pytest.raises(StudyConfigError, match=r"field `dataset.half`.*keep must be in \(0, 1\]"):
        resolve({**base, "dataset": {**base["dataset"], "half": {"keep": 2.0}}})
    with pytest.raises(StudyConfigError, match=r"field `dataset.half.kep`: unknown field"):
        resolve({**base, "dataset": {**base["dataset"], "half": {"kep": 0.5}}})
    with pytest.raises(
        StudyConfigError, match=r"field `dataset.hlaf`: unknown field 'hlaf' \(did you mean 'half'\?\)"
    ):
        resolve({**base, "dataset": {**base["dataset"], "hlaf": {"keep": 0.5}}})
    with pytest.raises(StudyConfigError, match=r"unknown protocol 'hal' \(did you mean 'half'\?\)"):
        resolve({**base, "dataset": {**base["dataset"], "protocol": "hal"}})


def test_instance_report_splits_views_by_train_views(tmp_path):
    from mlflow import MlflowClient

    from bench.report import write_report
    from bench.study import RunOptions, run

    study = resolve(
        {
            "name": "inst_report",
            "scale": "smoke",
            "repeats": 2,
            "metrics": ["R@1", "MRR"],
            "objective": {"metric": "R@1"},
            "methods": {"knn": {"retriever": "pixels-knn"}, "rand": {"retriever": "random"}},
            "space": {"method": ["knn", "rand"]},
            "dataset": {
                "n_total": 128,
                "split_ratio": 0.5,
                "protocol": "instance",
                "instance": {"strength": "light", "untrained_share": 0.25},
            },
        }
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (
        run(study, RunOptions(tracking_uri=uri, storage=f"sqlite:///{tmp_path / 'optuna.db'}")).complete == 2
    )
    text = write_report("inst_report", tracking_uri=uri, out_dir=tmp_path / "reports").read_text()
    assert "| protocol | instance: queries are new views (light)" in text
    part = text.split("## Seen and unseen in training", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in part.splitlines() if line.startswith("| knn |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    seen, unseen = (float(c.split()[0]) for c in cells[3:5])  # "mean ± ci" or, clipped, "mean [low, high]"
    # 75% of the 64 indexed images had train views, and the count column says how many test queries
    n_seen, n_unseen = (int(c) for c in cells[2].split(" / "))
    assert n_seen == 3 * n_unseen > 0
    assert "| test queries had train views / no train view |" in part
    # the two groups average back to the stored test R@1
    client = MlflowClient(uri)
    stored = next(
        r
        for r in client.search_runs(
            [client.get_experiment_by_name("inst_report").experiment_id], "tags.`vitdsi.kind` = 'trial'"
        )
        if r.data.tags["method"] == "knn"
    )
    assert 0.75 * seen + 0.25 * unseen == pytest.approx(stored.data.metrics["R_at_1"], abs=2e-4)


def test_unseen_classes_hide_labels_and_train_queries(digits32):
    from vitdsi.data.protocols import UnseenOptions, unseen_classes

    sets = make_split(digits32, n_total=300, split_ratio=0.4, seed=0).apply(digits32)
    out = apply_protocol(sets, "unseen-classes", 0, UnseenOptions(share=0.3))
    unseen = unseen_classes(digits32.n_classes, 0.3, 0)
    assert len(unseen) == 3 and out.corpus.meta["unseen_classes"] == unseen.tolist()
    hidden = np.isin(sets.corpus.labels.numpy(), unseen)
    # unseen classes' corpus labels are hidden from training, the truth decides relevance
    assert (out.corpus.labels.numpy()[hidden] == -1).all() and torch.equal(
        out.corpus.labels[~hidden], sets.corpus.labels[~hidden]
    )
    assert torch.equal(out.corpus.relevance_labels, sets.corpus.labels) and torch.equal(
        out.corpus.images, sets.corpus.images
    )
    # no train query of an unseen class is left; validation and test keep every class
    assert not np.isin(out.train.labels.numpy(), unseen).any() and len(out.train) < len(sets.train)
    assert out.test is sets.test and out.val is sets.val
    rel = Relevance.between(out.test, out.corpus)
    assert np.array_equal(rel.n_relevant(), Relevance.between(sets.test, sets.corpus).n_relevant())
    # training pairs never point at an unseen class's image
    sampler = RelevantSampler(*relevance_keys(out.train, out.corpus))
    drawn = sampler.sample(torch.arange(len(sampler)), torch.Generator().manual_seed(0)).numpy()
    assert not hidden[drawn].any()
    with pytest.raises(VitDSIError, match="share"):
        UnseenOptions(share=1.0)


def test_unseen_classes_study_runs_and_reports_both_groups(tmp_path):
    from bench.report import write_report
    from bench.study import RunOptions, run

    study = resolve(
        {
            "name": "unseen_report",
            "scale": "smoke",
            "metrics": ["MAP@10", "P@10"],
            "methods": {"classifier": {"retriever": "classifier"}, "knn": {"retriever": "pixels-knn"}},
            "space": {"method": ["classifier", "knn"]},
            "dataset": {
                "n_total": 200,
                "split_ratio": 0.4,
                "protocol": "unseen-classes",
                "unseen": {"share": 0.3},
            },
        }
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (
        run(study, RunOptions(tracking_uri=uri, storage=f"sqlite:///{tmp_path / 'optuna.db'}")).complete == 2
    )
    text = write_report("unseen_report", tracking_uri=uri, out_dir=tmp_path / "reports").read_text()
    assert "| protocol | unseen-classes: 30% of the classes" in text
    part = text.split("## Seen and unseen in training", 1)[1].split("\n## ", 1)[0]
    assert "MAP@10 (seen classes)" in part and "MAP@10 (unseen classes)" in part
    # the classifier never saw an unseen class's label: it ranks those images last, so it finds
    # (almost) nothing for unseen-class queries, while it does for seen ones
    row = next(line for line in part.splitlines() if line.startswith("| classifier |"))
    seen, unseen = (float(c.split()[0]) for c in row.strip("|").split("|")[3:5])
    assert unseen < seen
    with pytest.raises(StudyConfigError, match="dataset.unseen.*protocol: unseen-classes"):
        resolve(
            {"name": "x", "retriever": "pixels-knn", "scale": "smoke", "dataset": {"unseen": {"share": 0.3}}}
        )


def test_graded_protocol_scores_graded_ndcg_end_to_end(tmp_path):
    from vitdsi.metrics import per_query

    study = resolve(
        {
            "name": "graded",
            "retriever": "pixels-knn",
            "scale": "smoke",
            "metrics": ["nDCG@10", "P@10"],
            "objective": {"metric": "nDCG@10"},
            "dataset": {
                "name": "coco-mosaic",
                "root": str(tmp_path),
                "size": 32,
                "n_total": 120,
                "split_ratio": 0.5,
                "options": {"n_images": 150, "tile_size": 16},
                "protocol": "graded",
                "graded": {"gain": "shared"},
            },
        }
    )
    cfg = study.trial_config({})
    _, sets = prepare(cfg.dataset)
    relevance = sets.relevance("test")
    assert sets.grading == "shared" and relevance.graded
    result = run_trial(cfg, device="cpu")
    ids = result.repeats[0].test.ids.numpy()
    graded = per_query(ids, relevance, ["nDCG@10"])["nDCG@10"]
    binary = per_query(ids, Relevance(relevance.query_labels, relevance.corpus_labels), ["nDCG@10"])[
        "nDCG@10"
    ]
    # the trial's nDCG@10 is the graded one, which differs from binary nDCG on these mosaics
    assert result.summary["nDCG@10"].mean == pytest.approx(np.nanmean(graded))
    assert not np.allclose(np.nan_to_num(graded), np.nan_to_num(binary))
    with pytest.raises(VitDSIError, match="graded protocol needs multi-label data"):
        apply_protocol(make_split(prepare_digits(), n_total=60, seed=0).apply(prepare_digits()), "graded", 0)


def prepare_digits():
    from vitdsi.data import load_dataset

    return load_dataset("digits", size=32)


def test_report_of_a_study_searching_the_protocol_has_a_block_per_protocol(tmp_path):
    """`dataset.protocol` in the space: one block per protocol, each with its own chance, model
    choice and split by train views / seen classes, and a table across protocols."""
    from bench.report import write_report
    from bench.study import RunOptions, run

    study = resolve(
        {
            "name": "by_protocol",
            "scale": "smoke",
            "metrics": ["MAP@10", "R@1"],
            "methods": {"knn": {"retriever": "pixels-knn"}, "rand": {"retriever": "random"}},
            "space": {"dataset.protocol": ["class", "instance", "unseen-classes"], "method": ["knn", "rand"]},
            "dataset": {"n_total": 160, "split_ratio": 0.5},
            "repeats": 2,
        }
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (
        run(study, RunOptions(tracking_uri=uri, storage=f"sqlite:///{tmp_path / 'optuna.db'}")).complete == 6
    )
    text = write_report("by_protocol", tracking_uri=uri, out_dir=tmp_path / "reports").read_text()
    assert not list((tmp_path / "reports").rglob(".artifacts"))  # downloaded rankings are not left beside it
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads[heads.index("## Across protocols") :][:4] == [
        "## Across protocols",
        "## Protocol `class`",
        "## Protocol `instance`",
        "## Protocol `unseen-classes`",
    ]
    blocks = {
        p: text.split(f"## Protocol `{p}`", 1)[1].split("\n## ", 1)[0]
        for p in ("class", "instance", "unseen-classes")
    }
    # each block has its protocol's chance: R@1 is 1/80 for 80 indexed images under any relevance,
    # MAP@10 depends on how many images are relevant (one per query under `instance`)
    import re

    assert "R@1 (chance 0.0125)" in blocks["instance"]
    chance = {p: float(re.search(r"MAP@10 \(chance ([0-9.]+)\)", b).group(1)) for p, b in blocks.items()}
    harmonic_10 = sum(1 / r for r in range(1, 11))  # one relevant image at a uniform rank among 80
    assert (
        chance["instance"] == pytest.approx(harmonic_10 / 80, abs=1e-4)
        and chance["class"] != chance["instance"]
    )
    assert "### Seen and unseen in training" in blocks["instance"] and "(no train view)" in blocks["instance"]
    assert "(unseen classes)" in blocks["unseen-classes"] and "### Seen and unseen" not in blocks["class"]
    for p, block in blocks.items():
        assert block.count("**(chosen)**") == 1  # model choice within the protocol
        assert f"dataset.protocol={p}" in block and not any(
            f"dataset.protocol={q}" in block for q in blocks if q != p
        )
    across = text.split("## Across protocols", 1)[1].split("\n## ", 1)[0]
    assert "instance: R@1 (chance 0.0125)" in across and "class: MAP@10" in across
    assert sum(line.startswith("| knn |") for line in across.splitlines()) == 1
    # one Holm family for the whole report: the adjusted p of every block's comparison is the
    # correction over the comparisons of all three protocols together
    from vitdsi.statistics import holm

    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for b in blocks.values()
        for line in b.split("### Paired comparisons", 1)[1].split("\n### ", 1)[0].splitlines()
        if line.startswith("| protocol=")
    ]
    assert (
        len(rows) == 3
        and "Holm runs over all 3 comparisons of this report (all 3 protocols)" in blocks["class"]
    )
    assert [float(r[5]) for r in rows] == pytest.approx(holm([float(r[4]) for r in rows]).tolist(), rel=0.05)
