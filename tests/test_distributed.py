"""Two `bench run` workers at once on one study in a real PostgreSQL: every grid point is
run exactly once, under one MLflow parent run.

Needs VITDSI_TEST_POSTGRES_URL (e.g. from `eval "$(bash scripts/ci_postgres.sh)"`, which
.ci/run does); skipped with that reason otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from bench.study import make_storage

pytestmark = pytest.mark.postgres

POSTGRES_URL = os.environ.get("VITDSI_TEST_POSTGRES_URL")
SLEEPY = Path(__file__).resolve().parent / "plugins" / "sleepy.py"


@pytest.mark.skipif(
    not POSTGRES_URL,
    reason='set VITDSI_TEST_POSTGRES_URL (eval "$(bash scripts/ci_postgres.sh)") to run against PostgreSQL',
)
def test_two_workers_share_one_study_on_postgres(tmp_path):
    name = f"dist-{uuid.uuid4().hex[:8]}"
    study = tmp_path / "dist.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "retriever": "test-sleepy-knn",
                "scale": "smoke",
                "plugins": [str(SLEEPY)],
                "fixed": {"sleep": 0.4, "epochs": 2},
                "dataset": {"n_total": 120},
                "space": {"center": [True, False], "batch_size": [64, 128, 256, 512]},
            }
        )
    )
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "run",
        str(study),
        "--storage",
        POSTGRES_URL,
        "--tracking-uri",
        tracking,
        "--heartbeat",
        "2",
    ]
    env = {**os.environ, "VITDSI_PROGRESS": "0"}
    workers = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    for w, out in zip(workers, outputs, strict=True):
        assert w.returncode == 0, out

    storage = make_storage(POSTGRES_URL, heartbeat=2)
    try:
        trials = optuna.load_study(study_name=f"{name}-smoke", storage=storage).get_trials(deepcopy=False)
        assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials), [
            t.state for t in trials
        ]
        points = Counter((t.params["center"], t.params["batch_size"]) for t in trials)
        assert len(points) == 8 and set(points.values()) == {1}  # every grid point exactly once
        assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers took trials

        client = MlflowClient(tracking)
        runs = [client.get_run(t.user_attrs["mlflow_run_id"]) for t in trials]
        assert all(r.info.status == "FINISHED" for r in runs)
        assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1
    finally:
        optuna.delete_study(study_name=f"{name}-smoke", storage=storage)
