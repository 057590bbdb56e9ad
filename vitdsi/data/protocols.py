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

Each protocol is declared once, in `PROTOCOLS` (`register_protocol`): its name, the function
that makes its sets, its options dataclass (defaults and checks) and the key of those options
in a study file, a one-line description, and how a report splits its test queries by what
training saw. The study schema and the report read this registry; a new protocol is one
`register_protocol` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vitdsi.data.captions import Captions
from vitdsi.data.imageset import ImageSet
from vitdsi.data.split import SplitSets
from vitdsi.data.text_protocol import TextOptions, text_sets
from vitdsi.data.views import PRESETS, make_views, view_seed
from vitdsi.errors import VitDSIError

NO_FLIP_DATASETS = ("digits",)  # data whose meaning a mirror image changes


@dataclass(frozen=True)
class InstanceOptions:
    strength: str = "medium"  # view strength preset: light / medium / strong (vitdsi.data.views)
    train_views: int = 2  # train views of each corpus image that has train views
    untrained_share: float = 0.5  # share of corpus images with no train view at all
    hflip: bool | None = None  # mirror views half the time; None = unless the dataset forbids it
    # validation and test views of a seeded sample of this many indexed images, each part its own
    # sample (a query count that does not grow with the corpus); None = of every indexed image
    queries: int | None = None
    # corpus images with train views, a seeded sample of this many; None = all but `untrained_share`
    trained_images: int | None = None

    def __post_init__(self) -> None:
        if self.strength not in PRESETS:
            raise VitDSIError(
                f"instance protocol: unknown view strength '{self.strength}'; presets: {', '.join(PRESETS)}"
            )
        if self.train_views < 0:
            raise VitDSIError(f"instance protocol: train_views must be >= 0, got {self.train_views}")
        if not 0.0 <= self.untrained_share <= 1.0:
            raise VitDSIError(
                f"instance protocol: untrained_share must be in [0, 1], got {self.untrained_share}"
            )
        if self.queries is not None and self.queries < 1:
            raise VitDSIError(f"instance protocol: queries must be >= 1 (or unset), got {self.queries}")
        if self.trained_images is not None and self.trained_images < 0:
            raise VitDSIError(
                f"instance protocol: trained_images must be >= 0 (or unset), got {self.trained_images}"
            )

    def n_trained(self, n_indexed: int) -> int:
        """How many of `n_indexed` corpus images get train views."""
        if self.trained_images is not None:
            return self.trained_images
        return n_indexed - int(round(self.untrained_share * n_indexed))

    def view_counts(self, n_indexed: int) -> dict[str, int]:
        """Train, validation and test views `instance_sets` makes of `n_indexed` corpus images."""
        queries = n_indexed if self.queries is None else self.queries
        return {"train": self.n_trained(n_indexed) * self.train_views, "val": queries, "test": queries}


@dataclass(frozen=True)
class UnseenOptions:
    share: float = 0.3  # share of the classes whose labels and train queries training never sees

    def __post_init__(self) -> None:
        if not 0.0 < self.share < 1.0:
            raise VitDSIError(f"unseen-classes protocol: share must be in (0, 1), got {self.share}")


@dataclass(frozen=True)
class GradedOptions:
    gain: str = (
        "shared"  # gain of a corpus image: 'shared' categories with the query, or their 'jaccard' index
    )

    def __post_init__(self) -> None:
        if self.gain not in ("shared", "jaccard"):
            raise VitDSIError(f"graded protocol: gain must be 'shared' or 'jaccard', got '{self.gain}'")


ProtocolOptions = InstanceOptions | UnseenOptions | GradedOptions | TextOptions


