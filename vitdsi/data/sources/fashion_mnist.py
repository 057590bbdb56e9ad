"""`fashion-mnist`: Zalando's Fashion-MNIST, 70,000 28x28 grey images in 10 classes.

Look-up: a root you give must exist and is the only place looked at; without one,
/usr/share/datasets/fashion-mnist (Debian package `dataset-fashion-mnist`), then a cache
folder with a torchvision download where a network exists. The idx
files are parsed with numpy in one pass (no per-image loop), train then test, so that
source id "train/i" / "test/i" is stable.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.data.prep import prepare_batch
from vitdsi.errors import DatasetNotFoundError, VitDSIError
from vitdsi.log import get_logger

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

log = get_logger(__name__)


def _read(path: Path, n: int = -1) -> bytes:
    """The bytes of an idx file (the first `n`), gunzipped when it ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error) as e:
        raise _corrupt(path, f"{type(e).__name__}: {e}") from None


def _corrupt(path: Path, why: str) -> VitDSIError:
    return VitDSIError(
        f"fashion-mnist file {path} is corrupt or truncated ({why}); delete it and put the file "
        "from https://github.com/zalandoresearch/fashion-mnist in its place"
    )


def _read_idx(path: Path) -> np.ndarray:
    raw = _read(path)
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] not in (1, 3) or len(raw) < 4 + 4 * raw[3]:
        raise _corrupt(path, "not an idx file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + math.prod(shape)
    if len(raw) != expected:
        raise _corrupt(path, f"{len(raw):,} bytes where its header promises {expected:,}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (
        root / f"{stem}.gz",
        root / stem,
        root / "FashionMNIST" / "raw" / f"{stem}.gz",
        root / "FashionMNIST" / "raw" / stem,
    ):
        if candidate.exists():
            return candidate
    return None


def _has_all(root: Path) -> bool:
    return all(_find(root, stem) for pair in FILES.values() for stem in pair)


def _try_download(root: Path) -> bool:
    try:
        from torchvision.datasets import FashionMNIST  # heavy; only to download

        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
        return _has_all(root)
    except Exception as e:  # no network, or a mirror down: fall through to the clear error
        log.debug("torchvision download failed: %s", e)
        return False


def locate(root: str | Path | None = None, download: bool = True) -> Path:
    """The directory holding the four idx files, or a DatasetNotFoundError saying where we looked.

    A `root` you give must exist and is the only place looked at (a download, where a network
    exists, goes into it); only without a root do the Debian folder and the cache apply."""
    if root is not None:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"fashion-mnist root {folder} does not exist{' (it is a file)' if folder.exists() else ''}; "
                f"point root at the folder with the four idx files, or leave root unset to use {DEBIAN_ROOT}"
            )
        if _has_all(folder) or (download and _try_download(folder)):
            return folder
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found in the given root {folder}: it lacks the train/t10k idx files (.gz or "
            "raw)"
            + ("; a torchvision download into it failed (no network?)" if download else "")
            + ". Put the four files from https://github.com/zalandoresearch/fashion-mnist there, or leave "
            f"root unset to use {DEBIAN_ROOT} (`apt-get install dataset-fashion-mnist`)."
        )
    if _has_all(DEBIAN_ROOT):
        return DEBIAN_ROOT
    cache = Path.home() / ".cache" / "vitdsi" / "fashion-mnist"
    if _has_all(cache) or (download and _try_download(cache)):
        return cache
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found. Looked for train/t10k idx files (.gz or raw) in: {DEBIAN_ROOT}, {cache}"
        + (f"; a torchvision download into {cache} failed (no network?)" if download else "")
        + ". Get it with `apt-get install dataset-fashion-mnist` (Debian), or put the four files from "
        "https://github.com/zalandoresearch/fashion-mnist in a folder and pass it as root."
    )


def count(folder: Path) -> int:
    """Images in the folder's two label files, from their idx headers (no decoding)."""
    total = 0
    for _, lab_stem in FILES.values():
        path = _find(folder, lab_stem)
        head = _read(path, 8)
        if len(head) < 8:
            raise _corrupt(path, f"{len(head)} bytes, shorter than an idx header")
        total += int.from_bytes(head[4:8], "big")
    return total


def load_fashion_mnist(
    *, root: str | None = None, size: int = 32, fit: str = "resize", download: bool = True
) -> ImageSet:
    folder = locate(root, download=download)
    images, labels, ids = [], [], []
    for part, (img_stem, lab_stem) in FILES.items():
        imgs = _read_idx(_find(folder, img_stem))
        labs = _read_idx(_find(folder, lab_stem))
        if imgs.ndim != 3 or labs.ndim != 1 or len(imgs) != len(labs):
            raise VitDSIError(
                f"fashion-mnist files {_find(folder, img_stem)} and {_find(folder, lab_stem)} do not match "
                f"({imgs.shape[0]} images of shape {imgs.shape[1:]}, {labs.shape} labels); one is corrupt"
            )
        images.append(imgs)
        labels.append(labs)
        ids.append(np.char.add(f"{part}/", np.arange(len(labs)).astype(str)))
    return ImageSet(
        images=prepare_batch(np.concatenate(images), size, fit=fit),
        labels=torch.from_numpy(np.concatenate(labels).astype(np.int64)),
        source_ids=np.concatenate(ids),
        class_names=CLASS_NAMES,
        name="fashion-mnist",
        meta={"root": str(folder), "size": size, "fit": fit},
    )
