"""`bench store pack | unpack` (bench/store_archive.py): a study store packed on one machine and
unpacked into another folder renders the same report, and a study interrupted mid-trial resumes
there from the seeds it had built, with the numbers of a run that was never interrupted."""

from __future__ import annotations

import json
import shutil
import tarfile
from types import SimpleNamespace

import optuna
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

import bench.trial
from bench.cli import app
from bench.config import resolve
from bench.report import write_report
from bench.store_archive import MANIFEST, pack, unpack
from bench.study import RunOptions, run
from bench.tracking import metric_key


def _study():
    return resolve(
        {
            "name": "packed",
            "scale": "smoke",
            "repeats": 3,
            "methods": {
                "classifier": {"retriever": "classifier", "params": {"epochs": 2}},
                "knn": {"retriever": "pixels-knn"},
            },
            "space": {"method": ["knn", "classifier"]},
            "objective": {"metric": "MAP@10"},
            "metrics": ["MAP@10", "P@10"],
        }
    )


def _store(folder):
    folder.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(
        folder=folder, tracking=f"sqlite:///{folder}/mlflow.db", storage=f"sqlite:///{folder}/optuna.db"
    )


def _run(store, study):
    return run(study, RunOptions(storage=store.storage, tracking_uri=store.tracking, heartbeat=2, threads=1))


def _classifier_run(store):
    trials = optuna.load_study(study_name="packed-smoke", storage=store.storage).get_trials(deepcopy=False)
    client = MlflowClient(store.tracking)
    runs = [client.get_run(t.user_attrs["mlflow_run_id"]) for t in trials if "mlflow_run_id" in t.user_attrs]
    return client, [r for r in runs if r.data.params.get("method") == "classifier"]


def _per_seed(client, run_, key):
    history = client.get_metric_history(run_.info.run_id, f"{metric_key(key)}_per_seed")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def _without_timestamp(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("| report written |"))


def test_an_unpacked_store_renders_the_same_report_and_leaves_the_models_out(tmp_path, monkeypatch):
    home = _store(tmp_path / "home")
    assert _run(home, _study()).done
    before = write_report("packed", tracking_uri=home.tracking, out_dir=tmp_path / "before")

    archive = tmp_path / "packed.tar.xz"
    out = CliRunner().invoke(app, ["store", "pack", str(home.folder), str(archive)])
    assert out.exit_code == 0, out.output
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile(MANIFEST))
    assert {"mlflow.db", "optuna.db"} <= set(names) and manifest["databases"] == ["mlflow.db", "optuna.db"]
    assert any(n.endswith("/artifacts/rankings.npz") for n in names)
    assert not [n for n in names if "/artifacts/index/" in n]  # the trained models stay home
    assert "index files left out" in out.output

    shutil.move(home.folder, tmp_path / "gone")  # nothing may still point at the packed folder
    away = tmp_path / "away"
    out = CliRunner().invoke(app, ["store", "unpack", str(archive), str(away)])
    assert out.exit_code == 0, out.output
    after = write_report("packed", tracking_uri=f"sqlite:///{away}/mlflow.db", out_dir=tmp_path / "after")
    assert _without_timestamp(after.read_text()) == _without_timestamp(before.read_text())
    uris = {r.info.artifact_uri for r in MlflowClient(f"sqlite:///{away}/mlflow.db").search_runs(["1", "2"])}
    assert uris and all(u.startswith(away.resolve().as_uri()) for u in uris)

    # a finished study stays finished: resuming trains nothing
    calls = []
    real_create = bench.trial.create
    monkeypatch.setattr(bench.trial, "create", lambda *a, **kw: calls.append(kw) or real_create(*a, **kw))
    assert _run(_store(away), _study()).done
    assert calls == []


def test_a_study_interrupted_mid_trial_resumes_from_its_seeds_after_unpacking(tmp_path, monkeypatch):
    study = _study()
    reference = _store(tmp_path / "reference")
    assert _run(reference, study).done
    ref_client, (ref_run,) = _classifier_run(reference)

    home = _store(tmp_path / "home")
    built = []
    real_create = bench.trial.create

    def create(name, **kw):  # the classifier's third seed is interrupted
        if name == "classifier":
            built.append(kw["seed"])
            if len(built) == 3:
                raise KeyboardInterrupt
        return real_create(name, **kw)

    monkeypatch.setattr(bench.trial, "create", create)
    assert _run(home, study).interrupted
    pack(home.folder, tmp_path / "half.tar.xz")
    shutil.rmtree(home.folder)

    away = tmp_path / "away"
    unpack(tmp_path / "half.tar.xz", away)
    built.clear()
    assert _run(_store(away), study).done
    assert built == [study.seed + 2]  # seeds 0 and 1 came from the archive's checkpoints
    client, runs = _classifier_run(_store(away))
    (done,) = [r for r in runs if r.info.status == "FINISHED"]
    assert done.data.tags["seeds.restored"] == "0,1"
    for key in ("MAP@10", "P@10"):
        assert _per_seed(client, done, key) == pytest.approx(_per_seed(ref_client, ref_run, key), abs=1e-12)


def test_bad_folders_and_archives_are_named(tmp_path):
    from vitdsi.errors import VitDSIError

    with pytest.raises(VitDSIError, match="is not a study store: it has no mlflow.db"):
        pack(tmp_path, tmp_path / "x.tar.xz")
    with pytest.raises(VitDSIError, match="no store archive"):
        unpack(tmp_path / "missing.tar.xz", tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    (tmp_path / "a.tar.xz").write_bytes(b"")
    with pytest.raises(VitDSIError, match="is not empty"):
        unpack(tmp_path / "a.tar.xz", tmp_path / "full")
    with pytest.raises(VitDSIError, match="cannot be read as a tar archive"):
        unpack(tmp_path / "a.tar.xz", tmp_path / "out")
    with tarfile.open(tmp_path / "plain.tar.xz", "w:xz") as tar:
        tar.add(tmp_path / "full" / "f", arcname="f")
    with pytest.raises(VitDSIError, match="not a store archive"):
        unpack(tmp_path / "plain.tar.xz", tmp_path / "out")
