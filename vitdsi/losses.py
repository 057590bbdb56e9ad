"""The symmetric in-batch InfoNCE loss of the dual encoders (CLIP, Radford et al. 2021; the
dual-encoder baseline of Tay et al. 2022): row i of one side should match row i of the other."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_info_nce(
    a: torch.Tensor, b: torch.Tensor, positive: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm embeddings a [B, E] (anchors: queries, captions) and b [B, E] (their positive
    corpus images), `positive` [B] the corpus position of each row's image -> (mean of the two
    directions' cross-entropy, number of anchors whose own positive scores highest). Two rows
    with the same corpus image are not each other's negatives."""
    n = len(a)
    with torch.autocast(a.device.type, enabled=False):  # similarities / temperature in float32
        logits = a.float() @ b.float().T / temperature  # [B, B]: anchor i vs positive j
    same = positive[:, None] == positive[None, :]
    logits = logits.masked_fill(same & ~torch.eye(n, dtype=torch.bool, device=same.device), float("-inf"))
    target = torch.arange(n, device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return loss, (logits.argmax(1) == target).sum()
