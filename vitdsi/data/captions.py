"""Captions: sentences that describe the images of an ImageSet, several per image.

Follows the MS COCO caption files (Chen et al. 2015, "Microsoft COCO Captions"): each caption
is an annotation {id, image_id, caption}. Here they are flat arrays, one row per caption, with
the position of the image it describes, so subsets and concatenations stay vectorised.

A generated caption may say which split part's phrasing it uses (`phrasing`: coco-mosaic holds
the templates of validation and test captions out of the training ones); the split keeps each
part's own phrasing only (`PART_PHRASING`). Untagged captions (real COCO) go wherever their image
goes. docs/design.md, "Captions", states the rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitdsi.errors import VitDSIError

PHRASINGS = ("train", "val", "test")
# the phrasing each split part keeps: indexed images' captions may reach training, so they use
# the training phrasing; the validation and test queries each get phrasing training never saw
PART_PHRASING = {"corpus": "train", "train": "train", "val": "val", "test": "test"}


@dataclass(frozen=True)
class Captions:
    texts: np.ndarray  # str [M], the captions
    image: np.ndarray  # int64 [M], position in its ImageSet of the image each caption describes
    ids: np.ndarray  # int64 [M], the caption's annotation id in its COCO caption file (stable source id)
    # str [M]: the split part whose phrasing a generated caption uses ('train' / 'val' / 'test');
    # '' = any part may use it (real captions)
    phrasing: np.ndarray

    def __post_init__(self) -> None:
        m = len(self.texts)
        if len(self.image) != m or len(self.ids) != m or len(self.phrasing) != m:
            raise VitDSIError(
                f"Captions: {m} texts but {len(self.image)} image positions, {len(self.ids)} ids "
                f"and {len(self.phrasing)} phrasing tags"
            )
        if self.image.dtype != np.int64 or (m and self.image.min() < 0):
            raise VitDSIError("Captions: image positions must be non-negative int64")
        unknown = set(np.unique(self.phrasing).tolist()) - {"", *PHRASINGS}
        if unknown:
            raise VitDSIError(f"Captions: unknown phrasing {sorted(unknown)}; use one of {PHRASINGS} or ''")

    @staticmethod
    def build(texts, image, ids, phrasing=None) -> Captions:
        """Captions from sequences, sorted by image position then id (a stable order)."""
        texts = np.asarray(texts, dtype=str)
        image = np.asarray(image, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        phrasing = (
            np.full(len(texts), "", dtype="<U5") if phrasing is None else np.asarray(phrasing, dtype=str)
        )
        order = np.lexsort((ids, image))
        return Captions(texts[order], image[order], ids[order], phrasing[order])

    def __len__(self) -> int:
        return len(self.texts)

    def where(self, mask: np.ndarray) -> Captions:
        """The captions where `mask` is True, in their order."""
        return Captions(self.texts[mask], self.image[mask], self.ids[mask], self.phrasing[mask])

    def per_image(self, n_images: int) -> np.ndarray:
        """int64 [n_images]: how many captions each image has."""
        return np.bincount(self.image, minlength=n_images).astype(np.int64)

    def for_images(self, index: np.ndarray) -> Captions:
        """The captions of the images at positions `index`, renumbered to their new positions
        0..len(index)-1 (an image that `index` repeats gets its captions again)."""
        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(self.image, kind="stable")
        n_old = int(max(self.image.max(initial=-1), index.max(initial=-1))) + 1
        counts = np.bincount(self.image, minlength=n_old)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        take = counts[index]
        # for each new image, the run of its old captions in `order`: start + 0..count-1
        first = np.repeat(starts[index] - np.concatenate([[0], np.cumsum(take)[:-1]]), take)
        rows = order[first + np.arange(take.sum())]
        return Captions(
            self.texts[rows],
            np.repeat(np.arange(len(index), dtype=np.int64), take),
            self.ids[rows],
            self.phrasing[rows],
        )

    def shifted(self, offset: int) -> Captions:
        """The same captions for images moved `offset` positions on (a set appended to another)."""
        return Captions(self.texts, self.image + offset, self.ids, self.phrasing)

    def concat(self, other: Captions) -> Captions:
        return Captions(
            *(
                np.concatenate([a, b])
                for a, b in (
                    (self.texts, other.texts),
                    (self.image, other.image),
                    (self.ids, other.ids),
                    (self.phrasing, other.phrasing),
                )
            )
        )

    def for_part(self, part: str) -> Captions:
        """The captions split part `part` ('corpus', 'train', 'val', 'test') keeps: untagged ones and
        those in the part's own phrasing (`PART_PHRASING`)."""
        if part not in PART_PHRASING:
            raise VitDSIError(f"unknown split part '{part}'; known: {', '.join(PART_PHRASING)}")
        return self.where((self.phrasing == "") | (self.phrasing == PART_PHRASING[part]))