@dataclass(frozen=True)
class SeenSplit:
    """How a report splits a protocol's test queries by what training saw of them."""

    labels: tuple[str, str]  # column suffixes: (training saw it, training did not)
    mask: Callable[[SplitSets], np.ndarray]  # the sets -> bool [test queries]: True where training saw it
    what: str  # one sentence saying how the test queries are split


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol, declared once (see the module doc)."""

    name: str  # as `dataset.protocol` names it
    # (class split, seed, options, captions) -> sets
    apply: Callable[[SplitSets, int, Any, Captions | None], SplitSets]
    describe: Callable[[Any], str]  # its options -> one line for a report's set-up
    options: type | None = None  # dataclass of its options (defaults; checks in __post_init__); None: none
    block: str | None = None  # the key of those options under `dataset:` in a study file
    seen: SeenSplit | None = None  # how a report splits the test queries; None: not split

    def make_options(self, values: dict[str, Any] | None = None):
        """Its options from a study file's block (defaults for what is not given); None without options."""
        return self.options(**(values or {})) if self.options is not None else None


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    if protocol.name in PROTOCOLS:
        raise VitDSIError(f"protocol '{protocol.name}' is registered twice")
    if (protocol.block is None) != (protocol.options is None):
        raise VitDSIError(f"protocol '{protocol.name}': options and their study-file block go together")
    PROTOCOLS[protocol.name] = protocol
    return protocol


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise VitDSIError(f"unknown protocol '{name}'; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def apply_protocol(
    sets: SplitSets,
    protocol: str,
    seed: int,
    options: ProtocolOptions | None = None,
    indexed_captions: Captions | None = None,
) -> SplitSets:
    """The sets of `protocol` over a class split (`class`: unchanged). The text protocol also needs
    `indexed_captions`, every caption of the indexed images (`Split.indexed_captions`)."""
    p = get_protocol(protocol)
    return p.apply(sets, seed, options if options is not None else p.make_options(), indexed_captions)


def graded_sets(sets: SplitSets, options: GradedOptions) -> SplitSets:
    """The class split with graded gains (multi-label data only)."""
    if not sets.corpus.multilabel:
        raise VitDSIError(
            f"the graded protocol needs multi-label data (coco, coco-mosaic); '{sets.corpus.name}' "
            "has one class per image: use `protocol: class`"
        )
    return SplitSets(sets.corpus, sets.train, sets.val, sets.test, grading=options.gain)


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
        raise VitDSIError(
            "the unseen-classes protocol needs one class per image; multi-label data: use `class`"
        )
    unseen = torch.as_tensor(unseen_classes(corpus.n_classes, options.share, seed))
    hidden = torch.isin(corpus.labels, unseen)
    masked = ImageSet(
        images=corpus.images,
        labels=torch.where(hidden, -1, corpus.labels),
        source_ids=corpus.source_ids,
        class_names=corpus.class_names,
        name=corpus.name,
        meta={**corpus.meta, "protocol": "unseen-classes", "unseen_classes": unseen.tolist()},
        relevance_labels=corpus.labels,
        captions=corpus.captions,
    )
    train = sets.train.subset(np.flatnonzero(~torch.isin(sets.train.labels, unseen).numpy()))
    return SplitSets(masked, train, sets.val, sets.test)


def trained_sources(n: int, options: InstanceOptions, seed: int) -> np.ndarray:
    """Sorted corpus positions that get train views: all but a seeded `untrained_share` of them, or
    a seeded `trained_images` of them when given."""
    rng = np.random.default_rng(view_seed(seed, "untrained"))
    return np.sort(rng.permutation(n)[: options.n_trained(n)])


def query_sources(n: int, count: int | None, seed: int, role: str) -> np.ndarray:
    """Sorted corpus positions whose `role` ('val' / 'test') view is made: every one, or a seeded
    sample of `count` drawn for that role alone."""
    if count is None:
        return np.arange(n)
    rng = np.random.default_rng(view_seed(seed, f"{role}-sample"))
    return np.sort(rng.permutation(n)[:count])


def instance_sets(
    corpus: ImageSet, seed: int, options: InstanceOptions, held_out: ImageSet | None = None
) -> SplitSets:
    """Corpus unchanged; train views of the trained share (or of `trained_images`), one validation
    and one test view of every corpus image (or of `queries` sampled ones), each role from its own
    seeds. `held_out`: the class split's test images, kept beside the views (`SplitSets.held_out`)."""
    hflip = options.hflip if options.hflip is not None else corpus.name not in NO_FLIP_DATASETS
    for name, count in (("queries", options.queries), ("trained_images", options.trained_images)):
        if count is not None and count > len(corpus):
            raise VitDSIError(
                f"instance protocol: {name}={count} is more than the {len(corpus)} indexed images"
            )
    trained = trained_sources(len(corpus), options, seed)
    train_rounds = [
        _views(corpus, trained, options, view_seed(seed, "train", r), hflip, f"train{r}")
        for r in range(options.train_views)
    ]
    everyone = np.arange(len(corpus))
    train = (
        _concat(train_rounds) if train_rounds else _views(corpus, everyone[:0], options, 0, hflip, "train")
    )
    val_sources, test_sources = (
        query_sources(len(corpus), options.queries, seed, role) for role in ("val", "test")
    )
    val = _views(corpus, val_sources, options, view_seed(seed, "val"), hflip, "val")
    test = _views(corpus, test_sources, options, view_seed(seed, "test"), hflip, "test")
    return SplitSets(corpus, train, val, test, held_out=held_out)


