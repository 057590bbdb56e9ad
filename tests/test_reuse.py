"""Trials keyed by their configuration: the fingerprint of a trial's build, `bench run --reuse`
(a finished configuration is copied, not trained again) and one built index for points that
differ only in query arguments. Real runs on the smoke scale into sqlite stores in tmp_path."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from bench.config import resolve
from bench.runs import open_trial_run
from bench.study import RunOptions, run
from vitdsi.retrievers.embedding import Embedding
from vitdsi.retrievers.pixels_knn import PixelsKNN

EMBEDDING = {
    "retriever": "embedding",
    "scale": "smoke",
    "fixed": {"backbone": "pixels", "index_type": "flat"},
}


def count_index_calls(monkeypatch, cls) -> list[int]:
    """Counts calls of `cls._index` (one per index built) in the returned list's length."""
    calls, real = [], cls._index

    def _index(self, corpus, train_queries):
        calls.append(1)
        return real(self, corpus, train_queries)

    monkeypatch.setattr(cls, "_index", _index)
    return calls


def options(tmp_path, **kw) -> RunOptions:
    return RunOptions(
        storage=f"sqlite:///{tmp_path}/optuna.db",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        heartbeat=2,
        **kw,
    )


def trial_runs(tmp_path, outcome) -> dict:
    """The outcome's trial runs by their `center` parameter."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return {t["params"]["center"]: client.get_run(t["run_id"]) for t in outcome.trials}


def test_same_configuration_same_fingerprint_and_any_build_change_a_new_one():
    study = resolve(
        {"name": "fp", **EMBEDDING, "space": {"center": [True, False], "query.ef_search": [16, 64]}}
    )
    a = study.trial_config({"center": True, "query.ef_search": 16})
    again = resolve(
        {
            "name": "other-name",
            "description": "words",
            **EMBEDDING,
            "n_trials": 3,
            "space": {"center": [True], "query.ef_search": [16]},
        }
    ).trial_config({"center": True, "query.ef_search": 16})
    assert a.fingerprint() == again.fingerprint() and a.result_fingerprint() == again.result_fingerprint()
    # query arguments change the result, not the build
    other_query = study.trial_config({"center": True, "query.ef_search": 64})
    assert (
        other_query.fingerprint() == a.fingerprint()
        and other_query.result_fingerprint() != a.result_fingerprint()
    )
    changed = [
        study.trial_config({"center": False, "query.ef_search": 16}),  # a build parameter
        a.replace(params={**a.params, "batch_size": 7}),
        a.replace(seed=a.seed + 1),
        a.replace(repeats=2),
        a.replace(retriever="pixels-knn"),
        a.replace(dataset=a.dataset.replace(n_total=a.dataset.n_total + 1)),
        a.replace(dataset=a.dataset.replace(seed=a.dataset.seed + 1)),  # the split
        a.replace(dataset=a.dataset.replace(split_ratio=0.4)),
        a.replace(dataset=a.dataset.replace(protocol="instance")),
        a.replace(dataset=a.dataset.replace(options={"x": 1})),
    ]
    prints = [c.fingerprint() for c in changed]
    assert a.fingerprint() not in prints and len(set(prints)) == len(changed)
    assert a.result_fingerprint() not in {c.result_fingerprint() for c in changed}


def test_reuse_copies_a_finished_run_and_without_it_the_trial_trains(tmp_path, monkeypatch):
    calls = count_index_calls(monkeypatch, PixelsKNN)
    space = {"space": {"center": [True, False]}, "retriever": "pixels-knn", "scale": "smoke"}
    first = run(resolve({"name": "first", **space}), options(tmp_path))
    assert first.done and len(calls) == 2
    source = trial_runs(tmp_path, first)

    second = run(resolve({"name": "second", **space}), options(tmp_path, reuse=True))
    assert second.done and second.ran == 2 and len(calls) == 2  # nothing trained
    for center, copied in trial_runs(tmp_path, second).items():
        src = source[center]
        assert copied.info.status == "FINISHED" and copied.info.run_id != src.info.run_id
        assert copied.data.tags["reused_from"] == src.info.run_id
        assert copied.data.tags["reused.git.sha"] == src.data.tags["git.sha"]
        assert copied.data.tags["trial.result_fingerprint"] == src.data.tags["trial.result_fingerprint"]
        assert copied.data.metrics == src.data.metrics and "MAP_at_10" in copied.data.metrics
        assert copied.data.tags["optuna.study_name"] == "second-smoke"
    assert second.best["value"] == pytest.approx(first.best["value"])
    assert {t["metrics"]["MAP@10"]["mean"] for t in second.trials} == {
        t["metrics"]["MAP@10"]["mean"] for t in first.trials
    }
    # the copy reads back like a trial run: its split and rankings, and the source's index
    copied = trial_runs(tmp_path, second)[True]
    stored = open_trial_run(
        copied.info.run_id, f"sqlite:///{tmp_path}/mlflow.db", with_index=True, folder=tmp_path / "copied"
    )
    assert stored.rankings()["test_ids_0"].shape[0] == len(stored.split.test)
    assert stored.load_index(device="cpu").corpus_size == len(stored.split.idb)

    third = run(resolve({"name": "third", **space}), options(tmp_path))  # no --reuse: it trains
    assert third.done and len(calls) == 4
    assert not any("reused_from" in r.data.tags for r in trial_runs(tmp_path, third).values())


def test_points_that_differ_only_in_query_arguments_share_one_built_index(tmp_path, monkeypatch):
    calls = count_index_calls(monkeypatch, Embedding)
    study = resolve(
        {"name": "query-args", **EMBEDDING, "space": {"center": [True, False], "query.ef_search": [16, 64]}}
    )
    out = run(study, options(tmp_path))
    assert out.done and out.ran == 4 and len(calls) == 2  # one build per value of center
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = [client.get_run(t["run_id"]) for t in sorted(out.trials, key=lambda t: t["number"])]
    assert [r.data.tags.get("index.reused") for r in runs] == [None, "true", None, "true"]
    assert len({r.data.tags["trial.fingerprint"] for r in runs}) == 2
    assert len({r.data.tags["trial.result_fingerprint"] for r in runs}) == 4
    assert [r.data.params["query.ef_search"] for r in runs] == ["16", "64", "16", "64"]
