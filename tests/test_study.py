"""`bench run` end to end on the smoke scale: Optuna trials, nested MLflow runs whose metrics
equal the ones recomputed from the stored rankings, resume, failures, Ctrl-C and a killed
worker. MLflow and Optuna use sqlite files in a temporary folder shared by this module."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from bench.cli import app
from bench.config import resolve
from bench.runs import open_trial_run
from bench.study import RunOptions, run
from bench.tracking import default_storage, metric_key, metric_name, redact, resolve_tracking_uri
from vitdsi.data import Relevance, Split
from vitdsi.metrics import evaluate, indexing_accuracy, mean_ci, parse_metric, per_query

SLEEPY = Path(__file__).resolve().parent / "plugins" / "sleepy.py"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-store")
    return SimpleNamespace(
        dir=folder, tracking=f"sqlite:///{folder}/mlflow.db", storage=f"sqlite:///{folder}/optuna.db"
    )


def options(store, **kw) -> RunOptions:
    return RunOptions(storage=store.storage, tracking_uri=store.tracking, heartbeat=2, **kw)


def knn_study(name: str, **extra):
    return resolve({"name": name, "retriever": "pixels-knn", "scale": "smoke", **extra})


def trials_of(store, study_name: str):
    return optuna.load_study(study_name=study_name, storage=store.storage).get_trials(deepcopy=False)


def nested_runs(client: MlflowClient, parent_run_id: str):
    exp = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def test_two_trial_study_logs_metrics_equal_to_recomputed_ones(store, digits32):
    study = knn_study("e2e", space={"center": [True, False]})
    out = run(study, options(store))
    assert out.done and out.counts == {"COMPLETE": 2} and out.ran == 2

    trials = trials_of(store, "e2e-smoke")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.params["center"] for t in trials) == [False, True]
    client = MlflowClient(store.tracking)
    runs = {r.info.run_id: r for r in nested_runs(client, out.parent_run_id)}
    assert set(runs) == {t.user_attrs["mlflow_run_id"] for t in trials}
    ranked = [m for m in study.metrics if not parse_metric(m).is_indexing]
    for t in trials:
        r = runs[t.user_attrs["mlflow_run_id"]]
        assert r.info.status == "FINISHED"
        assert (
            r.data.params["center"] == str(t.params["center"]) and r.data.params["dataset.n_total"] == "256"
        )
        assert r.data.tags["git.sha"] and r.data.tags["version.torch"] and r.data.tags["device"] == "cpu"
        assert r.data.tags["dataset"] == "digits" and r.data.tags["optuna.trial_number"] == str(t.number)
        stored = open_trial_run(
            r.info.run_id, store.tracking, with_index=True, folder=store.dir / r.info.run_id
        )
        arrays = stored.rankings()
        sets = stored.split.apply(digits32)
        assert np.array_equal(arrays["test"], stored.split.test) and np.array_equal(
            arrays["idb"], stored.split.idb
        )
        again = evaluate(arrays["test_ids_0"], Relevance.between(sets.test, sets.corpus), ranked)
        again.update(indexing_accuracy(arrays["ia_ids_0"], len(sets.corpus), ks=(1, 5)))
        assert set(again) == set(study.metrics)
        for name, v in again.items():
            key = metric_key(name)
            assert r.data.metrics[key] == pytest.approx(v.mean, abs=1e-12), name
            assert r.data.metrics[f"{key}_chance"] == pytest.approx(v.chance, abs=1e-12), name
            if np.isfinite(v.ci95):
                assert r.data.metrics[f"{key}_ci95"] == pytest.approx(v.ci95, abs=1e-12), name
        # the Optuna objective is the validation metric, recomputed here from the stored validation
        # ranking; it is not the test metric
        val = evaluate(arrays["val_ids_0"], Relevance.between(sets.val, sets.corpus), ["MAP@10"])["MAP@10"]
        assert (
            t.value
            == pytest.approx(val.mean, abs=1e-12)
            == pytest.approx(r.data.metrics["val_MAP_at_10"], abs=1e-12)
        )
        assert np.array_equal(arrays["val_0"], stored.split.val) and len(sets.val) > 0
        # the stored index answers like the trial did
        index = stored.load_index(device="cpu")
        assert np.array_equal(index.search(sets.test.images, 10).ids.numpy(), arrays["test_ids_0"][:, :10])


def test_repeats_report_mean_and_ci_over_seeds(store, digits32):
    study = resolve(
        {
            "name": "repeats",
            "retriever": "random",
            "scale": "smoke",
            "repeats": 3,
            "seed": 5,
            "metrics": ["P@10", "MAP@10"],
            "mlflow": {"log_index": False},
        }
    )
    out = run(study, options(store))
    assert out.counts == {"COMPLETE": 1}
    (trial,) = trials_of(store, "repeats-smoke")
    client = MlflowClient(store.tracking)
    r = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert "index" not in {a.path for a in client.list_artifacts(r.info.run_id)}
    stored = open_trial_run(r.info.run_id, store.tracking, folder=store.dir / r.info.run_id)
    arrays = stored.rankings()
    assert list(arrays["seeds"]) == [5, 6, 7]
    # the split seed moves with the training seed: each repeat has its own test queries
    assert not np.array_equal(arrays["test_0"], arrays["test_1"]) and np.array_equal(
        arrays["test_0"], stored.split.test
    )
    per_seed, pooled = [], {"P@10": [], "MAP@10": []}
    for i in range(3):
        split = Split(
            *(arrays[f"{part}_{i}"] for part in ("idb", "train", "val", "test")), params=stored.split.params
        )
        sets = split.apply(digits32)
        relevance = Relevance.between(sets.test, sets.corpus)
        per_seed.append(evaluate(arrays[f"test_ids_{i}"], relevance, ["P@10", "MAP@10"]))
        for name, values in per_query(arrays[f"test_ids_{i}"], relevance, ["P@10", "MAP@10"]).items():
            pooled[name].append(values)
    for name in ("P@10", "MAP@10"):
        means = np.array([p[name].mean for p in per_seed])
        assert len(set(means)) > 1  # the seeds really differ
        mean, ci, _ = mean_ci(means)
        assert r.data.metrics[metric_key(name)] == pytest.approx(mean, abs=1e-12)
        assert r.data.metrics[f"{metric_key(name)}_ci95"] == pytest.approx(ci, abs=1e-12)
        # beside the CI across seeds, the CI over every seed's queries pooled
        assert r.data.metrics[f"{metric_key(name)}_qci95"] == pytest.approx(
            mean_ci(np.concatenate(pooled[name]))[1], abs=1e-12
        )
        history = client.get_metric_history(r.info.run_id, f"{metric_key(name)}_per_seed")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(list(means))
        assert trial.user_attrs["metrics"][name]["n_seeds"] == 3


def test_rerun_resumes_and_skips_finished_grid_points(store):
    study = knn_study("resume", space={"dataset.n_total": [100, 120, 140]})
    first = run(study, options(store, n_trials=2))
    assert first.counts == {"COMPLETE": 2} and first.target == 2
    second = run(study, options(store))
    assert second.ran == 1 and second.done and second.counts == {"COMPLETE": 3}
    third = run(study, options(store))
    assert third.ran == 0 and third.counts == {"COMPLETE": 3}
    points = sorted(t.params["dataset.n_total"] for t in trials_of(store, "resume-smoke"))
    assert points == [100, 120, 140]
    assert first.parent_run_id == second.parent_run_id == third.parent_run_id


def test_failed_trial_is_recorded_and_the_study_goes_on(store):
    sleepy = Path(__file__).resolve().parent / "plugins" / "sleepy.py"
    study = resolve(
        {
            "name": "failing",
            "retriever": "test-sleepy-knn",
            "scale": "smoke",
            "plugins": [str(sleepy)],
            "fixed": {"sleep": 0.0, "epochs": 1},
            "space": {"fail": [False, True], "center": [True, False]},
        }
    )
    out = run(study, options(store))
    assert not out.done and out.counts == {"COMPLETE": 2, "FAIL": 2}
    failed = [t for t in trials_of(store, "failing-smoke") if t.state == TrialState.FAIL]
    assert len(failed) == 2 and all("failing on purpose" in t.user_attrs["error"] for t in failed)
    client = MlflowClient(store.tracking)
    run_info = client.get_run(failed[0].user_attrs["mlflow_run_id"])
    assert run_info.info.status == "FAILED" and "failing on purpose" in run_info.data.tags["error"]
    # a re-run retries only the failed points (and records them failing again)
    again = run(study, options(store))
    assert again.ran == 2 and again.counts == {"COMPLETE": 2, "FAIL": 4}
    # the report lists every failed attempt, with its error, as never completed
    from bench.report import write_report

    text = write_report("failing", tracking_uri=store.tracking, out_dir=store.dir / "reports").read_text()
    failed_part = text.split("## Failed trials", 1)[1].split("\n## ", 1)[0]
    assert failed_part.count("| FAILED |") == 4 and failed_part.count("fail=True") == 4
    assert "failing on purpose" in failed_part and failed_part.count("**no**") == 4


def test_samplers_are_seeded_per_trial(store):
    space = {"batch_size": {"type": "int", "low": 8, "high": 512, "log": True}, "center": [True, False]}
    params = []
    for name, seed in (("tpe-a", 0), ("tpe-b", 0), ("tpe-c", 1)):
        out = run(
            knn_study(name, space=space, n_trials=3, sampler={"type": "tpe", "seed": seed}), options(store)
        )
        assert out.counts == {"COMPLETE": 3}
        params.append([t.params for t in trials_of(store, f"{name}-smoke")])
    assert params[0] == params[1] != params[2]


def test_cli_run_list_search_and_help(store, tmp_path):
    runner = CliRunner()
    study = tmp_path / "cli.yaml"
    study.write_text(
        yaml.safe_dump(
            {"name": "cli", "retriever": "pixels-knn", "scale": "smoke", "space": {"center": [True, False]}}
        )
    )
    common = ["--storage", store.storage, "--tracking-uri", store.tracking]
    res = runner.invoke(app, ["run", str(study), "--n-trials", "1", *common])
    assert res.exit_code == 0, res.output
    assert "Optuna study" in res.output and "best run" in res.output
    run_id = [t for t in trials_of(store, "cli-smoke") if t.state == TrialState.COMPLETE][0].user_attrs[
        "mlflow_run_id"
    ]

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nretriever: pixels-knn\nfixd: {}\n")
    res = runner.invoke(app, ["run", str(bad), *common])
    assert res.exit_code == 2 and "fixd" in res.output and "bad.yaml" in res.output

    image = tmp_path / "query.png"
    from PIL import Image

    Image.fromarray((np.arange(40 * 30 * 3) % 255).astype(np.uint8).reshape(40, 30, 3)).save(image)
    grid = tmp_path / "grid.png"
    res = runner.invoke(
        app,
        [
            "search",
            "--run",
            run_id,
            str(image),
            "--k",
            "3",
            "--out",
            str(grid),
            "--tracking-uri",
            store.tracking,
        ],
    )
    assert res.exit_code == 0, res.output
    assert grid.stat().st_size > 1000 and "digits/" in res.output

    for args, expect in (
        (["list", "retrievers"], "pixels-knn"),
        (["list", "datasets"], "fashion-mnist"),
        (["list", "studies"], "table1"),
    ):
        res = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert res.exit_code == 0 and expect in res.output, res.output
    for cmd in ([], ["run"], ["list"], ["ui"], ["search"]):
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output


# ---- interrupting a worker -----------------------------------------------------------------
def _bench(store, study: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "VITDSI_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "run",
        str(study),
        "--storage",
        store.storage,
        "--tracking-uri",
        store.tracking,
        "--heartbeat",
        "1",
    ]
    return subprocess.Popen(
        cmd, cwd=store.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def _wait_running(store, study_name: str, number: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until trial `number` runs and has its MLflow run (so the worker is mid-trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            trials = trials_of(store, study_name)
        except KeyError:  # study not created yet
            trials = []
        if any(
            t.number == number and t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
            for t in trials
        ):
            time.sleep(0.4)  # into the first fake epoch
            return
        time.sleep(0.1)
    raise AssertionError(f"trial {number} did not start")


def test_ctrl_c_at_the_start_of_a_run_stops_it(store, tmp_path):
    """Ctrl-C as soon as the worker starts (imports, data checks and study setup, when garbage
    collection runs often) is acted on at the next safe point: exit 130, no traceback."""
    study = tmp_path / "early.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "early",
                "retriever": "test-sleepy-knn",
                "scale": "smoke",
                "plugins": [str(SLEEPY)],
                "fixed": {"sleep": 0.5, "epochs": 4},
                "space": {"center": [True, False]},
                "dataset": {"n_total": 120},
            }
        )
    )
    proc = _bench(store, study)
    for line in proc.stdout:
        if line.startswith("study early-smoke"):
            proc.send_signal(signal.SIGINT)
            break
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output
    assert all(t.state != TrialState.COMPLETE for t in trials_of(store, "early-smoke"))


@pytest.mark.heavy
def test_ctrl_c_and_killed_worker_then_resume(store, tmp_path):
    study = tmp_path / "sleepy.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "sleepy",
                "retriever": "test-sleepy-knn",
                "scale": "smoke",
                "plugins": [str(SLEEPY)],
                "fixed": {"sleep": 0.8, "epochs": 3},
                "space": {"center": [True, False], "batch_size": [512]},
                "dataset": {"n_total": 120},
            }
        )
    )
    client = MlflowClient(store.tracking)

    # 1. Ctrl-C during trial 0: recorded FAIL, its MLflow run KILLED, exit 130
    proc = _bench(store, study)
    _wait_running(store, "sleepy-smoke", 0, proc)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    t0, t1 = trials_of(store, "sleepy-smoke")  # the grid's two points, queued by the first worker
    assert (
        t1.state == TrialState.WAITING
        and t0.state == TrialState.FAIL
        and "interrupted" in t0.user_attrs["error"]
    )
    assert client.get_run(t0.user_attrs["mlflow_run_id"]).info.status == "KILLED"

    # 2. SIGKILL during the next trial, after one trial completed: the retry of point 0 (trial 2)
    # runs first; point 1, queued before it as trial 1, is queued again behind it as trial 3
    proc = _bench(store, study)
    _wait_running(store, "sleepy-smoke", 3, proc)
    proc.kill()
    proc.communicate(timeout=60)
    trials = trials_of(store, "sleepy-smoke")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].number == 2 and done[0].user_attrs["retry_of"] == 0
    assert trials[1].user_attrs["requeued"] and trials[3].state == TrialState.RUNNING
    kept_run = done[0].user_attrs["mlflow_run_id"]
    kept_metrics = client.get_run(kept_run).data.metrics

    # 3. re-run: the dead worker's trial goes stale, is re-queued and finished; nothing logged is lost
    proc = _bench(store, study)
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, output
    trials = trials_of(store, "sleepy-smoke")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["center"] for t in complete) == [False, True]
    assert trials[3].state == TrialState.FAIL
    assert any(t.system_attrs.get("failed_trial") == 3 for t in complete)  # the re-queued copy
    assert client.get_run(trials[3].user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert client.get_run(kept_run).data.metrics == kept_metrics
    parents = {
        client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["mlflow.parentRunId"]
        for t in trials
        if "mlflow_run_id" in t.user_attrs
    }
    assert len(parents) == 1
    finished = [r for r in nested_runs(client, parents.pop()) if r.info.status == "FINISHED"]
    assert len(finished) == 2
    for r in finished:  # per-epoch training curves
        history = client.get_metric_history(r.info.run_id, "train/index/loss")
        assert [round(m.value, 6) for m in history] == [1.0, 0.5, round(1 / 3, 6)]


def test_a_diverged_trial_fails_with_its_reason_and_the_study_goes_on(store):
    study = resolve(
        {
            "name": "diverge",
            "retriever": "classifier",
            "scale": "smoke",
            "fixed": {"epochs": 2},
            "space": {"lr": [1e30, 2e-3]},
            "dataset": {"n_total": 120},
        }
    )
    out = run(study, options(store))
    assert out.counts == {"FAIL": 1, "COMPLETE": 1} and out.failed == [0]
    bad, good = trials_of(store, "diverge-smoke")
    assert bad.params["lr"] == 1e30 and good.state == TrialState.COMPLETE
    assert bad.user_attrs["error"].startswith(
        "TrainingDivergedError: classify: training loss became nan at epoch 1"
    )
    assert "lower lr (now 1e+30)" in bad.user_attrs["error"]


@pytest.mark.parametrize("where", ["before_trial", "sample_independent"])
def test_sampler_errors_count_toward_the_consecutive_failure_stop(store, monkeypatch, where):
    """A sampler that raises (in `ask`, or when a value is drawn) fails the trial; the worker stops
    after MAX_CONSECUTIVE_FAILURES of them instead of failing trials forever, and leaves none RUNNING."""
    from bench.study import worker
    from bench.study.samplers import PerTrialSeeded

    class Broken(optuna.samplers.RandomSampler):
        def before_trial(self, study, trial):
            if where == "before_trial":
                raise ValueError("low is nan")

        def sample_independent(self, *args):
            raise ValueError("low is nan")

    monkeypatch.setattr(worker, "MAX_CONSECUTIVE_FAILURES", 3)
    monkeypatch.setattr(worker, "make_sampler", lambda study: PerTrialSeeded(lambda s: Broken(seed=s), 0))
    study = knn_study(
        f"broken-{where}".replace("_", "-"),
        n_trials=10,
        space={"batch_size": {"type": "int", "low": 8, "high": 512}},
    )
    out = run(study, options(store))
    assert out.counts == {"FAIL": 3} and out.failed == [0, 1, 2] and not out.done
    trials = trials_of(store, study.default_study_name)
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert all(t.user_attrs["error"] == "sampler: ValueError: low is nan" for t in trials)


def test_study_file_changed_under_the_same_name_is_refused(store):
    run(knn_study("changed", space={"center": [True]}), options(store))
    from bench.study import StudyMismatchError

    with pytest.raises(StudyMismatchError, match="different configuration"):
        run(knn_study("changed", space={"center": [False]}), options(store))


def test_tracking_and_storage_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    here = Path.cwd().resolve()
    assert resolve_tracking_uri() == f"sqlite:///{here}/mlflow.db"
    assert default_storage(resolve_tracking_uri()) == f"sqlite:///{here}/optuna.db"
    assert resolve_tracking_uri("sqlite:///runs/m.db") == f"sqlite:///{here}/runs/m.db"
    assert default_storage(resolve_tracking_uri("sqlite:///runs/m.db")) == f"sqlite:///{here}/runs/optuna.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert default_storage(resolve_tracking_uri()) == f"sqlite:///{here}/optuna.db"
    assert resolve_tracking_uri("sqlite:///x.db") == f"sqlite:///{here}/x.db"  # the flag beats the variable
    assert metric_key("MAP@10") == "MAP_at_10" and metric_name("nDCG_at_10") == "nDCG@10"
    assert redact("postgresql://u:secret@host/db") == "postgresql://u:***@host/db"


def test_resume_retries_the_interrupted_point_first(store):
    """A grid is a queue of enqueued trials; a point interrupted in another session (recorded FAIL)
    is queued again by the next run and run once, before the points that never ran."""
    study = knn_study("retry-first", space={"dataset.n_total": [100, 120, 140, 160]})
    first = run(study, options(store, n_trials=1))
    assert first.counts == {"COMPLETE": 1} and first.queued == 3
    ostudy = optuna.load_study(study_name="retry-first-smoke", storage=store.storage)
    interrupted = ostudy.ask()  # a worker pops point 1 and is interrupted
    assert interrupted.user_attrs["grid_id"] == 1
    ostudy.tell(interrupted, state=TrialState.FAIL)
    out = run(study, options(store))
    assert out.ran == 3 and out.done and out.queued == 0
    complete = [t for t in trials_of(store, "retry-first-smoke") if t.state == TrialState.COMPLETE]
    assert sorted(t.params["dataset.n_total"] for t in complete) == [100, 120, 140, 160]
    (retried,) = [t for t in complete if t.user_attrs.get("retry_of") == interrupted.number]
    assert retried.params["dataset.n_total"] == 120
    this_run = sorted((t for t in complete if t.number > interrupted.number), key=lambda t: t.datetime_start)
    assert [t.params["dataset.n_total"] for t in this_run] == [120, 140, 160]
    assert out.counts == {
        "COMPLETE": 4,
        "FAIL": 1,
    }  # the points queued again behind the retry are not counted
    tags = MlflowClient(store.tracking).get_run(retried.user_attrs["mlflow_run_id"]).data.tags
    assert tags["optuna.retry_of"] == str(interrupted.number)


def test_worker_waits_for_a_point_another_worker_holds(store, monkeypatch):
    """The last point is running in another worker: with --wait this worker waits for it rather
    than exit with the study unfinished, and claims nothing twice."""
    import bench.study.worker as worker_mod

    study = knn_study("one-snapshot", space={"center": [True, False]})
    assert run(study, options(store, n_trials=1)).counts == {"COMPLETE": 1}
    ostudy = optuna.load_study(study_name="one-snapshot-smoke", storage=store.storage)
    other = ostudy.ask()  # the other worker's trial (it sends no heartbeat, so it is never taken over)
    waits = []

    def sleep(seconds: float) -> None:
        if not waits:  # ... which finishes while this worker waits
            ostudy.tell(other, 0.5)
        waits.append(seconds)

    monkeypatch.setattr(worker_mod, "time", SimpleNamespace(sleep=sleep, monotonic=time.monotonic))
    out = run(study, options(store))
    assert waits and out.ran == 0
    assert out.done and out.counts == {"COMPLETE": 2}, out.counts


def test_search_after_the_data_moved(store, tmp_path, monkeypatch):
    """`bench search` on a run whose imagefolder root moved: a clear error, then --set dataset.root."""
    from PIL import Image

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(15):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    study = knn_study("moved", dataset={"name": "imagefolder", "root": str(root), "size": 16, "n_total": 30})
    out = run(study, options(store))
    assert out.done, out.trials
    run_id = out.best["run_id"]
    moved = tmp_path / "moved-imgs"
    root.rename(moved)
    query = moved / "a" / "0.png"
    runner = CliRunner()
    from bench import trial as trial_mod

    trial_mod._DATASETS.clear()  # each `bench search` is a new process: nothing cached
    common = [
        "search",
        "--run",
        run_id,
        str(query),
        "--k",
        "3",
        "--out",
        str(tmp_path / "g.png"),
        "--tracking-uri",
        store.tracking,
    ]
    res = runner.invoke(app, common, env={"COLUMNS": "400"})
    assert res.exit_code == 2, res.output
    assert str(root) in res.output and "--set dataset.root=PATH" in res.output
    trial_mod._DATASETS.clear()
    res = runner.invoke(app, [*common, "--set", f"dataset.root={moved}"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    # a query image PIL refuses as a decompression bomb: one error line naming it
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # the 16 px corpus passes, 200 px is over twice it
    trial_mod._DATASETS.clear()
    res = runner.invoke(
        app,
        [
            "search",
            "--run",
            run_id,
            str(big),
            "--out",
            str(tmp_path / "g.png"),
            "--tracking-uri",
            store.tracking,
            "--set",
            f"dataset.root={moved}",
        ],
        env={"COLUMNS": "400"},
    )
    assert res.exit_code == 2 and f"image {big} is too large to decode" in res.output.replace("\n", ""), (
        res.output
    )
    assert "Traceback" not in res.output
    monkeypatch.undo()
    # other data at that root (a file renamed) are refused, not silently used
    (moved / "a" / "3.png").rename(moved / "a" / "3b.png")
    trial_mod._DATASETS.clear()
    res = runner.invoke(app, [*common, "--set", f"dataset.root={moved}"], env={"COLUMNS": "400"})
    assert res.exit_code == 2 and "data changed" in res.output, res.output


def test_threads_are_pinned_for_the_run_and_restored(store, digits32):
    """`threads:` in the file (or --threads, which wins) pins torch for every trial of this worker."""
    import torch

    before = torch.get_num_threads()
    out = run(knn_study("threads", threads=3), options(store))
    tags = [r.data.tags for r in nested_runs(MlflowClient(store.tracking), out.parent_run_id)]
    assert tags and {t["device.torch_threads"] for t in tags} == {"3"}
    out = run(knn_study("threads_cli", threads=3), options(store, threads=1))
    tags = [r.data.tags for r in nested_runs(MlflowClient(store.tracking), out.parent_run_id)]
    assert {t["device.torch_threads"] for t in tags} == {"1"}
    assert torch.get_num_threads() == before
