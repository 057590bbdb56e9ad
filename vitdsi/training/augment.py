"""Model input from uint8 images, and the seeded, vectorised augmentations of training batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float in [-1, 1], the model's input."""
    return images.float().mul_(2.0 / 255.0).sub_(1.0)


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Shift each image of a float batch by its own random offset in [-max_shift, max_shift]^2
    (edges replicated), vectorised with one gather."""
    if max_shift < 1:
        return x
    b, c, h, w = x.shape
    off = torch.randint(0, 2 * max_shift + 1, (2, b), generator=gen).to(x.device)
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    rows = (torch.arange(h, device=x.device)[None, :] + off[0][:, None])[:, None, :, None]  # [B, 1, H, 1]
    cols = (torch.arange(w, device=x.device)[None, :] + off[1][:, None])[:, None, None, :]  # [B, 1, 1, W]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(-1), x)


def random_jitter(x: torch.Tensor, gen: torch.Generator, strength: float) -> torch.Tensor:
    """Per-image brightness and contrast jitter of a float batch in [-1, 1]: pixels are scaled
    about the image mean by a factor in [1 - strength, 1 + strength] and shifted by an offset in
    [-strength, strength] (in units of half the input range), then clamped; vectorised."""
    if strength <= 0:
        return x
    b = x.shape[0]
    # [2, B, 1, 1, 1]
    u = torch.rand(2, b, generator=gen).to(x.device, x.dtype)[:, :, None, None, None] * 2 - 1
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * (1 + strength * u[0]) + mean + strength * u[1]).clamp_(-1.0, 1.0)
