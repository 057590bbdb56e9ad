"""Dropout with cheap random masks on the CPU, for the ViT-DSI and its baselines' models.

`torch.nn.Dropout` draws its Bernoulli mask with `bernoulli_`, the largest single cost of a
ViT-DSI training step on a CPU (18% of it at 32 px / patch 4 with bf16 autocast, one thread;
scripts/bench_training.py). Here the mask is 15-bit random integers compared with a
threshold, about three times cheaper to draw: an element is kept with probability
round((1 - p) * 2^15) / 2^15, within 2^-16 of 1 - p, and kept elements are scaled by the
inverse of that probability, so the expectation is unchanged (inverted dropout, as
`nn.Dropout`). The masks come from torch's default generator, which `torch.manual_seed`
seeds as before; the stream differs from `nn.Dropout`'s. Off the CPU, where the fused
dropout kernel is already cheap, it is `F.dropout`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

RANDOM_LEVELS = 1 << 15  # an int16 tensor's random_() draws uniformly from [0, 2^15)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each element of `x` with probability p (to within 2^-16 on the CPU) and scale the
    rest by the inverse of the keep probability; `x` itself when not training or p is 0."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    keep = round((1.0 - p) * RANDOM_LEVELS)
    if keep < 1:  # p within 2^-16 of 1: nothing is kept
        return x * 0.0
    mask = torch.empty(x.shape, dtype=torch.int16, device=x.device).random_() < keep
    # the scale goes into the mask, outside autograd: one product with x forward and one backward;
    # a mask element is 0 or 1, so x * (m * s) rounds exactly as (x * m) * s
    return x * mask.to(x.dtype).mul_(RANDOM_LEVELS / keep)


class Dropout(nn.Module):
    """`nn.Dropout` with the cheap CPU masks of `dropout`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
