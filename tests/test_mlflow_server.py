"""A study against a real `mlflow server` (sqlite backend, proxied artifacts) on a loopback
port: the runs and their artifacts read back with MlflowClient over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from mlflow import MlflowClient

from bench.config import resolve
from bench.runs import open_trial_run
from bench.study import RunOptions, run
from bench.tracking import metric_key
from vitdsi.data import Relevance
from vitdsi.metrics import evaluate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder}/server.db",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(folder / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(folder / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not answer: {(folder / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url, folder
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_study_against_mlflow_server(mlflow_server, tmp_path, digits32, monkeypatch):
    url, folder = mlflow_server
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory's default store
    study = resolve(
        {
            "name": "server",
            "retriever": "pixels-knn",
            "scale": "smoke",
            "space": {"center": [True, False]},
            "metrics": ["P@10", "MAP@10", "MRR"],
        }
    )
    out = run(study, RunOptions(storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=url, heartbeat=2))
    assert out.done and out.counts == {"COMPLETE": 2}
    assert not (tmp_path / "mlflow.db").exists()

    client = MlflowClient(url)
    exp = client.get_experiment_by_name("server")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.info.run_id == out.parent_run_id]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out.parent_run_id]
    assert len(parent) == 1 and len(children) == 2
    assert parent[0].data.tags["optuna.study_name"] == "server-smoke"
    for r in children:
        assert r.info.status == "FINISHED" and r.info.artifact_uri.startswith("mlflow-artifacts:")
        assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {
            "config.yaml",
            "split.json",
            "rankings.npz",
            "index",
        }
        stored = open_trial_run(r.info.run_id, url, folder=tmp_path / r.info.run_id)
        sets = stored.split.apply(digits32)
        again = evaluate(
            stored.rankings()["test_ids_0"], Relevance.between(sets.test, sets.corpus), study.metrics
        )
        for name, v in again.items():
            assert r.data.metrics[metric_key(name)] == pytest.approx(v.mean, abs=1e-12)
    # the artifacts went through the server into its artifact folder
    assert any(p.name == "rankings.npz" for p in (folder / "artifacts").rglob("*"))
    assert np.isfinite(out.best["value"])
