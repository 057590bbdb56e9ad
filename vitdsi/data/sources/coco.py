"""`coco`: MS COCO style data (pycocotools annotations + an images folder), multi-label.

Each image's labels are the multi-hot set of categories of its annotated objects; a
query is relevant to every corpus image sharing at least one category (paper 2.1).
Only near-square images are kept (aspect ratio in [0.9, 1.1]), read from the json's
width/height, so filtered images are never decoded. Captions come from the COCO caption
files beside the instances json (captions_X.json for instances_X.json, as MS COCO ships
them), also through pycocotools; the kept images' captions become `ImageSet.captions`.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch

from vitdsi.data.captions import PHRASINGS, Captions
from vitdsi.data.imageset import ImageSet
from vitdsi.data.prep import ASPECT_RANGE, is_square_enough
from vitdsi.data.sampling import stratified_sample
from vitdsi.data.sources.files import decode_files
from vitdsi.errors import DatasetNotFoundError, VitDSIError
from vitdsi.log import get_logger

log = get_logger(__name__)


def _locate(root: str | None, annotations: str | None, images: str | None) -> tuple[Path, Path]:
    """The annotation file and image folder, checked to exist."""
    if root is None and (annotations is None or images is None):
        raise VitDSIError(
            "coco needs root (with annotations/instances.json and images/) or both annotations and images"
        )
    ann_file = Path(annotations) if annotations else Path(root) / "annotations" / "instances.json"
    img_dir = Path(images) if images else Path(root) / "images"
    if not ann_file.is_file():
        raise DatasetNotFoundError(
            f"coco: annotation file {ann_file} not found; pass annotations=PATH to an instances json"
        )
    if not img_dir.is_dir():
        raise DatasetNotFoundError(f"coco: image folder {img_dir} not found; pass images=DIR")
    return ann_file, img_dir


def caption_files(ann_file: Path, captions: bool | str) -> list[Path]:
    """The caption files to read: `captions` = False: none; a path: that file; True: the file named
    like the instances json with 'captions' for 'instances' if there is one, else every
    captions*.json in its folder (none there: an image-only dataset)."""
    if captions is False:
        return []
    if isinstance(captions, str):
        if not Path(captions).is_file():
            raise DatasetNotFoundError(
                f"coco: caption file {captions} not found; pass captions=PATH to a COCO "
                "captions json, or captions=false"
            )
        return [Path(captions)]
    if captions is not True:
        raise VitDSIError(
            f"coco: captions must be true, false or a path to a captions json, got {captions!r}"
        )
    name = ann_file.name
    twin = ann_file.with_name("captions" + name[len("instances") :]) if name.startswith("instances") else None
    if twin is not None and twin.is_file():
        return [twin]
    return sorted(ann_file.parent.glob("captions*.json"))


def read_captions(files: list[Path], image_ids: np.ndarray) -> Captions | None:
    """The captions in `files` of the images whose COCO ids are `image_ids` (sorted), each with its
    image's position in `image_ids`; captions of other images are left out."""
    if not files:
        return None
    from pycocotools.coco import COCO  # optional; only for COCO annotations

    anns = []
    for file in files:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
            anns += COCO(str(file)).dataset.get("annotations", [])
    bad = next((a for a in anns if not {"id", "image_id", "caption"} <= set(a)), None)
    if bad is not None:
        raise VitDSIError(
            f"coco: caption annotation {bad} in {', '.join(map(str, files))} lacks id, image_id or "
            "caption; is this a captions json?"
        )
    of_image = np.fromiter((a["image_id"] for a in anns), dtype=np.int64, count=len(anns))
    pos = np.minimum(np.searchsorted(image_ids, of_image), max(len(image_ids) - 1, 0))
    keep = (image_ids[pos] == of_image) if len(image_ids) else np.zeros(len(anns), dtype=bool)
    kept = [anns[i] for i in np.flatnonzero(keep)]
    phrasing = [a.get("phrasing", "") for a in kept]
    unknown = set(phrasing) - {"", *PHRASINGS}
    if unknown:
        raise VitDSIError(
            f"coco: unknown caption phrasing {sorted(unknown)} in {', '.join(map(str, files))}; "
            f"use one of {', '.join(PHRASINGS)}"
        )
    texts = np.char.strip(np.array([str(a["caption"]) for a in kept], dtype=str))
    return Captions.build(texts, pos[keep], [a["id"] for a in kept], phrasing)


