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
from vitdsi.data.sources import coco, fashion_mnist, imagefolder
from vitdsi.data.sources.coco import load_coco
from vitdsi.data.sources.digits import load_digits
from vitdsi.data.sources.fashion_mnist import load_fashion_mnist
from vitdsi.data.sources.imagefolder import load_imagefolder
from vitdsi.data.sources.mosaic import load_coco_mosaic
from vitdsi.errors import DatasetNotFoundError, VitDSIError


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
        DatasetSpec(
            "digits",
            load_digits,
            "scikit-learn's bundled 8x8 digits, 1,797 images, 10 classes (always present)",
        ),
        DatasetSpec(
            "fashion-mnist",
            load_fashion_mnist,
            "Fashion-MNIST, 70,000 images, 10 classes (Debian dataset-fashion-mnist)",
        ),
        DatasetSpec(
            "imagefolder", load_imagefolder, "root/class_x/*.jpg tree, e.g. an ImageNet subset (paper 2.1)"
        ),
        DatasetSpec("coco", load_coco, "COCO instances json + images, multi-label relevance"),
        DatasetSpec(
            "coco-mosaic",
            load_coco_mosaic,
            "generated mosaics of digits / Fashion-MNIST tiles as real COCO files",
        ),
    ]
}


@dataclass(frozen=True)
class DataProbe:
    """What a cheap look at a source finds, without decoding it (`probe_dataset`)."""

    n_images: int | None  # images available (an upper bound where files are filtered later); None: unknown
    native_size: int | None  # typical side of the source images in pixels; None: unknown
    where: str | None = None  # the folder it was found in
    file_source: bool = False  # images come from user files (sizes vary, upscaling is worth a warning)


def probe_dataset(name: str, **params: Any) -> DataProbe:
    """Check that dataset `name` is there and count its images, without loading it: a missing
    root or folder is the DatasetNotFoundError the loader would raise (never a download)."""
    if name not in DATASETS:
        raise VitDSIError(f"unknown dataset '{name}'; known datasets: {', '.join(DATASETS)}")
    params = {**{k: v for k, v in DATASETS[name].params().items() if v is not None}, **params}
    if name == "digits":
        return DataProbe(1797, 8)
    if name == "fashion-mnist":
        try:
            folder = fashion_mnist.locate(params.get("root"), download=False)
        except DatasetNotFoundError:
            if params.get("root") is None and params.get("download", True):
                return DataProbe(None, 28)  # the run may still download it
            raise
        return DataProbe(fashion_mnist.count(folder), 28, str(folder))
    if name == "imagefolder":
        n, native, where = imagefolder.probe(params.get("root"), params.get("classes"))
        return DataProbe(n, native, where, file_source=True)
    if name == "coco":
        n, native, where = coco.probe(params.get("root"), params.get("annotations"), params.get("images"))
        return DataProbe(n, native, where, file_source=True)
    if name == "coco-mosaic":
        return DataProbe(
            int(params.get("n_images", 500)), int(params.get("grid", 2)) * int(params.get("tile_size", 32))
        )
    return DataProbe(None, None)


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
            raise VitDSIError(
                f"dataset '{name}' has {len(images)} images but limit={limit} was asked; use at most "
                f"{len(images)}"
            )
        images = images.subset(np.sort(stratified_sample(images.primary_labels(), limit, seed)))
    return images
