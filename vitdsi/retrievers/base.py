"""The retriever interface (docs/design.md, "The retriever interface and registry").

A retriever indexes a corpus ImageSet, answers top-k queries with a Ranking and may `add`
images (DSI++). Queries are images or captions: each retriever declares the kind it takes
(`query_kind`) and `search` refuses the other. Build parameters are constructor arguments or
config fields (`config_params`, declared with `vitdsi.retrievers.params`); query parameters are
set apart, as in ann-benchmarks. The base class validates input and output. Retrievers are
found by name in `registry` and saved / loaded by `persistence`.
"""

from __future__ import annotations

import contextlib
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import Field, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.device import resolve_device
from vitdsi.errors import VitDSIError
from vitdsi.ranking import Ranking
from vitdsi.retrievers.params import coerce, retriever_params, type_name
from vitdsi.training.monitor import ValidationSet

EpochCallback = Callable[[Any], "bool | None"]  # called with each epoch's log; True stops training
Queries = torch.Tensor | Sequence[str]  # uint8 images [n, 3, H, W], or captions (a list of str)
QUERY_KINDS = {"image": "uint8 images [n, 3, H, W]", "text": "captions, a list of str"}


@dataclass(frozen=True)
class Supervision:
    """What a retriever learns from besides the corpus pixels, so that a report never puts a
    label-using method beside a label-free one without saying so (class-identity relevance
    rewards classification: a method that predicts the query's class scores AP@10 = 1 on
    every correctly classified query)."""

    corpus_labels: bool = False  # sees the class / category labels of the indexed images
    query_pairs: bool = False  # trains on train queries paired with relevant corpus images
    pretrained: bool = False  # starts from weights trained on outside data (e.g. ImageNet)
    # reads or trains on the captions of the indexed images (text that may name their categories)
    captions: bool = False

    def describe(self) -> str:
        """'label-free' or the signals used, e.g. 'corpus labels + query pairs'."""
        used = [
            name
            for name, on in (
                ("corpus labels", self.corpus_labels),
                ("query pairs", self.query_pairs),
                ("corpus captions", self.captions),
                ("pretrained", self.pretrained),
            )
            if on
        ]
        return " + ".join(used) if used else "label-free"

    @property
    def uses_labels(self) -> bool:
        """True when any label (corpus labels or label-derived query pairs) reaches training."""
        return self.corpus_labels or self.query_pairs


