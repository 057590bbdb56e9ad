"""The `tune:` block: every named method gets the same number of tuning trials (one seed, scored
on validation), its best recipe is what the study's trials run on every seed, tuning resumes
without redoing a finished trial, and reports keep tuning trials in their own section."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from bench.config import StudyConfigError, resolve
from bench.study import RunOptions, run
from bench.tracking import VAL_PREFIX

ROOT = Path(__file__).resolve().parent.parent
SLEEPY = ROOT / "tests" / "plugins" / "sleepy.py"
KNOBS = {
    "knn": {"center": [True, False]},
    "bovw": {"vocab_size": {"type": "int", "low": 4, "high": 32, "log": True}},
}


def knn_and_bovw(name: str, tune: dict | None = None, **extra) -> dict:
    return {
        "name": name,
        "scale": "smoke",
        "repeats": 2,
        "mlflow": {"log_index": False},
        "methods": {"knn": {"retriever": "pixels-knn"}, "bovw": {"retriever": "bovw"}},
        "space": {"method": ["knn", "bovw"]},
        "tune": tune or {"trials_per_method": 2, "methods": KNOBS},
        **extra,
    }


def options(folder: Path) -> RunOptions:
    return RunOptions(
        tracking_uri=f"sqlite:///{folder}/mlflow.db", storage=f"sqlite:///{folder}/optuna.db", heartbeat=2
    )


def tuning_trials(folder: Path, study_name: str):
    return optuna.load_study(study_name=study_name, storage=f"sqlite:///{folder}/optuna.db").get_trials(
        deepcopy=False
    )


def trial_runs(folder: Path, parent_id: str):
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


# ---- the block in a study file -----------------------------------------------------------
@pytest.mark.parametrize(
    ("tune", "extra", "expected"),
    [
        (
            {"methods": {"knn": {"centre": [True]}}},
            {},
            "field `tune.methods.knn.centre`: retriever 'pixels-knn' (method 'knn') has no parameter "
            "'centre' (did you mean 'center'?)",
        ),
        (
            {"methods": {"knnn": {"center": [True]}}},
            {},
            "field `tune.methods.knnn`: unknown method 'knnn' (did you mean 'knn'?); methods in this file: "
            "knn, bovw",
        ),
        (
            {"methods": {"bovw": {"vocab_size": [8]}}},
            {"space": {"method": ["knn"]}},
            "field `tune.methods.bovw`: method 'bovw' is tuned but the study never runs it",
        ),
        (
            {"methods": {"knn": {"center": [True]}}},
            {
                "space": {"method": ["knn", "bovw"], "dataset.n_total": [128, 256]},
                "methods": {"knn": {"retriever": "pixels-knn"}, "bovw": {"retriever": "pixels-knn"}},
            },
            None,
        ),
        (
            {"methods": {"knn": {"dataset.n_total": [128]}}},
            {},
            "field `tune.methods.knn.dataset.n_total`: tuning sets build parameters only",
        ),
        (
            {"methods": {"knn": {"seed": [1, 2]}}},
            {},
            "field `tune.methods.knn.seed`: 'seed' is set by the harness",
        ),
        (
            {"methods": {"bovw": {"vocab_size": {"type": "float", "low": 4, "high": 32}}}},
            {},
            "field `tune.methods.bovw.vocab_size`: parameter 'vocab_size' of retriever 'bovw' takes int "
            "values",
        ),
        (
            {"methods": {"knn": {"batch_size": {"type": "int", "low": 0, "high": 8}}}},
            {},
            "field `tune.methods.knn.batch_size`: retriever 'pixels-knn' rejects batch_size=0",
        ),
        (
            {"methods": {"knn": {"batch_size": {"type": "int", "lo": 1, "high": 8}}}},
            {},
            "field `tune.methods.knn.batch_size.lo`: unknown field 'lo' (did you mean 'low'?)",
        ),
        ({"methods": {"knn": {}}}, {}, "field `tune.methods.knn`: no knobs"),
    ],
)
def test_tune_block_errors_name_the_field(tune, extra, expected):
    study = knn_and_bovw("bad", {"trials_per_method": 2, **tune}, **extra)
    if expected is None:  # a searched dataset field beside tuned build parameters is fine
        assert resolve(study, source="s.yaml").tune.methods["knn"]["center"].choices == [True]
        return
    with pytest.raises(StudyConfigError) as e:
        resolve(study, source="s.yaml")
    assert str(e.value).startswith("s.yaml: ") and expected in str(e.value)


def test_a_tuned_knob_may_not_also_be_searched():
    study = knn_and_bovw(
        "both",
        {"trials_per_method": 2, "methods": {"knn": {"center": [True, False]}}},
        methods={"knn": {"retriever": "pixels-knn"}, "bovw": {"retriever": "pixels-knn"}},
        space={"method": ["knn", "bovw"], "center": [True, False]},
    )
    with pytest.raises(
        StudyConfigError, match=r"field `tune.methods.knn.center`: 'center' is also searched in `space`"
    ):
        resolve(study, source="s.yaml")


def test_the_smoke_preset_caps_the_budget_and_startup_is_half_of_it():
    smoke = resolve(knn_and_bovw("cap", {"trials_per_method": 8, "methods": KNOBS}))
    assert smoke.tune.trials_per_method == 2 and smoke.tune.n_startup_trials == 1
    small = resolve(knn_and_bovw("cap", {"trials_per_method": 8, "methods": KNOBS}), scale="small")
    assert small.tune.trials_per_method == 8 and small.tune.n_startup_trials == 4
    assert (
        smoke.fingerprint()
        != resolve(
            knn_and_bovw("cap", {"trials_per_method": 2, "methods": {"knn": {"center": [True]}}})
        ).fingerprint()
    )


# ---- running it --------------------------------------------------------------------------
def test_tuning_runs_the_budget_per_method_and_the_trials_run_the_best_recipe(tmp_path):
    from bench.report import write_report

    out = run(resolve(knn_and_bovw("tuned")), options(tmp_path))
    assert out.done and out.counts == {"COMPLETE": 2}
    runs = trial_runs(tmp_path, out.parent_run_id)
    tuning = [r for r in runs if r.data.tags.get("vitdsi.phase") == "tune"]
    final = [r for r in runs if r.data.tags.get("vitdsi.phase") != "tune"]
    assert len(final) == 2 and {r.data.params["repeats"] for r in final} == {"2"}
    for method, knobs in KNOBS.items():
        trials = tuning_trials(tmp_path, f"tuned-smoke-tune-{method}")
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
        logged = [r for r in tuning if r.data.tags["tune.method"] == method]
        assert len(logged) == 2 and {r.data.params["repeats"] for r in logged} == {"1"}
        # the objective of a tuning trial is its validation value, and the recipe is the best one
        best = max(
            logged,
            key=lambda r: (
                r.data.metrics[VAL_PREFIX + "MAP_at_10"],
                -int(r.data.tags["optuna.trial_number"]),
            ),
        )
        assert {t.value for t in trials} == {r.data.metrics[VAL_PREFIX + "MAP_at_10"] for r in logged}
        (knob,) = knobs
        ran = [r for r in final if r.data.tags["method"] == method]
        assert len(ran) == 1 and ran[0].data.params[knob] == best.data.params[knob]
    text = write_report("tuned", tracking_uri=out.tracking_uri, out_dir=tmp_path / "reports").read_text()
    results = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    assert results.count("\n| ") == 1 + 2  # header and the two final trials; no tuning trial
    section = text.split("## Tuning", 1)[1].split("\n## ", 1)[0]
    bovw_best = max(
        (r for r in tuning if r.data.tags["tune.method"] == "bovw"),
        key=lambda r: r.data.metrics[VAL_PREFIX + "MAP_at_10"],
    )
    assert (
        f"| bovw | vocab_size: 4..32 (log) | 2 / 0 | vocab_size={bovw_best.data.params['vocab_size']} |"
        in section
    )
    assert "| knn | center: True \\| False | 2 / 0 | center=" in section and section.count("| yes |") == 2
    assert "Chosen trial (best MAP@10 on the validation queries): **#" in text


def test_interrupted_tuning_resumes_without_redoing_finished_trials(tmp_path, monkeypatch):
    import bench.study.tuning as tuning

    study = resolve(knn_and_bovw("resumed"))
    checks = {"n": 0}

    def stop_after_the_first_trial() -> None:  # `_work` checks between trials: the second check stops it
        checks["n"] += 1
        if checks["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(tuning, "interrupt", SimpleNamespace(check=stop_after_the_first_trial))
    first = run(study, options(tmp_path))
    assert first.interrupted and first.counts == {}
    (done,) = tuning_trials(tmp_path, "resumed-smoke-tune-knn")
    monkeypatch.undo()
    second = run(study, options(tmp_path))
    assert second.done and second.counts == {"COMPLETE": 2}
    for method in KNOBS:
        assert [t.state for t in tuning_trials(tmp_path, f"resumed-smoke-tune-{method}")] == [
            TrialState.COMPLETE
        ] * 2
    again = tuning_trials(tmp_path, "resumed-smoke-tune-knn")
    assert again[0].user_attrs["mlflow_run_id"] == done.user_attrs["mlflow_run_id"]
    tuning_runs = [
        r for r in trial_runs(tmp_path, second.parent_run_id) if r.data.tags.get("vitdsi.phase") == "tune"
    ]
    assert len(tuning_runs) == 4  # the finished trial was not run again
    third = run(study, options(tmp_path))
    assert third.ran == 0 and len(tuning_trials(tmp_path, "resumed-smoke-tune-bovw")) == 2


def test_a_no_wait_worker_waits_for_another_workers_tuning_trial(tmp_path):
    """`--no-wait` lets a worker leave when only other workers' study trials are left, but no trial
    can start before every recipe is known: with the last tuning trial running elsewhere, it
    waits for it and then runs the study, rather than stopping with "n-1/n finished trials"."""
    import threading
    import time

    url = f"sqlite:///{tmp_path}/optuna.db"
    name = "waits-smoke-tune-knn"
    other = optuna.create_study(study_name=name, storage=url, direction="maximize").ask()  # another worker's

    def the_other_worker_finishes() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                states = [t.state for t in optuna.load_study(study_name=name, storage=url).get_trials()]
            except KeyError:
                states = []
            if states.count(TrialState.COMPLETE) == 1:  # this worker's own trial is done: it waits now
                time.sleep(2)
                break
            time.sleep(0.2)
        optuna.load_study(study_name=name, storage=url).tell(other.number, -1.0)

    finisher = threading.Thread(target=the_other_worker_finishes)
    finisher.start()
    no_wait = RunOptions(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", storage=url, heartbeat=2, wait_for_others=False
    )
    outcome = run(resolve(knn_and_bovw("waits")), no_wait)
    finisher.join()
    assert outcome.done and outcome.counts == {"COMPLETE": 2}
    assert [t.state for t in tuning_trials(tmp_path, name)] == [TrialState.COMPLETE] * 2


def test_a_method_whose_tuning_keeps_failing_stops_the_run_with_a_clear_error(tmp_path):
    from bench.report import write_report

    study = resolve(
        {
            "name": "failing-tune",
            "scale": "smoke",
            "plugins": [str(SLEEPY)],
            "mlflow": {"log_index": False},
            "methods": {
                "sleepy": {
                    "retriever": "test-sleepy-knn",
                    "params": {"sleep": 0.0, "epochs": 1, "fail": True},
                }
            },
            "tune": {"trials_per_method": 2, "methods": {"sleepy": {"center": [True, False]}}},
        }
    )
    with pytest.raises(tuning_error(), match=r"tuning of method 'sleepy' has 0/2 finished trials"):
        run(study, options(tmp_path))
    assert [t.state for t in tuning_trials(tmp_path, "failing-tune-smoke-tune-sleepy")] == [
        TrialState.FAIL
    ] * 5
    text = write_report(
        "failing-tune", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", out_dir=tmp_path / "r"
    ).read_text()
    assert "| sleepy | center: True \\| False | 0 / 5 | none (no finished tuning trial) | n/a | n/a |" in text
    assert "## Failed trials" not in text  # failed tuning trials are reported in the Tuning section only


def tuning_error():
    from bench.study.tuning import TuningError

    return TuningError


@pytest.mark.heavy
def test_headline_at_smoke_tunes_its_dsi_and_dual_encoder(tmp_path):
    """`bench run studies/headline.yaml --scale smoke` (under a minute on one thread): 2 tuning trials
    each for the multitask DSI and the dual encoder, then every method on 3 seeds."""
    from bench.cli import app
    from bench.report import write_report

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(ROOT / "studies" / "headline.yaml"),
            "--scale",
            "smoke",
            "--tracking-uri",
            uri,
            "--storage",
            f"sqlite:///{tmp_path}/optuna.db",
            "--set",
            "mlflow.log_index=false",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "tuned dsi-clustered-multitask:" in result.output and "tuned dual-encoder:" in result.output
    for method in ("dsi-clustered-multitask", "dual-encoder"):
        trials = tuning_trials(tmp_path, f"headline-smoke-tune-{method}")
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
        assert all(2.0e-4 <= t.params["lr"] <= 2.0e-3 and t.params["dropout"] in (0.0, 0.1) for t in trials)
        assert all((t.params.get("index_views") in (0, 1)) == method.startswith("dsi") for t in trials)
    text = write_report("headline", tracking_uri=uri, out_dir=tmp_path / "reports").read_text()
    section = text.split("## Tuning", 1)[1].split("\n## ", 1)[0]
    assert (
        "| dsi-clustered-multitask | lr: 0.0002..0.002 (log); dropout: 0.0 \\| 0.1; "
        "index_views: 0 \\| 1 | 2 / 0 |" in section
    )
    assert (
        section.count("| yes |") == 2
        and "Not tuned (run with their own parameters): dsi-clustered-fine-tuned" in section
    )
    results = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    assert results.count("\n| ") == 1 + 8  # the 8 methods' trials only


def test_check_names_the_tuning_budget():
    from bench.cli import app

    result = CliRunner().invoke(
        app, ["run", str(ROOT / "studies" / "headline.yaml"), "--scale", "smoke", "--check"]
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert (
        "8 trials, grid sampler, after 2 tuning trials for each of dsi-clustered-multitask, dual-encoder"
        in output
    )
    assert "trials_per_method: 2" in output and "n_startup_trials: 1" in output
