"""`coco-mosaic`: a generated multi-label dataset written as real COCO files.

Tiles of a base dataset (digits or Fashion-MNIST) are composed into grid x grid mosaics;
each non-empty tile is one annotated object whose category is the tile's class, with its
bounding box. The result is a COCO instances json, a COCO captions json (sentences made from
the tiles' categories and positions, with held-out templates for validation and test:
`mosaic_captions`) and PNG files, deterministic under a seed, so the `coco` loader
(pycocotools, multi-label relevance) runs offline end to end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from vitdsi.cache_folder import build_atomically
from vitdsi.data.imageset import ImageSet
from vitdsi.data.sources.coco import load_coco
from vitdsi.data.sources.digits import load_digits
from vitdsi.data.sources.fashion_mnist import load_fashion_mnist
from vitdsi.data.sources.mosaic_captions import mosaic_captions
from vitdsi.errors import VitDSIError

# tile sources by name; the loaders are imported directly (not through the dataset registry,
# which registers this module's loader), so the two modules do not import each other
TILE_SOURCES = {"digits": load_digits, "fashion-mnist": load_fashion_mnist}
# part of the cache key: bump when what is generated from the same parameters changes
# (2: caption files), so a cache written by an older version is never reused
MOSAIC_FORMAT = 2


def generate_coco_mosaic(
    out_dir: str | Path,
    *,
    base: str = "digits",
    base_root: str | None = None,
    n_images: int = 500,
    grid: int = 2,
    tile_size: int = 32,
    p_empty: float = 0.25,
    seed: int = 0,
    captions: int = 3,
) -> Path:
    """Write out_dir/images/*.png, out_dir/annotations/instances.json and, with `captions` > 0,
    out_dir/annotations/captions.json: `captions` captions per image in each phrasing (train,
    val, test); returns out_dir."""
    if base not in TILE_SOURCES:
        raise VitDSIError(f"coco-mosaic: base must be one of {', '.join(TILE_SOURCES)}, got '{base}'")
    if grid < 1 or n_images < 1:
        raise VitDSIError(
            f"coco-mosaic needs grid >= 1 and n_images >= 1, got grid={grid}, n_images={n_images}"
        )
    if not 0.0 <= p_empty < 1.0:
        raise VitDSIError(f"coco-mosaic p_empty must be in [0, 1), got {p_empty}")
    if captions < 0:
        raise VitDSIError(f"coco-mosaic captions (per image and phrasing) must be >= 0, got {captions}")
    kw = {"root": base_root} if base_root and base != "digits" else {}
    source = TILE_SOURCES[base](size=tile_size, **kw)
    rng = np.random.default_rng(seed)
    cells = grid * grid
    tiles = rng.integers(0, len(source), size=(n_images, cells))
    empty = rng.random((n_images, cells)) < p_empty
    empty[np.arange(n_images), rng.integers(0, cells, n_images)] = False  # at least one object each
    tiles = np.where(empty, -1, tiles)

    # Compose all mosaics at once: [n, grid, grid, 3, T, T] -> [n, 3, grid*T, grid*T]
    gray = source.images.numpy()
    stack = np.zeros((n_images, cells) + gray.shape[1:], dtype=np.uint8)
    stack[~empty] = gray[tiles[~empty]]
    side = grid * tile_size
    mosaics = (
        stack.reshape(n_images, grid, grid, 3, tile_size, tile_size)
        .transpose(0, 3, 1, 4, 2, 5)
        .reshape(n_images, 3, side, side)
    )

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    names = [f"mosaic_{i:06d}.png" for i in range(n_images)]

    def write(i: int) -> None:
        Image.fromarray(mosaics[i].transpose(1, 2, 0)).save(out / "images" / names[i])

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, range(n_images)))

    labels = source.labels.numpy()
    annotations = tile_annotations(tiles, empty, labels, grid, tile_size)
    info = {"description": f"coco-mosaic of {base}", "seed": seed}
    image_list = [
        {"id": i + 1, "file_name": names[i], "width": side, "height": side} for i in range(n_images)
    ]
    coco = {
        "info": info,
        "images": image_list,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": n, "supercategory": base} for k, n in enumerate(source.class_names)
        ],
    }
    (out / "annotations" / "instances.json").write_text(json.dumps(coco))
    if captions:
        categories = np.where(empty, -1, labels[np.maximum(tiles, 0)])
        caption_anns = mosaic_captions(categories, grid, source.class_names, captions, seed)
        (out / "annotations" / "captions.json").write_text(
            json.dumps({"info": info, "images": image_list, "annotations": caption_anns})
        )
    return out


def tile_annotations(
    tiles: np.ndarray, empty: np.ndarray, labels: np.ndarray, grid: int, tile_size: int
) -> list[dict]:
    """COCO instance annotations, one box per non-empty cell: `tiles` [n, grid*grid] source
    positions (-1 where `empty`), `labels` the source's classes."""
    annotations = []
    for i, j in zip(*np.nonzero(~empty)):
        r, c = divmod(int(j), grid)
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": int(i) + 1,
                "category_id": int(labels[tiles[i, j]]) + 1,
                "bbox": [c * tile_size, r * tile_size, tile_size, tile_size],
                "area": tile_size * tile_size,
                "iscrowd": 0,
                "segmentation": [],
            }
        )
    return annotations


def _generate_atomically(folder: Path, params: dict) -> None:
    """Generate into a folder of this process's own, then rename it to `folder`
    (vitdsi.cache_folder); when another process got there first, keep its (complete) folder."""

    def fill(tmp: Path) -> None:
        generate_coco_mosaic(tmp, **params)
        (tmp / "mosaic.json").write_text(json.dumps({**params, "format": MOSAIC_FORMAT}, indent=2))

    build_atomically(folder, "mosaic.json", fill)


def load_coco_mosaic(
    *,
    root: str | None = None,
    base: str = "digits",
    base_root: str | None = None,
    n_images: int = 500,
    grid: int = 2,
    tile_size: int = 32,
    p_empty: float = 0.25,
    size: int | None = None,
    seed: int = 0,
    limit: int | None = None,
    captions: int = 3,
) -> ImageSet:
    """Generate the mosaic dataset once (cached by its parameters under `root`, default
    ~/.cache/vitdsi/coco-mosaic) and load it through the `coco` loader. Generation writes a
    private folder and renames it into place, so workers that start together never read each
    other's half-written files (a folder without its `mosaic.json` marker is rebuilt).
    `captions`: captions per image in each phrasing (train, val, test); 0 = image-only."""
    params = {
        "base": base,
        "base_root": base_root,
        "n_images": n_images,
        "grid": grid,
        "tile_size": tile_size,
        "p_empty": p_empty,
        "seed": seed,
        "captions": captions,
    }
    key = hashlib.sha1(json.dumps({**params, "format": MOSAIC_FORMAT}, sort_keys=True).encode()).hexdigest()[
        :10
    ]
    folder = Path(root or Path.home() / ".cache" / "vitdsi" / "coco-mosaic") / key
    if not (folder / "mosaic.json").exists():
        _generate_atomically(folder, params)
    ims = load_coco(
        root=str(folder), size=size or grid * tile_size, limit=limit, seed=seed, captions=captions > 0
    )
    return dataclasses.replace(ims, name="coco-mosaic", meta={**ims.meta, "mosaic": params})
