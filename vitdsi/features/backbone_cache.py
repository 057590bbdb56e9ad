"""A pretrained backbone's features of the images a retriever indexes, through the feature cache.

The `embedding` retriever's backbone (EfficientNet-Lite0 or a torchvision model at 224 px) is
frozen: the same images give the same features in every trial and study that indexes them.
`index_features` keeps them in the on-disk feature cache (vitdsi.features.feature_cache), keyed
by the images' bytes and `Backbone.cache_spec` (name, pooled width, weights hash, resize,
normalisation, device), and computes them only on a miss, streamed batch by batch into the
entry. Queries are embedded by `batch_features` alone: their cost is what a search is timed on.
The extraction's seconds go to the caller's `ExtractionTime` (vitdsi.features.extraction): the
entry's recorded build seconds on a hit, measured on a miss or without a cache.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator

import numpy as np
import torch

from vitdsi.features.backbones import Backbone
from vitdsi.features.extraction import ExtractionTime
from vitdsi.features.feature_cache import CacheKey, FeatureCache, as_tensor, fingerprint_array
from vitdsi.log import progress


def batch_features(net: Backbone, images: torch.Tensor, batch: int, what: str) -> Iterator[torch.Tensor]:
    """The backbone's float32 features of uint8 `images`, `batch` images at a time, on its device
    (only one batch is resized to the input size at a time)."""
    with progress() as bar:
        task = bar.add_task(f"{net.name} features: {what}", total=len(images))
        for s in range(0, len(images), batch):
            with torch.inference_mode():
                block = net(images[s : s + batch])
            bar.update(task, advance=len(block))
            yield block


def index_features(
    net: Backbone,
    images: torch.Tensor,
    batch: int,
    what: str,
    cache: FeatureCache | None,
    clock: ExtractionTime | None = None,
) -> torch.Tensor:
    """float32 [n, D] features of uint8 `images` to index: read from `cache` (its read-only memory
    map, on the CPU), computed into it first on a miss; computed on the backbone's device when
    `cache` is None (caching off) or the backbone is pixels (nothing to save). `clock` is given
    the extraction's seconds (recorded or measured)."""
    if cache is None or net.model is None or not len(images):
        started = time.perf_counter()
        features = torch.cat(list(batch_features(net, images, batch, what)))
        if clock is not None:
            clock.measured(time.perf_counter() - started)
        return features
    encoder, preprocessing = net.cache_spec()
    # the images of an ImageSet are on the CPU: hashing them copies nothing
    key = CacheKey(
        images=fingerprint_array(images.cpu().numpy()), encoder=encoder, preprocessing=preprocessing
    )
    return as_tensor(
        cache.get(key, functools.partial(_numpy_blocks, net, images, batch, what), len(images), clock)
    )


def _numpy_blocks(net: Backbone, images: torch.Tensor, batch: int, what: str) -> Iterator[np.ndarray]:
    return (b.cpu().numpy() for b in batch_features(net, images, batch, what))
