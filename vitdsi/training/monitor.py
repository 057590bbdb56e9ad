"""Validation checkpoints, early stopping on a plateau, and what a training run cost.

A trained retriever hands its trainer a `TrainingMonitor` built from its `MonitorConfig` build
parameters, the validation queries the caller gave (`ValidationSet`; never test queries) and a
function that ranks queries with the model as it is now (its real search). After every epoch
the monitor may score the model on the validation queries:

- at geometric checkpoints (epochs 1, 2, 4, 8, ... counted over all phases, and the last epoch
  of each phase), which give the learning curve: validation quality against training FLOPs;
- every `val_every` epochs of the phase that decides retrieval quality (the patience phase),
  where `patience` evaluations without an improvement of more than `min_delta` end the phase
  early; the weights of its best evaluation (a CPU copy) are restored when it ends.

A run has converged when every condition it was judged on holds: the patience phase reached its
plateau before its epoch cap, and a DSI's indexing phase reached its IA@1 target.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from vitdsi.data.relevance import Relevance, SplitRelevance
from vitdsi.errors import VitDSIError
from vitdsi.metrics import evaluate, parse_metric
from vitdsi.training.flops import FlopMeter

RankFn = Callable[[Any, int], torch.Tensor]  # (queries, k) -> int64 corpus positions [n, k]
NO_CUTOFF_K = 100  # results ranked for a metric without a cutoff (MRR), as the harness scores it


@dataclass
class MonitorConfig:
    """Early stopping of a trained retriever (build parameters of `dsi-vit`, `classifier`,
    `dual-encoder`); it needs validation queries, which the harness gives."""

    patience: int = 5  # validation evaluations without improvement that end the phase (0 = train to the cap)
    val_every: int = 2  # score the validation queries every this many epochs of the patience phase
    min_delta: float = 0.0  # an evaluation improves on the best only by more than this

    def __post_init__(self) -> None:
        if self.patience < 0 or self.val_every < 1 or self.min_delta < 0:
            raise VitDSIError(
                f"need patience >= 0, val_every >= 1 and min_delta >= 0, got patience={self.patience}, "
                f"val_every={self.val_every}, min_delta={self.min_delta}"
            )


@dataclass(frozen=True)
class ValidationSet:
    """Validation queries, their relevance to the corpus and the ranked metric that model choice
    reads (higher is better, e.g. 'MAP@10')."""

    queries: Any  # uint8 images [n, 3, H, W], or captions (a list of str)
    relevance: Relevance | SplitRelevance
    metric: str

    def __post_init__(self) -> None:
        m = parse_metric(self.metric)
        if m.is_indexing or m.family.name == "FPR":
            raise VitDSIError(
                f"validation metric must be a ranked, higher-is-better metric of the queries, "
                f"got '{self.metric}'"
            )

    def score(self, rank: RankFn) -> float:
        """The metric of the ranking `rank` gives the validation queries."""
        k = min(parse_metric(self.metric).k or NO_CUTOFF_K, self.relevance.corpus_size)
        ids = rank(self.queries, k)
        return evaluate(ids, self.relevance, [self.metric])[parse_metric(self.metric).name].mean


@dataclass(frozen=True)
class Checkpoint:
    epoch: int  # epochs so far over all phases
    phase: str
    value: float  # the validation metric
    flops: float  # training FLOPs so far
    examples: int  # training examples so far
    seconds: float  # wall time since training began (evaluations included)


class TrainingMonitor:
    """Checkpoints, the patience rule and the training cost of one retriever's training."""

    def __init__(
        self,
        cfg: MonitorConfig,
        validation: ValidationSet | None = None,
        rank: RankFn | None = None,
        model: torch.nn.Module | None = None,
        meter: FlopMeter | None = None,
    ) -> None:
        self.cfg, self.validation, self.rank, self.model = cfg, validation, rank, model
        self.meter = meter or FlopMeter()
        self.checkpoints: list[Checkpoint] = []
        self.epoch = 0  # over all phases
        self.epoch_cap = 0  # the sum of the phases' caps
        self.conditions: dict[str, bool] = {}  # what convergence was judged on -> whether it held
        self.ia1_reached: float | None = None  # a DSI's IA@1 where its indexing phase stopped
        self.ia1_target: float | None = None  # the IA@1 its indexing phase aimed at
        self.ia1_plateau = False  # its indexing stopped on an IA@1 plateau below the target
        self._t0 = time.perf_counter()
        self._phase, self._cap, self._phase_epoch, self._patience_on = "", 0, 0, False
        self._best, self._best_state, self._bad, self._last_eval = float("-inf"), None, 0, -1

    @classmethod
    def passive(cls, meter: FlopMeter | None = None) -> TrainingMonitor:
        """A monitor that only counts cost (no validation queries: every phase runs to its cap)."""
        return cls(MonitorConfig(patience=0), meter=meter)

    @property
    def evaluates(self) -> bool:
        return self.validation is not None and self.rank is not None and self.model is not None

    def start_phase(self, phase: str, cap: int, *, patience: bool) -> None:
        """A phase of at most `cap` epochs begins; `patience`: the plateau rule applies to it."""
        self._phase, self._cap, self._phase_epoch = phase, cap, 0
        self._patience_on = patience and self.cfg.patience > 0 and self.evaluates
        self._best, self._best_state, self._bad = float("-inf"), None, 0
        self.epoch_cap += cap
        if patience and cap > 0 and self.evaluates:
            self.conditions["plateau"] = False  # until the plateau is reached

    def end_epoch(self) -> bool:
        """After each epoch of the phase: evaluate when due; True when the plateau ends the phase."""
        self.epoch += 1
        self._phase_epoch += 1
        due = (
            _geometric(self.epoch)
            or self._phase_epoch == self._cap
            or (self._patience_on and self._phase_epoch % self.cfg.val_every == 0)
        )
        if not (due and self.evaluates):
            return False
        value = self._evaluate()
        if not self._patience_on:
            return False
        if value > self._best + self.cfg.min_delta or self._best_state is None:
            self._best, self._bad = max(value, self._best), 0
            self._best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
            return False
        self._bad += 1
        if self._bad >= self.cfg.patience:
            self.conditions["plateau"] = True
            return True
        return False

    def end_phase(self) -> None:
        """The phase ended (cap, plateau, or a target): its last epoch goes on the curve, and the
        patience phase's best weights are restored."""
        if self.evaluates and self._phase_epoch and self._last_eval != self.epoch:
            self._evaluate()
        if self._patience_on and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        self._patience_on, self._best_state = False, None

    def index_target(self, ia1: float | None, target: float) -> None:
        """A DSI's indexing phase stopped at IA@1 `ia1` (None: not measured) against `target`."""
        self.ia1_reached, self.ia1_target = ia1, target
        self.conditions["target_ia"] = ia1 is not None and ia1 >= target

    def record(self) -> dict[str, Any]:
        """What the training cost (with the frozen features' extraction seconds,
        `ExtractionTime.record`) and whether it converged (None: nothing to judge it on)."""
        return {
            "converged": all(self.conditions.values()) if self.conditions else None,
            "conditions": dict(self.conditions),
            "ia1_reached": self.ia1_reached,
            "ia1_target": self.ia1_target,
            "ia1_plateau": self.ia1_plateau,
            "epochs_used": self.epoch,
            "epoch_cap": self.epoch_cap,
            "train_flops": self.meter.flops,
            "train_examples": self.meter.examples,
            **self.meter.extraction.record(),
            "metric": self.validation.metric if self.validation is not None else None,
            "checkpoints": [asdict(c) for c in self.checkpoints],
        }

    def _evaluate(self) -> float:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                value = self.validation.score(self.rank)
        finally:
            self.model.train(was_training)
        self._last_eval = self.epoch
        self.checkpoints.append(
            Checkpoint(
                self.epoch,
                self._phase,
                float(value),
                self.meter.flops,
                self.meter.examples,
                time.perf_counter() - self._t0,
            )
        )
        return float(value)


def _geometric(epoch: int) -> bool:
    """Epochs 1, 2, 4, 8, ...: the learning curve's checkpoints."""
    return epoch & (epoch - 1) == 0
