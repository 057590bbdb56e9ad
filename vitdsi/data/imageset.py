"""ImageSet: the one in-memory form every data source produces (paper section 2.1).

Images are square uint8 RGB tensors [N, 3, H, W]. Labels are either one class per
image (int64 [N]) or, for multi-label sources such as COCO, a multi-hot bool matrix
[N, C]. Source ids are stable strings (file name, COCO image id, index in the
source file) so a split stored with a run can be traced back to the original images.
Images may carry captions, several each (vitdsi.data.captions); subsets and concatenations
keep every image's captions with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from vitdsi.data.captions import Captions
from vitdsi.errors import VitDSIError


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8 [N, 3, H, W], H == W
    labels: torch.Tensor  # int64 [N] (one class each) or bool [N, C] (multi-hot categories)
    source_ids: np.ndarray  # str [N], stable id of each image in its source
    class_names: tuple[str, ...]  # name of each class / category index
    name: str = "imageset"  # source name, for logs and reports
    meta: dict = field(default_factory=dict)  # free-form provenance (root, size, ...)
    # int64 [N] for query views (the instance protocol, vitdsi.data.protocols): the corpus
    # position each image is a new view of, its only relevant image; None = relevance by label
    view_of: np.ndarray | None = None
    # the labels that decide relevance where training may not see them all (the unseen-classes
    # protocol hides some classes as -1 in `labels`); None = `labels` themselves
    relevance_labels: torch.Tensor | None = None
    # sentences describing the images, several per image (COCO caption files); None = image-only data
    captions: Captions | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise VitDSIError(
                f"ImageSet '{self.name}': images must be uint8 [N, 3, H, W], got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        if self.images.shape[2] != self.images.shape[3]:
            raise VitDSIError(
                f"ImageSet '{self.name}': images must be square, got {tuple(self.images.shape[2:])}"
            )
        if self.labels.shape[0] != n or len(self.source_ids) != n:
            raise VitDSIError(
                f"ImageSet '{self.name}': {n} images but {self.labels.shape[0]} labels and "
                f"{len(self.source_ids)} source ids"
            )
        if self.labels.ndim == 1 and self.labels.dtype != torch.int64:
            raise VitDSIError(f"ImageSet '{self.name}': class labels must be int64, got {self.labels.dtype}")
        if self.labels.ndim == 2 and self.labels.dtype != torch.bool:
            raise VitDSIError(
                f"ImageSet '{self.name}': multi-hot labels must be bool, got {self.labels.dtype}"
            )
        if self.relevance_labels is not None and self.relevance_labels.shape != self.labels.shape:
            raise VitDSIError(
                f"ImageSet '{self.name}': relevance_labels {tuple(self.relevance_labels.shape)} "
                f"must have the shape of labels {tuple(self.labels.shape)}"
            )
        if self.view_of is not None and len(self.view_of) != n:
            raise VitDSIError(f"ImageSet '{self.name}': {n} images but {len(self.view_of)} view_of entries")
        if self.captions is not None and len(self.captions) and int(self.captions.image.max()) >= n:
            raise VitDSIError(
                f"ImageSet '{self.name}': a caption describes image {int(self.captions.image.max())} of {n}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: np.ndarray | torch.Tensor | list[int]) -> ImageSet:
        """The images at `index` (positions), in that order."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return ImageSet(
            images=self.images[idx],
            labels=self.labels[idx],
            source_ids=self.source_ids[idx.numpy()],
            class_names=self.class_names,
            name=self.name,
            meta=dict(self.meta),
            view_of=None if self.view_of is None else self.view_of[idx.numpy()],
            relevance_labels=None if self.relevance_labels is None else self.relevance_labels[idx],
            captions=None if self.captions is None else self.captions.for_images(idx.numpy()),
        )

    def concat(self, other: ImageSet) -> ImageSet:
        """This set followed by `other` (same image size, label form and classes), e.g. a corpus
        with the images added to it."""
        if other.image_size != self.image_size or other.multilabel != self.multilabel:
            raise VitDSIError(
                f"ImageSet '{self.name}': cannot concatenate {other.image_size}px "
                f"{'multi-label' if other.multilabel else 'single-label'} images to {self.image_size}px "
                f"{'multi-label' if self.multilabel else 'single-label'} ones"
            )
        if (self.view_of is None) != (other.view_of is None) or (
            (self.relevance_labels is None) != (other.relevance_labels is None)
        ):
            raise VitDSIError(f"ImageSet '{self.name}': cannot concatenate sets of different protocols")
        return ImageSet(
            images=torch.cat([self.images, other.images.to(self.images.device)]),
            labels=torch.cat([self.labels, other.labels.to(self.labels.device)]),
            source_ids=np.concatenate([self.source_ids, other.source_ids]),
            class_names=self.class_names
            if len(self.class_names) >= len(other.class_names)
            else other.class_names,
            name=self.name,
            meta=dict(self.meta),
            view_of=None if self.view_of is None else np.concatenate([self.view_of, other.view_of]),
            relevance_labels=None
            if self.relevance_labels is None
            else torch.cat([self.relevance_labels, other.relevance_labels.to(self.relevance_labels.device)]),
            captions=_concat_captions(self.captions, other.captions, len(self)),
        )

    def to(self, device: torch.device | str) -> ImageSet:
        """The same set with images and labels on `device` (small sets live on the GPU once)."""
        return ImageSet(
            images=self.images.to(device),
            labels=self.labels.to(device),
            source_ids=self.source_ids,
            class_names=self.class_names,
            name=self.name,
            meta=dict(self.meta),
            view_of=self.view_of,
            relevance_labels=None if self.relevance_labels is None else self.relevance_labels.to(device),
            captions=self.captions,
        )

    def for_part(self, part: str) -> ImageSet:
        """This set as split part `part` ('corpus', 'train', 'val', 'test'): only the captions that part
        may use (`Captions.for_part`: each part's own phrasing where captions are tagged with one)."""
        if self.captions is None:
            return self
        return dataclasses.replace(self, captions=self.captions.for_part(part))

    def class_matrix(self) -> torch.Tensor:
        """Multi-hot bool [N, C] view of the labels, whatever their form."""
        if self.multilabel:
            return self.labels
        return torch.nn.functional.one_hot(self.labels, self.n_classes).bool()

    def primary_labels(self) -> np.ndarray:
        """One class per image: the class itself, or the first category of a multi-hot row
        (-1 when the row is empty). Used for stratified sampling and class-clustered ids."""
        if not self.multilabel:
            return self.labels.cpu().numpy()
        lab = self.labels.cpu().numpy()
        first = lab.argmax(axis=1)
        first[~lab.any(axis=1)] = -1
        return first


def _concat_captions(first: Captions | None, second: Captions | None, offset: int) -> Captions | None:
    """The captions of two concatenated sets; a set without captions adds none."""
    if second is None:
        return first
    second = second.shifted(offset)
    return second if first is None else first.concat(second)
