"""Per-seed checkpoints of a trial: a trial of several seeds logs each seed's built index to its
MLflow run as soon as that seed is built, so a trial interrupted after some seeds (Ctrl-C, a
killed worker, a machine taken away) resumes from them instead of training them again.

A trial looks for the checkpoints of earlier runs of its own build (`TrialConfig.fingerprint`,
the `trial.fingerprint` tag) that did not finish (FAILED, KILLED, or RUNNING and abandoned),
in any experiment of the tracking store, takes the run that holds the most seeds, and copies
what it restores into its own run, so that the newest interrupted run always holds every seed
built so far. A seed is restored only on the device type it was built on (its build seconds are
reported); a checkpoint that cannot be read is built again, with a warning. Each checkpoint is
`seeds/r<repeat>/`: the retriever as `save_retriever` writes it (`index/`) and `build.json`
(build seconds, training history and record, extraction seconds and, for a study kind that
indexes in steps, each step's record, the retriever being the index after the last), written last, so a
half-logged checkpoint is never read. The run's tags `seeds.restored` and
`seeds.restored_from` say which seeds a trial did not build itself. A finished trial drops its
own checkpoints where the artifact store allows it (its `index` artifact keeps the first seed).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import TrialConfig
from bench.tracking import Tracker
from vitdsi.log import get_logger
from vitdsi.retrievers.base import Retriever
from vitdsi.retrievers.persistence import load_retriever, save_retriever

log = get_logger(__name__)

FOLDER = "seeds"  # the artifact folder of a run's checkpoints
BUILD_FILE = "build.json"  # written after the index: its presence says the checkpoint is whole
FINISHED = "FINISHED"


@dataclass
class SeedBuild:
    """One seed's build, as `bench.trial` uses it."""

    retriever: Retriever
    index_seconds: float  # wall seconds of the build when it ran
    history: list[dict[str, Any]]  # per-epoch training log
    training: dict[str, Any] | None  # the retriever's training record
    extraction: dict[str, float] = field(default_factory=dict)  # bench.build_cost.extraction_of
    # a study kind that indexes in steps (continual indexing): one record per step; the retriever
    # is the index after the last step
    steps: list[dict[str, float]] = field(default_factory=list)


class SeedCheckpoints:
    """The checkpoints of one trial run (`run_id`), and the ones it may restore from."""

    def __init__(self, tracker: Tracker, run_id: str, cfg: TrialConfig) -> None:
        self.tracker, self.run_id, self.cfg = tracker, run_id, cfg
        self.restored: list[int] = []  # repeats restored, not built
        self._source: str | None = None
        self._available: set[int] | None = None  # the source's whole checkpoints, looked up once
        self._tmp = Path(tempfile.mkdtemp(prefix="vitdsi-seeds-"))

    # ---- restoring --------------------------------------------------------------------------
    def _find_source(self) -> None:
        """The unfinished run of this build with the most whole checkpoints (none: nothing to restore)."""
        client = self.tracker.client
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(
            experiments,
            filter_string=f"tags.`trial.fingerprint` = '{self.cfg.fingerprint()}'",
            order_by=["attributes.start_time DESC"],
            max_results=200,
        )
        best: tuple[int, str, set[int]] | None = None
        for run in runs:
            if run.info.run_id == self.run_id or run.info.status == FINISHED:
                continue
            if run.data.tags.get("vitdsi.kind") != "trial":
                continue
            whole = self._whole_checkpoints(run.info.run_id)
            if whole and (best is None or len(whole) > best[0]):
                best = (len(whole), run.info.run_id, whole)
        self._source, self._available = (best[1], best[2]) if best else (None, set())

    def _whole_checkpoints(self, run_id: str) -> set[int]:
        client, out = self.tracker.client, set()
        for entry in client.list_artifacts(run_id, FOLDER):
            name = entry.path.rsplit("/", 1)[-1]
            if entry.is_dir and name.startswith("r") and name[1:].isdigit():
                files = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, entry.path)}
                if BUILD_FILE in files:
                    out.add(int(name[1:]))
        return out

    def load(self, repeat: int, device: str | None) -> SeedBuild | None:
        """Seed `repeat`'s build from an interrupted run of this trial, or None (build it)."""
        if self._available is None:
            self._find_source()
        if repeat not in self._available:
            return None
        from mlflow.artifacts import download_artifacts

        try:
            folder = Path(
                download_artifacts(
                    run_id=self._source,
                    artifact_path=f"{FOLDER}/r{repeat}",
                    dst_path=str(self._tmp / "in"),
                    tracking_uri=self.tracker.uri,
                )
            )
            build = json.loads((folder / BUILD_FILE).read_text())
            retriever = load_retriever(folder / "index", device=device)
        except Exception as e:  # a damaged checkpoint costs a rebuild, never the trial
            log.warning(
                f"seed {repeat}: the checkpoint of run {self._source} cannot be read ({e}); building it"
            )
            return None
        if build["device_type"] != retriever.device.type:
            log.info(f"seed {repeat}: checkpoint built on {build['device_type']}, not restored here")
            return None
        retriever.training_record = build["training"]
        self._log(folder, repeat)  # this run now holds the seed too
        self.restored.append(repeat)
        client = self.tracker.client
        client.set_tag(self.run_id, "seeds.restored", ",".join(str(r) for r in self.restored))
        client.set_tag(self.run_id, "seeds.restored_from", self._source)
        log.info(f"seed {repeat}: restored from interrupted run {self._source[:8]} (not trained again)")
        return SeedBuild(
            retriever,
            float(build["index_seconds"]),
            build["history"],
            build["training"],
            build["extraction"],
            build.get("steps", []),
        )

    # ---- saving -----------------------------------------------------------------------------
    def save(self, repeat: int, build: SeedBuild) -> None:
        """Log seed `repeat`'s build to this run; a retriever that cannot be saved is only warned of."""
        folder = self._tmp / "out" / f"r{repeat}"
        try:
            save_retriever(build.retriever, folder / "index")
            record = {
                "repeat": repeat,
                "seed": self.cfg.seed + repeat,
                "device_type": build.retriever.device.type,
                "index_seconds": build.index_seconds,
                "history": build.history,
                "training": build.training,
                "extraction": build.extraction,
                "steps": build.steps,
            }
            (folder / BUILD_FILE).write_text(json.dumps(record, default=_jsonable))
            self._log(folder, repeat)
        except Exception as e:
            log.warning(
                f"seed {repeat}: no checkpoint logged ({type(e).__name__}: {e}); an interruption "
                "would build it again"
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _log(self, folder: Path, repeat: int) -> None:
        """The index first, `build.json` last: a reader never sees half a checkpoint as whole."""
        client, path = self.tracker.client, f"{FOLDER}/r{repeat}"
        client.log_artifacts(self.run_id, str(folder / "index"), f"{path}/index")
        client.log_artifact(self.run_id, str(folder / BUILD_FILE), path)

    # ---- cleaning up ------------------------------------------------------------------------
    def finished(self) -> None:
        """The trial finished: its checkpoints, and those of the run it restored from, are no
        longer needed (dropped where the artifact store can delete)."""
        self.close()
        for run_id in {self.run_id, self._source} - {None}:
            try:
                from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

                uri = self.tracker.client.get_run(run_id).info.artifact_uri
                get_artifact_repository(uri).delete_artifacts(FOLDER)
            except Exception as e:  # a store that cannot delete keeps them; they are only disk
                log.debug(f"seed checkpoints of run {run_id} kept: {e}")

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays in a training record, as JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
