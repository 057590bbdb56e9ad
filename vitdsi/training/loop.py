"""One training phase of epochs for the label-matched baselines (`classifier`, `dual-encoder`).

The caller supplies `batches()` (one epoch, from its seeded generator) and `step(batch)`
(mean loss, examples, examples right); optimiser, schedule, clipping and autocast are the
DSI trainer's (`vitdsi.training.optim`). Each epoch's log dict goes to `callback`, which may stop it;
the `monitor` (`vitdsi.training.monitor`) counts the steps' FLOPs, scores validation checkpoints and
may end the phase on a plateau, restoring its best weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vitdsi.divergence import check_loss
from vitdsi.log import get_logger, progress
from vitdsi.training.config import OptimConfig
from vitdsi.training.monitor import TrainingMonitor
from vitdsi.training.optim import autocast, grad_scaler, lr_factor, make_optimizer, optimizer_step

log = get_logger(__name__)

# batch -> (mean loss (scalar tensor), examples in the batch, examples right (tensor or number))
StepFn = Callable[[Any], tuple[torch.Tensor, int, Any]]


@dataclass
class LoopConfig(OptimConfig):
    epochs: int = 30  # passes over the training examples


def train_epochs(
    model: torch.nn.Module,
    cfg: LoopConfig,
    phase: str,  # name in the logs, e.g. 'classify' or 'contrastive'
    batches: Callable[[], list[Any]],  # one epoch of batches, in order
    step: StepFn,
    *,
    steps_per_epoch: int,  # len(batches()), known ahead for the lr schedule
    device: torch.device,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    monitor: TrainingMonitor | None = None,
) -> list[dict[str, Any]]:
    """Train `model` for at most `cfg.epochs` epochs; returns the per-epoch logs."""
    history: list[dict[str, Any]] = []
    monitor = monitor or TrainingMonitor.passive()
    monitor.start_phase(phase, cfg.epochs, patience=True)
    if cfg.epochs < 1:
        return history
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = max(1, int(cfg.warmup_frac * total))
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, cfg.min_lr_frac))
    scaler = grad_scaler(device)
    model.train()
    n_step = 0
    with progress() as bar:
        task = bar.add_task(phase, total=cfg.epochs)
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            sums = torch.zeros(3, dtype=torch.float64)  # loss * n, n, right
            for batch in batches():
                size = batch_size(batch)
                with monitor.meter.step((phase, size), size):
                    with autocast(device, cfg.precision):
                        loss, n, right = step(batch)
                    opt.zero_grad(set_to_none=True)
                    optimizer_step(loss, opt, scaler, model, cfg.grad_clip)
                sched.step()
                n_step += 1
                check_loss(loss.item(), phase=phase, epoch=epoch, step=n_step, lr=cfg.lr)
                sums += torch.tensor([loss.item() * n, n, float(right)], dtype=torch.float64)
            seconds = time.perf_counter() - t0
            n = max(1.0, sums[1].item())
            entry = {
                "phase": phase,
                "epoch": epoch,
                "step": n_step,
                "lr": sched.get_last_lr()[0],
                "loss": sums[0].item() / n,
                "train_accuracy": sums[2].item() / n,
                "seconds": seconds,
                "images_per_s": sums[1].item() / seconds,
            }
            history.append(entry)
            bar.update(task, advance=1, description=f"{phase} loss {entry['loss']:.3f}")
            plateau = monitor.end_epoch()
            if callback is not None and callback(entry):
                log.info("%s: stopped by callback after epoch %d", phase, epoch)
                break
            if plateau:
                log.info("%s: validation plateau after epoch %d", phase, epoch)
                break
    monitor.end_phase()
    model.eval()
    return history


def batch_size(batch: Any) -> int:
    """Examples in a batch as `batches()` gives it: a tensor of rows, or a tuple whose first tensor is."""
    return len(batch[0]) if isinstance(batch, tuple | list) else len(batch)
