"""Reading back what bench.tracking stored for a trial: its config, split, rankings and index.

Used by `bench search` (and by reports): a trial run is self-describing, so its corpus can
be rebuilt from the config and split artifacts, and its trained index loaded without
re-training.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.config import TrialConfig
from bench.tracking import resolve_tracking_uri
from bench.trial import dataset
from vitdsi.data import ImageSet, Split
from vitdsi.errors import DatasetNotFoundError, VitDSIError
from vitdsi.retrievers.persistence import load_retriever

RUN_ID_LENGTH = 32  # MLflow run ids: 32 hexadecimal characters
MAX_SHOWN = 10  # matching ids an ambiguous prefix lists


@dataclass
class TrialRun:
    run_id: str
    config: TrialConfig
    split: Split
    folder: Path  # where the artifacts were downloaded

    def rankings(self) -> dict[str, np.ndarray]:
        """The arrays of rankings.npz (see bench.rankings_file.rankings_arrays)."""
        with np.load(self.folder / "rankings.npz") as data:
            return {k: data[k] for k in data.files}

    def corpus(self, root: str | None = None) -> ImageSet:
        """The indexed images of the trial, rebuilt from its dataset config and split; `root`
        points at the data when they moved since the run (the split's stored source ids check
        that they are the same images)."""

        data = self.config.dataset if root is None else self.config.dataset.replace(root=str(root))
        try:
            images = dataset(data)
        except DatasetNotFoundError as e:
            hint = (
                "; if the data moved, point at them with `--set dataset.root=PATH`"
                if root is None and self.config.dataset.root is not None
                else ""
            )
            raise DatasetNotFoundError(
                f"run {self.run_id}: the data of its index are not where the run found "
                f"them ({data.name}, root {data.root}): {e}{hint}"
            ) from None
        try:
            return self.split.apply(images).corpus
        except VitDSIError as e:
            raise VitDSIError(f"run {self.run_id}: {e}") from None

    def load_index(self, device: str | None = None):
        """The trained retriever, loaded from the run's `index` artifact."""

        path = self.folder / "index"
        if not (path / "retriever.json").exists():
            raise VitDSIError(
                f"run {self.run_id} has no saved index (the study had `mlflow: {{log_index: false}}`); "
                "re-run the trial with log_index: true"
            )
        return load_retriever(path, device=device)


def resolve_run_id(client: Any, run_id: str, uri: str) -> str:
    """The full id of the run that `run_id` names: a whole id as given, or a prefix (such as
    the 8 characters `bench run` prints) of exactly one run in the store."""
    from mlflow.entities import ViewType

    given = run_id.strip().lower()
    if not re.fullmatch(r"[0-9a-f]+", given):
        raise VitDSIError(
            f"--run {run_id!r}: not an MLflow run id (hexadecimal, e.g. the 8 characters `bench run` prints)"
        )
    if len(given) == RUN_ID_LENGTH:
        return given
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    matches = (
        [
            r.info.run_id
            for r in client.search_runs(
                experiments, f"attributes.run_id LIKE '{given}%'", max_results=MAX_SHOWN + 1
            )
        ]
        if experiments
        else []
    )
    if not matches:
        raise VitDSIError(f"--run {run_id}: no MLflow run in {uri} has an id starting with '{given}'")
    if len(matches) > 1:
        shown = ", ".join(sorted(matches[:MAX_SHOWN])) + (", ..." if len(matches) > MAX_SHOWN else "")
        raise VitDSIError(
            f"--run {run_id}: the prefix matches several runs ({shown}); give more characters of the id"
        )
    return matches[0]


def open_trial_run(
    run_id: str,
    tracking_uri: str | None = None,
    *,
    with_index: bool = False,
    folder: str | Path | None = None,
) -> TrialRun:
    """Download a trial run's artifacts (config.yaml, split.json, rankings.npz, optionally index/);
    `run_id` may be a unique prefix of the id (`resolve_run_id`)."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    run_id = resolve_run_id(client, run_id, uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise VitDSIError(
            f"no MLflow run '{run_id}' in {uri}: {e.message if hasattr(e, 'message') else e}"
        ) from None
    if run.data.tags.get("vitdsi.kind") != "trial":
        raise VitDSIError(
            f"run {run_id} is not a trial run of `bench run` (it is a "
            f"{run.data.tags.get('vitdsi.kind', 'foreign')} run); pick a nested trial run, e.g. the study's "
            "best.run_id tag"
        )
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix=f"bench-run-{run_id[:8]}-"))
    names = ["config.yaml", "split.json", "rankings.npz"] + (["index"] if with_index else [])
    for name in names:
        # a run copied by `bench run --reuse` keeps no index: it stays in the run it copies
        owner = run.data.tags.get("reused_from", run_id) if name == "index" else run_id
        if name not in {a.path for a in client.list_artifacts(owner)}:
            if name == "index":
                continue  # load_index explains
            raise VitDSIError(
                f"run {run_id} has no artifact {name} (status {run.info.status}); was the trial finished?"
            )
        download_artifacts(run_id=owner, artifact_path=name, dst_path=str(folder), tracking_uri=uri)
    config = TrialConfig.model_validate(yaml.safe_load((folder / "config.yaml").read_text()))
    split = Split.load(folder / "split.json")
    return TrialRun(run_id, config, split, folder)
