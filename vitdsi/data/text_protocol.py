"""The text protocol: caption queries whose own image is indexed (a DSI for text queries).

Follows the DSI paper's setting (Tay et al. 2022, NQ): the queries of a test are held-out
queries *of indexed documents*, so a caption's own image is always in the corpus. The class
split's indexed database is kept and its query images are dropped (as under `instance`); the
captions of the indexed images are divided by role:

    train  captions in the training phrasing of the *captioned* share of the corpus: the
           only captions the corpus carries, so the only text any retriever trains on or
           indexes (`ImageSet.captions` of the corpus); a seeded `untrained_share` of the
           indexed images carries none and is known by its pixels alone
    val    every indexed image's captions in the validation phrasing
    test   every indexed image's captions in the test phrasing (held-out templates)

Untagged captions (real COCO) are dealt out per image in a seeded order: the first to test,
the second to validation, the rest to training. Relevance of a caption (`text_relevance`):
its own image for R@K and MRR, images sharing a category with its own image for the other
metrics (graded nDCG by shared categories on multi-label data); it is defined beside image
relevance, in `vitdsi.data.relevance`. docs/design.md, "Protocols".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitdsi.data.captions import Captions
from vitdsi.data.imageset import ImageSet
from vitdsi.data.split import SplitSets
from vitdsi.data.views import view_seed
from vitdsi.errors import VitDSIError

TEXT_PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class TextOptions:
    untrained_share: float = 0.5  # share of the indexed images whose captions never reach training
    gain: str = (
        "shared"  # nDCG gain on multi-label data: 'shared' categories with the own image, or 'jaccard'
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.untrained_share < 1.0:
            raise VitDSIError(f"text protocol: untrained_share must be in [0, 1), got {self.untrained_share}")
        if self.gain not in ("shared", "jaccard"):
            raise VitDSIError(f"text protocol: gain must be 'shared' or 'jaccard', got '{self.gain}'")


def caption_roles(captions: Captions, seed: int) -> np.ndarray:
    """str [M]: 'train', 'val' or 'test' for each caption: its phrasing when tagged, else by a seeded
    order within its image (first test, second validation, the rest train)."""
    rng = np.random.default_rng(view_seed(seed, "text-roles"))
    order = np.lexsort((rng.random(len(captions)), captions.image))  # by image, shuffled within
    starts = np.searchsorted(captions.image[order], captions.image[order], side="left")
    rank = np.empty(len(captions), dtype=np.int64)
    rank[order] = np.arange(len(captions)) - starts
    untagged = np.array(["test", "val", "train"])[np.minimum(rank, 2)]
    return np.where(captions.phrasing == "", untagged, captions.phrasing)


def captioned_images(n: int, untrained_share: float, seed: int) -> np.ndarray:
    """bool [n]: which indexed images keep their training captions (all but a seeded share)."""
    rng = np.random.default_rng(view_seed(seed, "text-untrained"))
    keep = np.zeros(n, dtype=bool)
    keep[rng.permutation(n)[: n - int(round(untrained_share * n))]] = True
    return keep


def text_sets(corpus: ImageSet, captions: Captions | None, seed: int, options: TextOptions) -> SplitSets:
    """The SplitSets of the text protocol over a class split's indexed images `corpus`, from all
    their `captions` (every phrasing, positions in `corpus`)."""
    if captions is None or not len(captions):
        raise VitDSIError(
            f"the text protocol needs captions of the indexed images, but '{corpus.name}' has none; "
            "use a captioned dataset (coco with a captions file, coco-mosaic with captions > 0)"
        )
    roles = caption_roles(captions, seed)
    captioned = captioned_images(len(corpus), options.untrained_share, seed)
    parts = {"train": captions.where((roles == "train") & captioned[captions.image])}
    for part in ("val", "test"):
        parts[part] = captions.where(roles == part)
        if not len(parts[part]):
            raise VitDSIError(
                f"the text protocol found no {part} captions of the indexed images; every image needs "
                f"captions in the {part} phrasing (coco-mosaic) or at least three untagged ones (coco)"
            )
    indexed = ImageSet(
        corpus.images,
        corpus.labels,
        corpus.source_ids,
        corpus.class_names,
        corpus.name,
        {**corpus.meta, "protocol": "text"},
        relevance_labels=corpus.relevance_labels,
        captions=parts["train"],
    )
    no_images = corpus.subset(np.arange(0))  # the class split's query images are not used
    grading = options.gain if corpus.multilabel else "binary"
    return SplitSets(indexed, no_images, no_images, no_images, grading=grading, text=parts)
