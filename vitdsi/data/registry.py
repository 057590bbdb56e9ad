"""The dataset registry: names -> loaders, listed with their parameters, loaded by name.

An unknown name lists the known ones; an unknown parameter lists the allowed ones; a
`limit` larger than the source is a clear error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitdsi.data.imageset import ImageSet
from vitdsi.data.sampling import stratified_sample
from vitdsi.data.sources.coco import load_coco
from vitdsi.data.sources.digits import load_digits
from vitdsi.data.sources.fashion_mnist import load_fashion_mnist
from vitdsi.data.sources.imagefolder import load_imagefolder
from vitdsi.data.sources.mosaic import load_coco_mosaic
from vitdsi.errors import VitDSIError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    loader: Callable[..., ImageSet]
    description: str

    def params(self) -> dict[str, Any]:
        """Loader parameters and their defaults (plus `limit` and `seed`, handled here)."""
        sig = inspect.signature(self.loader).parameters
        out = {n: (None if p.default is p.empty else p.default) for n, p in sig.items()}
        out.setdefault("limit", None)
        out.setdefault("seed", 0)
        return out


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("digits", load_digits, "scikit-learn's bundled 8x8 digits, 1,797 images, 10 classes (always present)"),
        DatasetSpec("fashion-mnist", load_fashion_mnist, "Fashion-MNIST, 70,000 images, 10 classes (Debian dataset-fashion-mnist)"),
        DatasetSpec("imagefolder", load_imagefolder, "root/class_x/*.jpg tree, e.g. an ImageNet subset (paper 2.1)"),
        DatasetSpec("coco", load_coco, "COCO instances json + images, multi-label relevance"),
        DatasetSpec("coco-mosaic", load_coco_mosaic, "generated mosaics of digits / Fashion-MNIST tiles as real COCO files"),
    ]
}


def list_datasets() -> list[DatasetSpec]:
    return list(DATASETS.values())


def load_dataset(name: str, **params: Any) -> ImageSet:
    """Load dataset `name`. `limit` keeps at most that many images (class-stratified,
    seeded by `seed`) for sources that do not choose before decoding."""
    if name not in DATASETS:
        raise VitDSIError(f"unknown dataset '{name}'; known datasets: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    allowed = spec.params()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise VitDSIError(f"dataset '{name}': unknown parameter(s) {unknown}; allowed: {sorted(allowed)}")
    own = set(inspect.signature(spec.loader).parameters)
    limit = params.pop("limit", None) if "limit" not in own else None
    seed = params.pop("seed", 0) if "seed" not in own else params.get("seed", 0)
    images = spec.loader(**params)
    if limit is not None:
        if limit > len(images):
            raise VitDSIError(f"dataset '{name}' has {len(images)} images but limit={limit} was asked; use at most {len(images)}")
        images = images.subset(np.sort(stratified_sample(images.primary_labels(), limit, seed)))
    return images
