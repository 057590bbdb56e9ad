"""`imagefolder`: any root/class_name/*.jpg tree, e.g. an ImageNet subset as the paper used.

Image headers are read first (no decoding) to keep near-square images only (aspect ratio
in [0.9, 1.1], paper section 2.1); the kept files are then centre-cropped and resized.
A file that cannot be read, whether its header is corrupt or its body truncated, is skipped
the same way: the load goes on without it and a warning counts the skipped files (as does
`ImageSet.meta["unreadable"]`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitdsi.data.imageset import ImageSet
from vitdsi.data.prep import ASPECT_RANGE, is_square_enough, too_large
from vitdsi.data.sampling import stratified_sample
from vitdsi.data.sources.files import IMAGE_SUFFIXES, decode_files_skipping
from vitdsi.errors import DatasetNotFoundError, VitDSIError
from vitdsi.log import get_logger

log = get_logger(__name__)


def _class_dirs(root: str | None, classes: list[str] | int | None) -> tuple[Path, list[Path]]:
    if root is None:
        raise VitDSIError("imagefolder needs root: a folder with one sub-folder of images per class")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetNotFoundError(
            f"imagefolder root {base} does not exist; point root at a folder of class sub-folders"
        )
    class_dirs = sorted(d for d in base.iterdir() if d.is_dir())
    if not class_dirs:
        raise DatasetNotFoundError(
            f"imagefolder root {base} has no class sub-folders (expected root/class_x/*.jpg)"
        )
    if isinstance(classes, int):
        class_dirs = class_dirs[:classes]
    elif classes is not None:
        by_name = {d.name: d for d in class_dirs}
        missing = [c for c in classes if c not in by_name]
        if missing:
            raise VitDSIError(
                f"imagefolder: classes {missing} not found under {base}; available: {sorted(by_name)[:20]}"
            )
        class_dirs = [by_name[c] for c in classes]
    return base, class_dirs


def probe(root: str | None, classes: list[str] | int | None = None) -> tuple[int, int | None, str]:
    """(image files, median shorter side of up to 32 of them, root) without decoding: the
    count is an upper bound (unreadable and non-square files are dropped when loading)."""
    base, class_dirs = _class_dirs(root, classes)
    files = [f for d in class_dirs for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DatasetNotFoundError(
            f"imagefolder: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {base}"
        )
    sides = []
    for f in files[:: max(1, len(files) // 32)][:32]:
        try:
            with Image.open(f) as im:  # header only
                sides.append(min(im.size))
        except Image.DecompressionBombError as e:
            raise too_large(f, e) from None
        except OSError:
            continue
    return len(files), (int(np.median(sides)) if sides else None), str(base)


def load_imagefolder(
    *,
    root: str | None = None,
    size: int = 160,
    classes: list[str] | int | None = None,
    limit: int | None = None,
    seed: int = 0,
    aspect_range: tuple[float, float] = ASPECT_RANGE,
) -> ImageSet:
    """`classes`: names to keep, or a number of classes (the first ones in sorted order);
    `limit`: at most this many images, class-stratified and seeded, chosen before decoding."""
    base, class_dirs = _class_dirs(root, classes)

    paths, labels, non_square, unreadable = [], [], 0, 0
    for label, d in enumerate(class_dirs):
        for f in sorted(d.rglob("*")):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:  # reads the header only
                    w, h = im.size
            except Image.DecompressionBombError as e:
                raise too_large(f, e) from None
            except OSError:  # corrupt header: skipped and counted, like a truncated body below
                unreadable += 1
                continue
            if is_square_enough(w, h, aspect_range):
                paths.append(f)
                labels.append(label)
            else:
                non_square += 1
    if not paths:
        raise DatasetNotFoundError(
            f"imagefolder: no readable near-square images (aspect in {list(aspect_range)}) under {base}"
        )
    labels_arr = np.asarray(labels, dtype=np.int64)
    if limit is not None:
        keep = np.sort(stratified_sample(labels_arr, limit, seed, what="imagefolder images"))
        paths = [paths[i] for i in keep]
        labels_arr = labels_arr[keep]
    images, failed = decode_files_skipping(paths, size, what="imagefolder")
    if failed:
        bad = [i for i, _ in failed]
        keep = np.setdiff1d(np.arange(len(paths)), bad)
        images, labels_arr = images[torch.from_numpy(keep)], labels_arr[keep]
        paths = [paths[i] for i in keep]
        unreadable += len(bad)
        if not paths:
            raise DatasetNotFoundError(f"imagefolder: none of the images under {base} could be decoded")
    empty = [d.name for label, d in enumerate(class_dirs) if not (labels_arr == label).any()]
    if empty:
        log.warning(
            "imagefolder %s: %d class folder(s) with no usable image, kept as classes no image has: %s",
            base,
            len(empty),
            ", ".join(empty[:10]) + (", ..." if len(empty) > 10 else ""),
        )
    _log_skipped(base, len(paths), len(class_dirs), non_square, unreadable, failed)
    return ImageSet(
        images=images,
        labels=torch.from_numpy(labels_arr),
        source_ids=np.array([str(p.relative_to(base)) for p in paths]),
        class_names=tuple(d.name for d in class_dirs),
        name="imagefolder",
        meta={"root": str(base), "size": size, "skipped": non_square + unreadable, "unreadable": unreadable},
    )


def _log_skipped(base: Path, n_images: int, n_classes: int, non_square: int, unreadable: int, failed) -> None:
    """Log the images kept and those skipped (non-square, unreadable)."""
    if unreadable:
        log.warning(
            "imagefolder %s: skipped %d unreadable image file(s) (corrupt or truncated)%s",
            base,
            unreadable,
            f", e.g. {failed[0][1]}" if failed else "",
        )
    log.info(
        "imagefolder %s: %d images in %d classes (%d skipped: %d non-square, %d unreadable, corrupt or "
        "truncated)",
        base,
        n_images,
        n_classes,
        non_square + unreadable,
        non_square,
        unreadable,
    )
