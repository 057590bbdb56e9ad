"""Evaluation protocols: what a query is and which corpus images are relevant to it.

Under class-identity relevance (`class`, the ViT-DSI paper's section 2.1) retrieval and
classification cannot be told apart: a method that predicts the query's class scores AP = 1
on every correctly classified query. A DSI's own task is "which indexed image is this?",
so the `instance` protocol asks exactly that, of *new views* of the indexed images (the
instance-retrieval / copy-detection setting):

    class     queries are other images; relevant = same class (or a shared category)
    instance  queries are seeded new views (vitdsi.data.views) of indexed images; each
              query's only relevant corpus image is its source. Train, validation and
              test views of an image come from disjoint seeds, and a share of the corpus
              (`untrained_share`, default 50%) has no train views at all, so the test also
              measures views of images no retriever was fine-tuned on.
    graded    multi-label data (coco, coco-mosaic): relevant = any shared category, as in
              `class`, and graded metrics (nDCG) gain the number of shared categories
              (`gain: shared`) or their Jaccard index (`gain: jaccard`)
    unseen-classes
              the classes are split (seeded; `share`, default 30%, unseen); images of
              unseen classes are indexed, but their labels are hidden from training (-1
              in the corpus's `labels`, the truth kept in `relevance_labels`) and their
              train queries are dropped, so no training pair or label the model sees
              involves them. Validation and test queries of every class remain and are
              reported separately for seen and unseen classes.
    text      queries are captions of indexed images, in phrasings held out of training
              (vitdsi.data.text_protocol): relevant = the caption's own image for R@K and
              MRR, images sharing a category with it for the other metrics

The class split is drawn first (`vitdsi.data.split`), so the indexed database is the same
under both protocols for a given seed; under `instance` the class split's query images
are not used. Views keep their source's labels (what label-using methods may learn from)
and record `view_of`, which `Relevance.between` and the training-pair samplers read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vitdsi.data.captions import Captions
from vitdsi.data.imageset import ImageSet
from vitdsi.data.split import SplitSets
from vitdsi.data.text_protocol import TextOptions, text_sets
from vitdsi.data.views import PRESETS, make_views, view_seed
from vitdsi.errors import VitDSIError

PROTOCOLS = ("class", "instance", "unseen-classes", "graded", "text")
NO_FLIP_DATASETS = ("digits",)  # data whose meaning a mirror image changes


@dataclass(frozen=True)
class InstanceOptions:
    strength: str = "medium"  # view strength preset: light / medium / strong (vitdsi.data.views)
    train_views: int = 2  # train views of each corpus image that has train views
    untrained_share: float = 0.5  # share of corpus images with no train view at all
    hflip: bool | None = None  # mirror views half the time; None = unless the dataset forbids it

    def __post_init__(self) -> None:
        if self.strength not in PRESETS:
            raise VitDSIError(f"instance protocol: unknown view strength '{self.strength}'; presets: {', '.join(PRESETS)}")
        if self.train_views < 0:
            raise VitDSIError(f"instance protocol: train_views must be >= 0, got {self.train_views}")
        if not 0.0 <= self.untrained_share <= 1.0:
            raise VitDSIError(f"instance protocol: untrained_share must be in [0, 1], got {self.untrained_share}")


@dataclass(frozen=True)
class UnseenOptions:
    share: float = 0.3  # share of the classes whose labels and train queries training never sees

    def __post_init__(self) -> None:
        if not 0.0 < self.share < 1.0:
            raise VitDSIError(f"unseen-classes protocol: share must be in (0, 1), got {self.share}")


@dataclass(frozen=True)
class GradedOptions:
    gain: str = "shared"  # gain of a corpus image: 'shared' categories with the query, or their 'jaccard' index

    def __post_init__(self) -> None:
        if self.gain not in ("shared", "jaccard"):
            raise VitDSIError(f"graded protocol: gain must be 'shared' or 'jaccard', got '{self.gain}'")


ProtocolOptions = InstanceOptions | UnseenOptions | GradedOptions | TextOptions


def apply_protocol(sets: SplitSets, protocol: str, seed: int, options: ProtocolOptions | None = None,
                   indexed_captions: Captions | None = None) -> SplitSets:
    """The sets of `protocol` over a class split (`class`: unchanged). The text protocol also needs
    `indexed_captions`, every caption of the indexed images (`Split.indexed_captions`)."""
    if protocol not in PROTOCOLS:
        raise VitDSIError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    if protocol == "class":
        return sets
    if protocol == "text":
        return text_sets(sets.corpus, indexed_captions, seed, options or TextOptions())
    if protocol == "graded":
        if not sets.corpus.multilabel:
            raise VitDSIError(f"the graded protocol needs multi-label data (coco, coco-mosaic); '{sets.corpus.name}' "
                              "has one class per image: use `protocol: class`")
        gain = (options or GradedOptions()).gain
        return SplitSets(sets.corpus, sets.train, sets.val, sets.test, grading=gain)
    if protocol == "unseen-classes":
        return unseen_class_sets(sets, seed, options or UnseenOptions())
    return instance_sets(sets.corpus, seed, options or InstanceOptions())


def unseen_classes(n_classes: int, share: float, seed: int) -> np.ndarray:
    """Sorted class indices held out from training: a seeded `share` of them (at least one, and
    at least one class stays seen)."""
    n_unseen = min(n_classes - 1, max(1, int(round(share * n_classes))))
    rng = np.random.default_rng(view_seed(seed, "unseen-classes"))
    return np.sort(rng.permutation(n_classes)[:n_unseen])


def unseen_class_sets(sets: SplitSets, seed: int, options: UnseenOptions) -> SplitSets:
    """The class split with unseen classes' corpus labels hidden (-1; the truth in
    `relevance_labels`) and their train queries dropped; validation and test unchanged."""
    corpus = sets.corpus
    if corpus.multilabel:
        raise VitDSIError("the unseen-classes protocol needs one class per image; multi-label data: use `class`")
    unseen = torch.as_tensor(unseen_classes(corpus.n_classes, options.share, seed))
    hidden = torch.isin(corpus.labels, unseen)
    masked = ImageSet(
        images=corpus.images, labels=torch.where(hidden, -1, corpus.labels), source_ids=corpus.source_ids,
        class_names=corpus.class_names, name=corpus.name,
        meta={**corpus.meta, "protocol": "unseen-classes", "unseen_classes": unseen.tolist()},
        relevance_labels=corpus.labels, captions=corpus.captions,
    )
    train = sets.train.subset(np.flatnonzero(~torch.isin(sets.train.labels, unseen).numpy()))
    return SplitSets(masked, train, sets.val, sets.test)


def trained_sources(n: int, untrained_share: float, seed: int) -> np.ndarray:
    """Sorted corpus positions that get train views: all but a seeded `untrained_share` of them."""
    rng = np.random.default_rng(view_seed(seed, "untrained"))
    n_trained = n - int(round(untrained_share * n))
    return np.sort(rng.permutation(n)[:n_trained])


def instance_sets(corpus: ImageSet, seed: int, options: InstanceOptions) -> SplitSets:
    """Corpus unchanged; train views of the trained share, one validation and one test view of
    every corpus image, each role from its own seeds."""
    hflip = options.hflip if options.hflip is not None else corpus.name not in NO_FLIP_DATASETS
    trained = trained_sources(len(corpus), options.untrained_share, seed)
    train_rounds = [_views(corpus, trained, options, view_seed(seed, "train", r), hflip, f"train{r}")
                    for r in range(options.train_views)]
    everyone = np.arange(len(corpus))
    train = _concat(train_rounds) if train_rounds else _views(corpus, everyone[:0], options, 0, hflip, "train")
    val = _views(corpus, everyone, options, view_seed(seed, "val"), hflip, "val")
    test = _views(corpus, everyone, options, view_seed(seed, "test"), hflip, "test")
    return SplitSets(corpus, train, val, test)


def _views(corpus: ImageSet, sources: np.ndarray, options: InstanceOptions, seed: int, hflip: bool, role: str) -> ImageSet:
    base = corpus.subset(sources)
    return ImageSet(
        images=make_views(base.images, options.strength, seed, hflip=hflip),
        labels=base.labels,
        source_ids=np.array([f"{sid}#view-{role}" for sid in base.source_ids]),
        class_names=corpus.class_names,
        name=corpus.name,
        meta={**corpus.meta, "protocol": "instance", "view_strength": options.strength, "role": role},
        view_of=np.asarray(sources, dtype=np.int64),
    )


def _concat(parts: list[ImageSet]) -> ImageSet:
    first = parts[0]
    return ImageSet(
        images=torch.cat([p.images for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        source_ids=np.concatenate([p.source_ids for p in parts]),
        class_names=first.class_names,
        name=first.name,
        meta=dict(first.meta),
        view_of=np.concatenate([p.view_of for p in parts]),
    )
