"""What a trial gives its retrievers to stop on, and what it logs of their training.

`validation_set` picks the validation queries and the metric a trained retriever's checkpoints
score (the study's objective; a ranked metric of the study when the objective is IA@K), so model
choice and early stopping read the same queries, and test queries never reach training.
`training_summary` turns each seed's training record (`vitdsi.training.monitor`) into the
trial's metrics: `converged` (1.0 only when every seed converged), the share of seeds that
reached the plateau and the IA@1 target, IA@1 where indexing stopped (and the share of seeds
whose indexing stopped on an IA@1 plateau below the target), epochs, examples, FLOPs
and wall seconds (every method; the build time of those that do not train).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.config import TrialConfig
from vitdsi.data import SplitSets
from vitdsi.metrics import parse_metric
from vitdsi.training.monitor import ValidationSet

_MEANS = (
    "train_flops",
    "train_examples",
    "epochs_used",
    "epoch_cap",
)  # record fields logged as the mean over seeds


def validation_metric(cfg: TrialConfig) -> str | None:
    """The metric training stops on: the objective, else the first ranked higher-is-better metric."""
    candidates = [cfg.objective, *cfg.metrics] if cfg.objective else list(cfg.metrics)
    for name in candidates:
        m = parse_metric(name)
        if not m.is_indexing and m.family.name != "FPR":
            return m.name
    return None


def validation_set(cfg: TrialConfig, sets: SplitSets) -> ValidationSet | None:
    """The validation queries of `sets` scored by `validation_metric` (None without either)."""
    metric = validation_metric(cfg)
    if metric is None or not sets.n_queries("val"):
        return None
    return ValidationSet(sets.queries("val"), sets.relevance("val"), metric)


def training_summary(records: list[dict[str, Any] | None], seconds: list[float]) -> dict[str, float]:
    """Trial metrics from each seed's training record (None: the retriever does not train) and
    build seconds. Convergence is logged only when every seed's training was judged."""
    out = {"train_seconds": float(np.mean(seconds))}
    if not records or any(r is None for r in records):
        return out
    out.update({key: float(np.mean([r[key] for r in records])) for key in _MEANS})
    if all(r["converged"] is not None for r in records):
        out["converged"] = float(all(r["converged"] for r in records))
        for condition in ("plateau", "target_ia"):
            held = [r["conditions"][condition] for r in records if condition in r["conditions"]]
            if held:
                out[f"{condition}_reached"] = float(np.mean(held))
    reached = [r["ia1_reached"] for r in records if r["ia1_reached"] is not None]
    if reached:
        out["ia1_reached"] = float(np.mean(reached))
        out["ia1_target"] = float(max(r["ia1_target"] for r in records if r["ia1_reached"] is not None))
        # the share of seeds whose indexing stopped on an IA@1 plateau below the target
        out["ia1_plateau"] = float(
            np.mean([bool(r.get("ia1_plateau")) for r in records if r["ia1_reached"] is not None])
        )
    return out
