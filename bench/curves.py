"""Per-epoch training curves of a trial run, written to MLflow as metric histories
(`train/<phase>/<field>`, or `train/seed<N>/<phase>/<field>` with several seeds), and each seed's
validation checkpoints against training compute (`curve/seed<N>/...`)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.tracking import Tracker, metric_key


class EpochLogger:
    """Per-epoch training metrics of one trial run, buffered and written every `flush_s`
    seconds (a commit per epoch would slow short epochs down); call `flush()` at the end."""

    def __init__(
        self, tracker: Tracker, run_id: str, *, seeds: bool = False, first_seed: int = 0, flush_s: float = 5.0
    ) -> None:
        self.tracker, self.run_id = tracker, run_id
        self.seeds, self.first_seed, self.flush_s = seeds, first_seed, flush_s
        self.step = 0  # epochs so far, over every phase and seed: the MLflow step
        self._pending: list = []
        self._last = time.monotonic()

    def __call__(self, repeat: int, entry: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        prefix = f"train/seed{self.first_seed + repeat}/" if self.seeds else "train/"
        now = int(time.time() * 1000)
        for key, value in epoch_metrics(entry, prefix).items():
            self._pending.append(Metric(key, value, now, self.step))
        self.step += 1
        if time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for s in range(0, len(pending), 1000):
            self.tracker.client.log_batch(self.run_id, metrics=pending[s : s + 1000])
        self._last = time.monotonic()


def epoch_metrics(entry: dict[str, Any], prefix: str = "train/") -> dict[str, float]:
    """An epoch log -> {train/<phase>/<field>: value} for every finite numeric field."""
    phase = entry.get("phase")
    base = f"{prefix}{phase}/" if phase else prefix
    return {
        f"{base}{k}": float(v)
        for k, v in entry.items()
        if k not in ("phase", "epoch", "step")
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and np.isfinite(v)
    }


def checkpoint_metrics(result) -> list[tuple[int, dict[str, float]]]:
    """Each seed's validation checkpoints (`vitdsi.training.monitor`) as (step, metrics): the
    learning curve `curve/seed<N>/val_<metric>` against `curve/seed<N>/flops`, `.../examples`,
    `.../epoch` and `.../seconds`, one MLflow step per checkpoint."""
    out = []
    for i, rep in enumerate(result.repeats):
        record = rep.training or {}
        if not record.get("checkpoints") or not record.get("metric"):
            continue
        prefix = f"curve/seed{result.config.seed + i}/"
        for step, c in enumerate(record["checkpoints"]):
            values = {
                f"{prefix}val_{metric_key(record['metric'])}": c["value"],
                f"{prefix}flops": c["flops"],
                f"{prefix}examples": c["examples"],
                f"{prefix}epoch": c["epoch"],
                f"{prefix}seconds": c["seconds"],
            }
            out.append((step, {k: float(v) for k, v in values.items() if np.isfinite(v)}))
    return out


def log_checkpoints(tracker: Tracker, run_id: str, result) -> None:
    """Write `checkpoint_metrics(result)` to the trial run."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(k, v, now, step) for step, values in checkpoint_metrics(result) for k, v in values.items()
    ]
    for s in range(0, len(items), 1000):
        tracker.client.log_batch(run_id, metrics=items[s : s + 1000])
