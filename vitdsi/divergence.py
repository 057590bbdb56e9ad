"""A training loss that is NaN or infinite stops training with a named error: the weights are
garbage from then on, and a model trained on would be scored at chance as if it had worked."""

from __future__ import annotations

import math

from vitdsi.errors import VitDSIError


class TrainingDivergedError(VitDSIError):
    """The training loss became NaN or infinite; the message names where and the learning rate."""


def check_loss(loss: float, *, phase: str, epoch: int, step: int, lr: float) -> None:
    """Raise `TrainingDivergedError` when `loss` (one step's, summed or mean) is not finite."""
    if not math.isfinite(loss):
        raise TrainingDivergedError(
            f"{phase}: training loss became {loss} at epoch {epoch} (step {step}): lower lr (now {lr})"
        )