def probe(
    root: str | None, annotations: str | None = None, images: str | None = None
) -> tuple[None, None, str]:
    """Check that the annotation file and image folder exist (the json is not parsed)."""
    return None, None, str(_locate(root, annotations, images)[1])


def load_coco(
    *,
    root: str | None = None,
    annotations: str | None = None,
    images: str | None = None,
    size: int = 160,
    limit: int | None = None,
    seed: int = 0,
    keep_unlabelled: bool = False,
    aspect_range: tuple[float, float] = ASPECT_RANGE,
    captions: bool | str = True,
) -> ImageSet:
    """`annotations`: instances json (default root/annotations/instances.json);
    `images`: image folder (default root/images); `keep_unlabelled`: keep images without
    annotations (they have no relevant corpus image, so metrics skip them as queries);
    `captions`: read the caption files beside the instances json (True, `caption_files`),
    none (False) or this captions json (a path)."""
    ann_file, img_dir = _locate(root, annotations, images)
    cap_files = caption_files(ann_file, captions)

    from pycocotools.coco import COCO  # optional; only for COCO annotations

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        coco = COCO(str(ann_file))
    cat_ids = sorted(coco.getCatIds())
    cat_col = {c: i for i, c in enumerate(cat_ids)}
    img_ids = sorted(coco.getImgIds())
    infos = coco.loadImgs(img_ids)
    square = np.array([is_square_enough(i["width"], i["height"], aspect_range) for i in infos], dtype=bool)

    labels = np.zeros((len(img_ids), len(cat_ids)), dtype=bool)
    row_of = {img_id: r for r, img_id in enumerate(img_ids)}
    anns = coco.dataset.get("annotations", [])
    if anns:
        rows = np.fromiter((row_of[a["image_id"]] for a in anns), dtype=np.int64, count=len(anns))
        cols = np.fromiter((cat_col[a["category_id"]] for a in anns), dtype=np.int64, count=len(anns))
        labels[rows, cols] = True
    keep = square & (labels.any(1) | keep_unlabelled)
    index = np.flatnonzero(keep)
    if index.size == 0:
        raise DatasetNotFoundError(f"coco: no near-square annotated images in {ann_file}")
    if limit is not None:
        first = np.where(labels[index].any(1), labels[index].argmax(1), -1)
        index = np.sort(index[stratified_sample(first, limit, seed, what="coco images")])
    paths = [img_dir / infos[i]["file_name"] for i in index]
    missing = [p for p in paths[:5] if not p.exists()]
    if missing:
        raise DatasetNotFoundError(f"coco: image files listed in {ann_file} are missing, e.g. {missing[0]}")
    log.info(
        "coco %s: %d of %d images kept (near-square%s)",
        ann_file,
        len(index),
        len(img_ids),
        "" if keep_unlabelled else ", annotated",
    )
    # the kept images' COCO ids, sorted as read_captions needs (img_ids and index both are)
    caps = read_captions(cap_files, np.asarray(img_ids, dtype=np.int64)[index]) if cap_files else None
    return ImageSet(
        images=decode_files(paths, size, what="coco"),
        labels=torch.from_numpy(labels[index]),
        source_ids=np.array([str(img_ids[i]) for i in index]),
        class_names=tuple(coco.loadCats(c)[0]["name"] for c in cat_ids),
        name="coco",
        meta={
            "annotations": str(ann_file),
            "images": str(img_dir),
            "size": size,
            **({"captions": [str(f) for f in cap_files]} if cap_files else {}),
        },
        captions=caps,
    )
