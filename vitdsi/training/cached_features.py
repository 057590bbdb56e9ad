"""A borrowed encoder's fixed part gives an image the same output in every epoch: without
augmentation, training computes it once per image and reads it instead of the pixels. The
output is kept in the on-disk feature cache (vitdsi.features.feature_cache), so the next
trial or study on the same images reads it instead of computing it again."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitdsi.features.feature_cache import CacheKey, FeatureCache, default_cache, fingerprint_array
from vitdsi.log import get_logger
from vitdsi.training.augment import to_input
from vitdsi.training.flops import FlopMeter
from vitdsi.training.optim import autocast

log = get_logger(__name__)


def trains_on_cached_features(encoder, augment: bool) -> bool:
    """Whether training reads a borrowed encoder's fixed-part output computed once per image:
    only that part is the same in every epoch, and only when no augmentation changes the input."""
    return bool(getattr(encoder, "cacheable", False)) and not augment


def precompute_features(
    encoder,
    image_sets: list[torch.Tensor | None],
    batch: int = 256,
    cache: FeatureCache | None = None,
    meter: FlopMeter | None = None,
) -> list[torch.Tensor | None]:
    """uint8 images (each set on the training device, or None) -> the output of a borrowed encoder's
    fixed part for each image (`BorrowedEncoder.precompute`), computed once, batch by batch, or
    read from `cache` (default: `default_cache()`, None when caching is off). `meter` is charged
    what computing them costs, whether or not the cache held them, so a trial's training FLOPs
    do not depend on what ran before it: the FLOPs of one image, counted, times the images."""
    t0 = time.perf_counter()
    device = next((s.device for s in image_sets if s is not None), torch.device("cpu"))
    cache = cache if cache is not None else default_cache()
    spec = encoder.cache_spec() if cache is not None and hasattr(encoder, "cache_spec") else None
    out = []
    for images in image_sets:
        if images is not None and len(images) and meter is not None:
            meter.add(_flops_per_image(encoder, images[:1], device) * len(images))
        if images is None:
            out.append(None)
        elif spec is None:
            out.append(torch.cat(list(_encode(encoder, images, batch, device))))
        else:
            key = CacheKey(
                images=fingerprint_array(images.cpu().numpy()),
                encoder=spec[0],
                preprocessing=f"{spec[1]}; autocast on {device.type}",
            )
            blocks = functools.partial(_encode_numpy, encoder, images, batch, device)
            out.append(torch.from_numpy(np.array(cache.get(key, blocks, len(images)))).to(device))
    kept = [o for o in out if o is not None]
    n = sum(len(o) for o in kept)
    mb = sum(o.numel() * o.element_size() for o in kept) / 2**20
    log.info(
        "frozen encoder: features of %d images %s in %.1f s (%.0f MB on %s)",
        n,
        "from the feature cache or computed into it" if spec else "computed once",
        time.perf_counter() - t0,
        mb,
        device,
    )
    return out


def _flops_per_image(encoder, image: torch.Tensor, device: torch.device) -> float:
    with FlopCounterMode(display=False) as counter, autocast(device):
        encoder.precompute(to_input(image))
    return float(counter.get_total_flops())


def _encode_numpy(encoder, images: torch.Tensor, batch: int, device: torch.device) -> Iterator[np.ndarray]:
    return (b.cpu().numpy() for b in _encode(encoder, images, batch, device))


def _encode(encoder, images: torch.Tensor, batch: int, device: torch.device) -> Iterator[torch.Tensor]:
    """The fixed part's float32 output, one batch of images at a time."""
    with autocast(device):
        for s in range(0, len(images), batch):
            yield encoder.precompute(to_input(images[s : s + batch])).float()