def _views(
    corpus: ImageSet, sources: np.ndarray, options: InstanceOptions, seed: int, hflip: bool, role: str
) -> ImageSet:
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


def _describe_instance(o: InstanceOptions) -> str:
    trained = (
        f"{o.train_views} train view(s) of each image except a {o.untrained_share:.0%} share that has none"
        if o.trained_images is None
        else f"{o.train_views} train view(s) of each of a seeded {o.trained_images} indexed images"
    )
    queries = "" if o.queries is None else f" of seeded samples of {o.queries} indexed images"
    return (
        f"instance: queries are new views ({o.strength}) of indexed images, each relevant to its source "
        f"only; {trained}; validation and test views{queries} from their own seeds"
    )


def _describe_text(o: TextOptions) -> str:
    return (
        "text: queries are captions of indexed images in phrasings no training caption uses; R@K and MRR: "
        "relevant = the caption's own image; the other metrics: images sharing a category with it (nDCG "
        f"gains: {'shared categories' if o.gain == 'shared' else 'Jaccard index'}); a "
        f"{o.untrained_share:.0%} share of the indexed images carries no training caption"
    )


register_protocol(
    Protocol(
        "class",
        apply=lambda sets, seed, options, captions: sets,
        describe=lambda o: "class: queries are other images, relevant = same class (or a shared category)",
    )
)
register_protocol(
    Protocol(
        "instance",
        apply=lambda sets, seed, options, captions: instance_sets(sets.corpus, seed, options, sets.test),
        describe=_describe_instance,
        options=InstanceOptions,
        block="instance",
        seen=SeenSplit(
            ("(had train views)", "(no train view)"),
            lambda sets: np.isin(sets.test.view_of, sets.train.view_of),
            "Test views split by whether their source image had train views.",
        ),
    )
)
register_protocol(
    Protocol(
        "unseen-classes",
        apply=lambda sets, seed, options, captions: unseen_class_sets(sets, seed, options),
        describe=lambda o: (
            f"unseen-classes: {o.share:.0%} of the classes (seeded) are indexed but their labels and "
            "train queries never reach training; relevance = same class; test reported for seen and "
            "unseen classes"
        ),
        options=UnseenOptions,
        block="unseen",
        seen=SeenSplit(
            ("(seen classes)", "(unseen classes)"),
            lambda sets: ~np.isin(sets.test.labels.numpy(), sets.corpus.meta["unseen_classes"]),
            "Test queries split by whether their class was seen in training (unseen classes are indexed, "
            "but no label or training pair of theirs reached any method).",
        ),
    )
)
register_protocol(
    Protocol(
        "graded",
        apply=lambda sets, seed, options, captions: graded_sets(sets, options),
        describe=lambda o: (
            "graded: multi-label, relevant = a shared category; nDCG gains = "
            + (
                "the number of shared categories"
                if o.gain == "shared"
                else "the Jaccard index of the category sets"
            )
        ),
        options=GradedOptions,
        block="graded",
    )
)
register_protocol(
    Protocol(
        "text",
        apply=lambda sets, seed, options, captions: text_sets(sets.corpus, captions, seed, options),
        describe=_describe_text,
        options=TextOptions,
        block="text",
        seen=SeenSplit(
            ("(image captioned in training)", "(image not)"),
            lambda sets: np.isin(sets.text["test"].image, sets.text["train"].image),
            "Test captions split by whether the image they describe carried training captions (the rest "
            "of the indexed images are known by their pixels alone: a caption-only method cannot find them).",
        ),
    )
)
