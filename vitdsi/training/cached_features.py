"""A borrowed encoder's fixed part gives an image the same output in every epoch: training
computes it once per image and reads it instead of the pixels, when no augmentation changes
the input or when the augmentation is a fixed bank of views (vitdsi.training.view_bank) made
once and computed once as well. The output is kept in the on-disk feature cache
(vitdsi.features.feature_cache), so the next trial or study on the same images reads it instead
of computing it again."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitdsi.errors import VitDSIError
from vitdsi.features.feature_cache import (
    CacheKey,
    FeatureCache,
    as_tensor,
    default_cache,
    fingerprint_array,
)
from vitdsi.log import get_logger
from vitdsi.training.augment import to_input
from vitdsi.training.flops import FlopMeter
from vitdsi.training.optim import autocast

log = get_logger(__name__)


class ImageSource(Protocol):
    """Images `precompute_features` takes made chunk by chunk instead of held as a uint8 tensor
    (a view bank's views, `vitdsi.training.view_bank.BankViews`)."""

    device: torch.device  # where the chunks are made
    views: str  # what the images are beyond `fingerprint` (the cache key's `views`)

    def __len__(self) -> int: ...

    def fingerprint(self) -> str:
        """The cache key's `images`: a fingerprint of the uint8 images the chunks are made from."""
        ...

    def inputs(self) -> Iterator[torch.Tensor]:
        """Model-input chunks (float [B, C, H, W] in [-1, 1]), in row order."""
        ...


def indexed_fixed_features(encoder, images: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The fixed part's output for uint8 `images` that were indexed (or trained on), read from the
    feature cache under the key indexing stored them by (computed and stored on a miss); None when
    the encoder has no fixed part. For the IA@K search of indexed images, never for a timed query,
    whose cost includes its encoder."""
    if not getattr(encoder, "cacheable", False):
        return None
    return precompute_features(encoder, [images.to(device)], hosts=[images])[0]


def trains_on_cached_features(encoder, views: str, view_bank: int = 0) -> bool:
    """Whether training reads a borrowed encoder's fixed-part output computed once per image: only
    that part is the same in every epoch, and only when training views are 'none' or are drawn
    from a fixed bank of `view_bank` views per image. A bank on an encoder without a fixed part is
    an error: nothing could be computed once."""
    cacheable = bool(getattr(encoder, "cacheable", False))
    if view_bank > 0 and not cacheable:
        raise VitDSIError(
            f"view_bank={view_bank} caches views through a borrowed encoder's fixed part, but this "
            "encoder has none (a ViT, or a borrowed one with every block trained); set view_bank to 0"
        )
    return cacheable and (views == "none" or view_bank > 0)


def precompute_features(
    encoder,
    image_sets: list[torch.Tensor | ImageSource | None],
    batch: int = 256,
    cache: FeatureCache | None = None,
    meter: FlopMeter | None = None,
    hosts: list[torch.Tensor | None] | None = None,
) -> list[torch.Tensor | None]:
    """Image sets (uint8 images on the training device, an `ImageSource`, or None) -> the output
    of a borrowed encoder's fixed part for each image (`BorrowedEncoder.precompute`), computed
    once, batch by batch, or read from `cache` (default: `default_cache()`, None when caching is
    off). A cached set stays the cache's memory map on the CPU (no copy; training only gathers
    rows of it) and is moved to another device once. `meter` is charged what computing them
    costs, whether or not the cache held them, so a trial's training FLOPs do not depend on what
    ran before it: the FLOPs of one image, counted, times the images; so are its extraction
    seconds (`meter.extraction`: recorded by the cache entry, or measured now). `hosts`, beside
    `image_sets`: the CPU copy of a tensor set that is on another device, where the caller still
    has it; the cache key hashes it, so the set is not copied back from the device only to be
    hashed (`host_fingerprint`)."""
    t0 = time.perf_counter()
    device = next((s.device for s in image_sets if s is not None), torch.device("cpu"))
    cache = cache if cache is not None else default_cache()
    spec = encoder.cache_spec() if cache is not None and hasattr(encoder, "cache_spec") else None
    hosts = hosts or [None] * len(image_sets)
    clock = meter.extraction if meter is not None else None
    out = []
    for images, host in zip(image_sets, hosts, strict=True):
        if images is not None and len(images) and meter is not None:
            first = next(_inputs(images, 1))[:1]
            meter.add(_flops_per_image(encoder, first, device) * len(images))
        if images is None:
            out.append(None)
        elif spec is None:
            started = time.perf_counter()
            out.append(_encode_all(encoder, images, batch, device))
            if clock is not None:
                clock.measured(time.perf_counter() - started)
        else:
            key = CacheKey(
                images=_fingerprint(images, host),
                encoder=spec[0],
                preprocessing=f"{spec[1]}; autocast on {device.type}",
                views="" if isinstance(images, torch.Tensor) else images.views,
            )
            blocks = functools.partial(_encode_numpy, encoder, images, batch, device)
            # the map itself on the CPU, or one copy on another device
            out.append(as_tensor(cache.get(key, blocks, len(images), clock)).to(device))
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


def host_fingerprint(images: torch.Tensor, host: torch.Tensor | None) -> str:
    """The cache key's `images` for uint8 `images` (on any device): the fingerprint of `host`,
    their copy on the CPU, when there is one, else of `images` (copied to the CPU when they are
    elsewhere; a `host` that is not on the CPU saves nothing and is not used). The same bytes
    give the same fingerprint either way."""
    if host is None or host.device.type != "cpu":
        return fingerprint_array(images.cpu().numpy())
    if host.shape != images.shape or host.dtype != images.dtype:
        raise VitDSIError(
            f"feature cache: the CPU copy given for images {tuple(images.shape)} {images.dtype} is "
            f"{tuple(host.shape)} {host.dtype}; pass the images' own copy"
        )
    return fingerprint_array(host.numpy())


def _fingerprint(images: torch.Tensor | ImageSource, host: torch.Tensor | None) -> str:
    if isinstance(images, torch.Tensor):
        return host_fingerprint(images, host)
    return images.fingerprint()


def _inputs(images: torch.Tensor | ImageSource, batch: int) -> Iterator[torch.Tensor]:
    """Model-input chunks of a set: `batch` uint8 images at a time, or the source's own chunks."""
    if isinstance(images, torch.Tensor):
        return (to_input(images[s : s + batch]) for s in range(0, len(images), batch))
    return images.inputs()


def _flops_per_image(encoder, image: torch.Tensor, device: torch.device) -> float:
    """FLOPs of the fixed part on one model-input image."""
    with FlopCounterMode(display=False) as counter, autocast(device):
        encoder.precompute(image)
    return float(counter.get_total_flops())


def _encode_all(
    encoder, images: torch.Tensor | ImageSource, batch: int, device: torch.device
) -> torch.Tensor:
    """The whole set's output in one tensor, filled batch by batch (no list of batches to join)."""
    out, filled = None, 0
    for block in _encode(encoder, images, batch, device):
        if out is None:
            out = block.new_empty((len(images), *block.shape[1:]))
        out[filled : filled + len(block)] = block
        filled += len(block)
    return out


def _encode_numpy(encoder, images, batch: int, device: torch.device) -> Iterator[np.ndarray]:
    return (b.cpu().numpy() for b in _encode(encoder, images, batch, device))


def _encode(
    encoder, images: torch.Tensor | ImageSource, batch: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """The fixed part's float32 output, at most `batch` images at a time."""
    with autocast(device):
        for chunk in _inputs(images, batch):
            for s in range(0, len(chunk), batch):
                yield encoder.precompute(chunk[s : s + batch]).float()