class Retriever(ABC):
    """Builds an index over a corpus and answers top-k queries.

    Subclasses take their build parameters as keyword-only constructor arguments with
    defaults (plus `seed` and `device`, handled here) or as fields of their model's and
    trainer's configs (`config_params`), declare their query parameters in
    `query_defaults`, and implement `_index`, `_search` (and `_add`) and, when they hold
    learned state, `_state` / `_load_state`.
    """

    name: ClassVar[str] = ""  # set by @register
    query_kind: ClassVar[str] = "image"  # what `search` takes: 'image' or 'text' (QUERY_KINDS)
    query_defaults: ClassVar[dict[str, Any]] = {}  # query-time parameters and their defaults
    # the most this retriever can learn from; `supervision_used` narrows it by build parameters
    supervision: ClassVar[Supervision] = Supervision()
    # True when index / add train in epochs and call `on_epoch` after each (with an EpochLog or
    # dict; a True return stops training); others may still leave a `history` when done
    reports_epochs: ClassVar[bool] = False

    # build parameters that are fields of the config dataclasses the retriever builds (its model's,
    # its trainer's; see `fields_of`): name, type and default are written once, there. `__init__`
    # sets each as an attribute, which the class declares with the same type for type checkers
    # (`name: int`; shared groups in EncoderRetriever, FaissParams, TextEncoderParams)
    config_params: ClassVar[tuple[Field, ...]] = ()
    # build parameters of the harness's smoke scale (tiny models: tests, CI, a demo), declared beside
    # the retriever so that a new one brings its own; {} keeps the defaults
    smoke_params: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, seed: int = 0, device: str | None = None, **params: Any) -> None:
        """`params`: values of `config_params` (the others keep the config's default)."""
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.query_args: dict[str, Any] = dict(self.query_defaults)
        self.corpus_size: int | None = None
        self.image_size: int | None = None
        self.on_epoch: EpochCallback | None = None  # the hook of the index / add call under way
        self.validation: ValidationSet | None = None  # the validation queries of the index call under way
        # what the last index call's training cost and whether it converged (TrainingMonitor.record);
        # None for retrievers that do not train
        self.training_record: dict[str, Any] | None = None
        # set while searching indexed images (`search_indexed`): a fixed encoder part may read the
        # feature cache for them
        self._indexed_inputs = False
        declared = {f.name: f for f in self.config_params}
        unknown = sorted(set(params) - set(declared))
        if unknown:
            allowed = sorted(p.name for p in retriever_params(type(self)))
            raise VitDSIError(
                f"{self.name or type(self).__name__}: unknown parameter(s) {unknown}; allowed: {allowed}"
            )
        for name, f in declared.items():
            setattr(self, name, coerce(params.get(name, f.default), type_name(f.type)))

    def config(self, config_type: type, **values: Any) -> Any:
        """A `config_type` dataclass (e.g. the model's or the trainer's config) whose fields this
        retriever's `config_params` of the same name fill; `values` set the rest, and win."""
        mine = {f.name for f in self.config_params}
        given = {f.name: getattr(self, f.name) for f in fields(config_type) if f.name in mine}
        return config_type(**{**given, **values})

    # ---- subclass hooks -------------------------------------------------------------
    @abstractmethod
    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        """Build the index over `corpus` (already validated, non-empty)."""

    def _add(self, images: ImageSet, train_queries: ImageSet | None) -> None:
        """Append `images` (validated, non-empty) at positions corpus_size .. corpus_size + n - 1;
        `self.corpus_size` still counts the images indexed before them."""
        raise VitDSIError(
            f"{self.name}: incremental indexing (add) is not supported; index the whole corpus again"
        )

    @abstractmethod
    def _search(self, queries: Any, k: int) -> Ranking:
        """Top-k for validated queries of `query_kind`: uint8 [n, 3, H, W] images, or a non-empty
        list of captions (str); k <= corpus size."""

    def _state(self) -> dict[str, Any]:
        """Everything `_load_state` needs to answer queries without the corpus. It must load with
        `torch.load(weights_only=True)`: tensors, Python numbers / str / bool / None, and lists,
        tuples and dicts of them (numpy arrays -> torch.from_numpy, bytes -> a uint8 tensor)."""
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore what `_state` returned."""

    def check_image_size(self, image_size: int) -> None:
        """Raise a VitDSIError when this retriever cannot index images of `image_size` pixels
        (e.g. a ViT patch that does not divide it); called by `index` and by study checks
        before any trial runs."""

    def search_info(self, k: int) -> dict[str, float]:
        """How a search for `k` results runs, for the harness to log beside the numbers (a DSI: its
        effective beam and id length); {} for a retriever with nothing to add."""
        return {}

    def build_info(self) -> dict[str, float]:
        """What the last `index` call (and the `add` calls since) cost beyond its wall time, for
        the harness to log beside it, e.g. the frozen-encoder extraction seconds of a retriever that
        does not train (`ExtractionTime.record`; a trained one's are in its `training_record`);
        {} for a retriever with nothing to add."""
        return {}

    # ---- public interface -----------------------------------------------------------
    def index(
        self,
        corpus: ImageSet,
        *,
        train_queries: ImageSet | None = None,
        on_epoch: EpochCallback | None = None,
        validation: ValidationSet | None = None,
    ) -> None:
        """Index `corpus`; `train_queries` (queries labelled against the same classes) are
        used by retrievers that learn from queries, such as a fine-tuned DSI. `on_epoch` is
        called after every training epoch by retrievers that `reports_epochs`. Retrievers that
        train score their checkpoints on the `validation` queries (never test queries) and stop
        on a plateau (`vitdsi.training.monitor`); the others ignore them."""
        if len(corpus) == 0:
            raise VitDSIError(f"{self.name}: cannot index an empty corpus; give at least one image")
        if self.query_kind == "text" and train_queries is not None:
            raise VitDSIError(
                f"{self.name}: answers caption queries and learns from the captions the indexed images "
                "carry (corpus.captions); it takes no train_queries (image queries): pass None"
            )
        if train_queries is not None and train_queries.image_size != corpus.image_size:
            raise VitDSIError(
                f"{self.name}: train queries are {train_queries.image_size}px but the corpus is "
                f"{corpus.image_size}px; prepare both at the same size"
            )
        self.check_image_size(corpus.image_size)
        seed_everything(self.seed)
        self.corpus_size = len(corpus)
        self.image_size = corpus.image_size
        self.on_epoch, self.validation, self.training_record = on_epoch, validation, None
        try:
            self._index(corpus, train_queries)
        finally:
            self.on_epoch, self.validation = None, None

    def add(
        self,
        images: ImageSet,
        *,
        train_queries: ImageSet | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        """Add `images` to the built index. They take the next corpus positions (the first one
        is the old `corpus_size`); the positions of images indexed before never change.
        `train_queries` are new train queries, for retrievers that learn from queries."""
        if self.corpus_size is None:
            raise VitDSIError(f"{self.name}: add() called before index(); index a corpus first")
        if len(images) == 0:
            raise VitDSIError(f"{self.name}: add() needs at least one image")
        for what, s in (("added images", images), ("train queries", train_queries)):
            if s is not None and s.image_size != self.image_size:
                raise VitDSIError(
                    f"{self.name}: {what} are {s.image_size}px but the index was built on "
                    f"{self.image_size}px; prepare them at the corpus size"
                )
        seed_everything(self.seed + self.corpus_size)  # each add step draws its own randomness
        self.on_epoch = on_epoch
        try:
            self._add(images, train_queries)
        finally:
            self.on_epoch = None
        self.corpus_size += len(images)

    def search(self, queries: Queries, k: int) -> Ranking:
        """Top-k corpus positions for each query: uint8 images [n, 3, H, W] for retrievers whose
        `query_kind` is 'image', captions (a list of str) for 'text' ones."""
        if self.corpus_size is None:
            raise VitDSIError(
                f"{self.name}: search() called before index(); index a corpus or load_retriever() a saved "
                "index"
            )
        kind = query_kind_of(queries, self.name)
        if kind != self.query_kind:
            raise VitDSIError(
                f"{self.name}: answers {self.query_kind} queries ({QUERY_KINDS[self.query_kind]}), got "
                f"{kind} queries; use a retriever for {kind} queries"
            )
        queries = self._check_images(queries) if kind == "image" else [str(t) for t in queries]
        if not isinstance(k, int) or k < 1:
            raise VitDSIError(f"{self.name}: k must be a positive integer, got {k!r}")
        if k > self.corpus_size:
            raise VitDSIError(
                f"{self.name}: k={k} is larger than the corpus ({self.corpus_size} images); use k <= "
                f"{self.corpus_size}"
            )
        n = len(queries)
        if n == 0:
            return Ranking(torch.empty(0, k, dtype=torch.int64), torch.empty(0, k, dtype=torch.float32))
        ranking = self._search(queries, k).cpu()
        if ranking.ids.shape != (n, k):
            raise RuntimeError(
                f"{self.name}: returned ids of shape {tuple(ranking.ids.shape)}, expected {(n, k)}"
            )
        return ranking

    def search_indexed(self, images: torch.Tensor, k: int) -> Ranking:
        """`search` for images this retriever has indexed (IA@K asks it to find each indexed image):
        the same ranking, except that a retriever whose encoder has a fixed part (a frozen borrowed
        encoder) reads that part's output for these images from the feature cache, where indexing
        stored it, instead of computing it again. Never timed: a query's cost includes its encoder."""
        with self._reading_indexed_images():
            return self.search(images, k)

    @contextlib.contextmanager
    def _reading_indexed_images(self) -> Iterator[None]:
        """Within it the images a retriever encodes are indexed ones (`search_indexed`)."""
        self._indexed_inputs = True
        try:
            yield
        finally:
            self._indexed_inputs = False

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        """`images` when they are uint8 [n, 3, H, W] at the index's size, else a VitDSIError."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise VitDSIError(
                f"{self.name}: queries must be a uint8 tensor [n, 3, H, W], got {tuple(images.shape)}"
            )
        if images.dtype != torch.uint8:
            raise VitDSIError(f"{self.name}: query images must be uint8 (0-255), got {images.dtype}")
        if images.shape[2] != self.image_size or images.shape[3] != self.image_size:
            raise VitDSIError(
                f"{self.name}: query images are {images.shape[2]}x{images.shape[3]} but the index was built "
                f"on {self.image_size}x{self.image_size}; prepare queries at the corpus size"
            )
        return images

    @property
    def supports_add(self) -> bool:
        """Whether `add` appends to a built index (False: it raises, the whole corpus must be indexed
        again)."""
        return type(self)._add is not Retriever._add

    def supervision_used(self) -> Supervision:
        """What this instance learns from, given its build parameters (e.g. a zero-shot DSI with
        random ids uses no label). Subclasses whose supervision depends on a parameter override it."""
        return self.supervision

    def set_query_arguments(self, **kwargs: Any) -> None:
        """Set query-time parameters (e.g. beam size, nprobe); unknown names are an error."""
        unknown = sorted(set(kwargs) - set(self.query_defaults))
        if unknown:
            raise VitDSIError(
                f"{self.name}: unknown query argument(s) {unknown}; known: "
                f"{sorted(self.query_defaults) or 'none'}"
            )
        self.query_args.update(kwargs)

    def build_params(self) -> dict[str, Any]:
        """The constructor arguments this retriever was built with, without `device` (where a
        saved index is loaded is the loader's choice)."""
        return {
            p.name: getattr(self, p.name)
            for p in retriever_params(type(self))
            if p.name != "device" and hasattr(self, p.name)
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.build_params().items())
        return f"{type(self).__name__}({args})"


def query_kind_of(queries: Any, owner: str = "search") -> str:
    """'image' for a tensor, 'text' for a list / tuple / array of str; anything else (a bare str
    too) is a VitDSIError saying what `search` takes (`owner`: the retriever, for the message)."""
    if isinstance(queries, torch.Tensor):
        return "image"
    if isinstance(queries, np.ndarray) and queries.dtype.kind in "UO" and queries.ndim == 1:
        queries = queries.tolist()
    if isinstance(queries, list | tuple) and all(isinstance(t, str) for t in queries):
        return "text"
    what = (
        "a single str: wrap it in a list"
        if isinstance(queries, str)
        else f"{type(queries).__name__}" + (" (not all str)" if isinstance(queries, list | tuple) else "")
    )
    raise VitDSIError(
        f"{owner}: queries must be a uint8 image tensor [n, 3, H, W] or a list of captions (str), got {what}"
    )


# ---- helpers shared by retrievers -----------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def images_to_float(images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 [n, 3, H, W] -> float32 in [0, 1] on `device`."""
    if device is not None:
        images = images.to(device, non_blocking=True)
    return images.float().div_(255.0)
