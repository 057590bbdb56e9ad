"""A borrowed encoder's fixed part gives an image the same output in every epoch: without
augmentation, training computes it once per image and reads it instead of the pixels."""

from __future__ import annotations

import time

import torch

from vitdsi.log import get_logger
from vitdsi.training.augment import to_input
from vitdsi.training.optim import autocast

log = get_logger(__name__)


def trains_on_cached_features(encoder, augment: bool) -> bool:
    """Whether training reads a borrowed encoder's fixed-part output computed once per image:
    only that part is the same in every epoch, and only when no augmentation changes the input."""
    return bool(getattr(encoder, "cacheable", False)) and not augment


def precompute_features(encoder, image_sets: list[torch.Tensor | None], batch: int = 256) -> list[torch.Tensor | None]:
    """uint8 images (each set on the training device, or None) -> the output of a borrowed encoder's
    fixed part for each image (`BorrowedEncoder.precompute`), computed once, batch by batch."""
    t0 = time.perf_counter()
    device = next((s.device for s in image_sets if s is not None), torch.device("cpu"))
    out = []
    with autocast(device):
        for images in image_sets:
            out.append(None if images is None else torch.cat(
                [encoder.precompute(to_input(images[s : s + batch])).float() for s in range(0, len(images), batch)]
            ))
    kept = [o for o in out if o is not None]
    n = sum(len(o) for o in kept)
    mb = sum(o.numel() * o.element_size() for o in kept) / 2**20
    log.info("frozen encoder: features of %d images computed once in %.1f s (%.0f MB on %s)",
             n, time.perf_counter() - t0, mb, device)
    return out
