"""Per-seed checkpoints (bench/seed_checkpoints.py): a trial of several seeds interrupted after
some of them resumes from their logged builds instead of training them again, and ends with the
numbers of a run that was never interrupted."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow import MlflowClient

import bench.trial
from bench.config import resolve
from bench.seed_checkpoints import FOLDER
from bench.study import RunOptions, run
from bench.tracking import metric_key


def _store(folder):
    return SimpleNamespace(tracking=f"sqlite:///{folder}/mlflow.db", storage=f"sqlite:///{folder}/optuna.db")


def _study(retriever: str, params: dict, extra: dict | None = None):
    return resolve(
        {
            "name": "ckpt",
            "retriever": retriever,
            "scale": "smoke",
            "repeats": 3,
            "fixed": params,
            "metrics": ["MAP@10", "P@10"],
            "mlflow": {"log_index": False},
            **(extra or {}),
        }
    )


# continual indexing: a build is the first index and every add step; its checkpoint holds the
# index after the last step and each step's record
CONTINUAL = {"continual": {"initial": 0.5, "steps": 2}, "dataset": {"n_total": 120, "split_ratio": 0.5}}


def _run(store, study, **kw):
    return run(
        study, RunOptions(storage=store.storage, tracking_uri=store.tracking, heartbeat=2, threads=1, **kw)
    )


def _trial_runs(store):
    trials = optuna.load_study(study_name="ckpt-smoke", storage=store.storage).get_trials(deepcopy=False)
    client = MlflowClient(store.tracking)
    return client, [
        client.get_run(t.user_attrs["mlflow_run_id"]) for t in trials if "mlflow_run_id" in t.user_attrs
    ]


def _per_seed(client, run, key):
    history = client.get_metric_history(run.info.run_id, f"{metric_key(key)}_per_seed")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


@pytest.mark.parametrize(
    ("retriever", "params", "extra"),
    [
        ("classifier", {"epochs": 2}, None),
        ("dsi-vit", {"id_scheme": "clustered", "index_epochs": 2, "retrieval_epochs": 1}, None),
        ("dsi-vit", {"id_scheme": "atomic", "index_epochs": 2, "add_strategy": "replay"}, CONTINUAL),
    ],
)
def test_an_interrupted_trial_resumes_from_the_seeds_it_built(
    retriever, params, extra, tmp_path, monkeypatch
):
    study = _study(retriever, params, extra)
    reference = _store(tmp_path / "reference")
    (tmp_path / "reference").mkdir()
    assert _run(reference, study).done
    ref_client, (ref_run,) = _trial_runs(reference)

    store = _store(tmp_path)
    created = []
    real_create = bench.trial.create

    def create(*a, **kw):  # the third seed's build is interrupted
        created.append(kw["seed"])
        if len(created) == 3:
            raise KeyboardInterrupt
        return real_create(*a, **kw)

    monkeypatch.setattr(bench.trial, "create", create)
    first = _run(store, study)
    assert first.interrupted and created == [study.seed, study.seed + 1, study.seed + 2]
    client, (killed,) = _trial_runs(store)
    assert killed.info.status == "KILLED"
    assert {a.path for a in client.list_artifacts(killed.info.run_id, FOLDER)} == {
        f"{FOLDER}/r0",
        f"{FOLDER}/r1",
    }

    created.clear()
    second = _run(store, study)
    assert second.done and created == [study.seed + 2]  # seeds 0 and 1 were not trained again
    client, runs = _trial_runs(store)
    (done,) = [r for r in runs if r.info.status == "FINISHED"]
    assert done.data.tags["seeds.restored"] == "0,1"
    assert done.data.tags["seeds.restored_from"] == killed.info.run_id
    # the same numbers as the run that was never interrupted, seed by seed
    for key in ("MAP@10", "P@10"):
        assert _per_seed(client, done, key) == pytest.approx(_per_seed(ref_client, ref_run, key), abs=1e-12)
    if extra is not None:  # and every step of every seed, restored or built
        # (wall times differ between runs: only the quality of each step)
        steps = sorted(k for k in ref_run.data.metrics if k.startswith("continual/") and "seconds" not in k)
        assert steps
        for key in steps:
            got = sorted((m.step, m.value) for m in client.get_metric_history(done.info.run_id, key))
            want = sorted((m.step, m.value) for m in ref_client.get_metric_history(ref_run.info.run_id, key))
            assert [s for s, _ in got] == [s for s, _ in want], key
            assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-12), key
    # the build seconds of the restored seeds are the ones measured when they were built
    assert done.data.metrics["index_seconds"] > 0
    # a finished trial drops the checkpoints, its own and those it restored from
    assert not client.list_artifacts(done.info.run_id, FOLDER)
    assert not client.list_artifacts(killed.info.run_id, FOLDER)


def test_a_damaged_checkpoint_is_built_again_with_a_warning(tmp_path, monkeypatch, caplog):
    study = _study("classifier", {"epochs": 1})
    store = _store(tmp_path)
    created, interrupt_at = [], [2]
    real_create = bench.trial.create

    def create(*a, **kw):
        created.append(kw["seed"])
        if len(created) in interrupt_at:
            raise KeyboardInterrupt
        return real_create(*a, **kw)

    monkeypatch.setattr(bench.trial, "create", create)
    assert _run(store, study).interrupted
    client, (killed,) = _trial_runs(store)
    folder = Path(client.get_run(killed.info.run_id).info.artifact_uri.removeprefix("file://"))
    (folder / FOLDER / "r0" / "index" / "state.pt").write_bytes(b"truncated")
    created.clear()
    interrupt_at.clear()
    out = _run(store, study)
    assert out.done and created == [study.seed, study.seed + 1, study.seed + 2]
    assert "seed 0: the checkpoint of run" in caplog.text and "cannot be read" in caplog.text


@pytest.mark.parametrize("given, expected", [(None, "false"), ("true", "true")])
def test_artifact_downloads_draw_no_bars_in_a_workers_log(given, expected):
    """Restoring checkpoints downloads artifacts; MLflow's tqdm bars are off unless the user asked."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    if given is not None:
        env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = given
    code = "import os, bench.seed_checkpoints; print(os.environ['MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
