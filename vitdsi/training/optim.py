"""AdamW with a warm-up / cosine schedule, gradient clipping and the autocast of a precision
setting (`OptimConfig`): the optimisation every trainer here shares."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, total: int, warmup: int, min_frac: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_frac` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without decay on norms and biases; the fused kernel (one call for every tensor,
    on the CPU and CUDA) instead of a Python-side loop over parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8, fused=True)


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context of `precision` (OptimConfig.precision) on `device`: 'auto' is mixed
    precision on CUDA (bf16 where supported, else fp16) and float32 on the CPU."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if device.type == "cuda":
        dtype = torch.bfloat16 if precision == "bf16" or torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def grad_scaler(device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler where training runs in fp16 (CUDA without bf16), else None."""
    return (
        torch.amp.GradScaler("cuda") if device.type == "cuda" and not torch.cuda.is_bf16_supported() else None
    )


def optimizer_step(
    loss: torch.Tensor,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    model: torch.nn.Module,
    grad_clip: float,
) -> None:
    """Backpropagate the scalar `loss`, clip the global gradient norm to `grad_clip` and step `opt`
    (through `scaler` when there is one); gradients must have been zeroed before the forward pass."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
