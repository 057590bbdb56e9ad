"""The retriever interface and its registry (docs/design.md, "The retriever interface and registry").

A retriever indexes a corpus ImageSet, answers top-k queries with a Ranking and may `add`
images (DSI++). Queries are images or captions: each retriever declares the kind it takes
(`query_kind`) and `search` refuses the other. Build parameters are constructor arguments or
config fields (`config_params`); query parameters are set apart, as in ann-benchmarks. The base
class validates input and output.
"""

from __future__ import annotations

import copy
import inspect
import json
import pickle
import random
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import Field, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.limits import MAX_IMAGE_SIDE, MAX_IMAGES, check_param

EpochCallback = Callable[[Any], "bool | None"]  # called with each epoch's log; True stops training
Queries = torch.Tensor | Sequence[str]  # uint8 images [n, 3, H, W], or captions (a list of str)
QUERY_KINDS = {"image": "uint8 images [n, 3, H, W]", "text": "captions, a list of str"}


@dataclass(frozen=True)
class Ranking:
    """Top-k answer for a batch of queries."""

    ids: torch.Tensor  # int64 [n_queries, k]: corpus positions, -1 where fewer than k results
    scores: torch.Tensor  # float32 [n_queries, k]: non-increasing per row, -inf where ids == -1

    def __post_init__(self) -> None:
        if self.ids.dtype != torch.int64 or self.scores.dtype != torch.float32:
            raise TypeError(f"Ranking needs int64 ids and float32 scores, got {self.ids.dtype}, {self.scores.dtype}")
        if self.ids.shape != self.scores.shape or self.ids.ndim != 2:
            raise ValueError(f"Ranking ids {tuple(self.ids.shape)} and scores {tuple(self.scores.shape)} must be equal 2-d")

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def cpu(self) -> Ranking:
        return Ranking(self.ids.cpu(), self.scores.cpu())

    @staticmethod
    def from_scores(scores: torch.Tensor, k: int) -> Ranking:
        """Top-k of a dense [n_queries, n_corpus] score matrix; ties, also at the k-th place,
        go to the lower corpus position, so the result is deterministic."""
        ids, vals = topk_ties_to_lower(scores.float(), k)
        return Ranking(ids.long().contiguous(), vals.contiguous())


def topk_ties_to_lower(key: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k columns of a [n, N] key of any float dtype (a float64 key keeps a lexicographic
    order that float32 would round away), in descending order; ties, also at the k-th place,
    go to the lower column, so the result is deterministic. Returns (ids, values in key's dtype)."""
    kth = torch.topk(key, k, dim=1, sorted=True).values[:, -1:]  # [n, 1]
    above = key > kth
    need = k - above.sum(1, keepdim=True)  # how many of the ties at the k-th value to keep
    tied = key == kth
    chosen = above | (tied & (tied.cumsum(1) <= need))  # exactly k per row, lowest ids among ties
    ids = chosen.nonzero()[:, 1].view(-1, k)  # ascending column within each row
    vals = key.gather(1, ids)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices  # stable: ties stay in id order
    return ids.gather(1, order), vals.gather(1, order)


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
        used = [name for name, on in (("corpus labels", self.corpus_labels), ("query pairs", self.query_pairs),
                                      ("corpus captions", self.captions), ("pretrained", self.pretrained)) if on]
        return " + ".join(used) if used else "label-free"

    @property
    def uses_labels(self) -> bool:
        """True when any label (corpus labels or label-derived query pairs) reaches training."""
        return self.corpus_labels or self.query_pairs


@dataclass(frozen=True)
class ParamInfo:
    """One constructor parameter of a retriever, for `bench list retrievers` and validation."""

    name: str
    default: Any
    annotation: str


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
    # its trainer's; see `fields_of`): name, type and default are written once, there
    config_params: ClassVar[tuple[Field, ...]] = ()

    def __init__(self, *, seed: int = 0, device: str | None = None, **params: Any) -> None:
        """`params`: values of `config_params` (the others keep the config's default)."""
        self.seed = int(seed)
        self.device = torch.device(device) if device else default_device()
        self.query_args: dict[str, Any] = dict(self.query_defaults)
        self.corpus_size: int | None = None
        self.image_size: int | None = None
        self.on_epoch: EpochCallback | None = None  # the hook of the index / add call under way
        declared = {f.name: f for f in self.config_params}
        unknown = sorted(set(params) - set(declared))
        if unknown:
            allowed = sorted(p.name for p in retriever_params(type(self)))
            raise VitDSIError(f"{self.name or type(self).__name__}: unknown parameter(s) {unknown}; allowed: {allowed}")
        for name, f in declared.items():
            setattr(self, name, _coerce(params.get(name, f.default), _type_name(f.type)))

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
        raise VitDSIError(f"{self.name}: incremental indexing (add) is not supported; index the whole corpus again")

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

    # ---- public interface -----------------------------------------------------------
    def index(self, corpus: ImageSet, *, train_queries: ImageSet | None = None,
              on_epoch: EpochCallback | None = None) -> None:
        """Index `corpus`; `train_queries` (queries labelled against the same classes) are
        used by retrievers that learn from queries, such as a fine-tuned DSI. `on_epoch` is
        called after every training epoch by retrievers that `reports_epochs`."""
        if len(corpus) == 0:
            raise VitDSIError(f"{self.name}: cannot index an empty corpus; give at least one image")
        if self.query_kind == "text" and train_queries is not None:
            raise VitDSIError(f"{self.name}: answers caption queries and learns from the captions the indexed images "
                              "carry (corpus.captions); it takes no train_queries (image queries): pass None")
        if train_queries is not None and train_queries.image_size != corpus.image_size:
            raise VitDSIError(
                f"{self.name}: train queries are {train_queries.image_size}px but the corpus is "
                f"{corpus.image_size}px; prepare both at the same size"
            )
        self.check_image_size(corpus.image_size)
        seed_everything(self.seed)
        self.corpus_size = len(corpus)
        self.image_size = corpus.image_size
        self.on_epoch = on_epoch
        try:
            self._index(corpus, train_queries)
        finally:
            self.on_epoch = None

    def add(self, images: ImageSet, *, train_queries: ImageSet | None = None,
            on_epoch: EpochCallback | None = None) -> None:
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
                    f"{self.name}: {what} are {s.image_size}px but the index was built on {self.image_size}px; "
                    "prepare them at the corpus size"
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
            raise VitDSIError(f"{self.name}: search() called before index(); index a corpus or load() a saved index")
        kind = query_kind_of(queries, self.name)
        if kind != self.query_kind:
            raise VitDSIError(f"{self.name}: answers {self.query_kind} queries ({QUERY_KINDS[self.query_kind]}), got "
                              f"{kind} queries; use a retriever for {kind} queries")
        queries = self._check_images(queries) if kind == "image" else [str(t) for t in queries]
        if not isinstance(k, int) or k < 1:
            raise VitDSIError(f"{self.name}: k must be a positive integer, got {k!r}")
        if k > self.corpus_size:
            raise VitDSIError(
                f"{self.name}: k={k} is larger than the corpus ({self.corpus_size} images); use k <= {self.corpus_size}"
            )
        n = len(queries)
        if n == 0:
            return Ranking(torch.empty(0, k, dtype=torch.int64), torch.empty(0, k, dtype=torch.float32))
        ranking = self._search(queries, k).cpu()
        if ranking.ids.shape != (n, k):
            raise RuntimeError(f"{self.name}: returned ids of shape {tuple(ranking.ids.shape)}, expected {(n, k)}")
        return ranking

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        """`images` when they are uint8 [n, 3, H, W] at the index's size, else a VitDSIError."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise VitDSIError(f"{self.name}: queries must be a uint8 tensor [n, 3, H, W], got {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            raise VitDSIError(f"{self.name}: query images must be uint8 (0-255), got {images.dtype}")
        if images.shape[2] != self.image_size or images.shape[3] != self.image_size:
            raise VitDSIError(
                f"{self.name}: query images are {images.shape[2]}x{images.shape[3]} but the index was built on "
                f"{self.image_size}x{self.image_size}; prepare queries at the corpus size"
            )
        return images

    @property
    def supports_add(self) -> bool:
        """Whether `add` appends to a built index (False: it raises, the whole corpus must be indexed again)."""
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
                f"{self.name}: unknown query argument(s) {unknown}; known: {sorted(self.query_defaults) or 'none'}"
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

    def save(self, path: str | Path) -> None:
        """Write the index to directory `path`: config as json, learned state as a torch file."""
        if self.corpus_size is None:
            raise VitDSIError(f"{self.name}: nothing to save; index a corpus first")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "retriever": self.name,
            "build_params": self.build_params(),
            "query_args": self.query_args,
            "corpus_size": self.corpus_size,
            "image_size": self.image_size,
        }
        (path / "retriever.json").write_text(json.dumps(config, indent=2, default=str))
        torch.save(self._state(), path / "state.pt")

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> Retriever:
        """Read an index written by `save`; works on the base class or the right subclass.

        `state.pt` is read with `torch.load(weights_only=True)`: only tensors, numbers,
        strings, None and lists / dicts of them, never arbitrary pickled objects, so an index
        downloaded from a shared tracking server cannot run code when it is loaded. Anything
        else, or a truncated / empty file, is a VitDSIError naming the file."""
        path = Path(path)
        cfg_file = path / "retriever.json"
        if not cfg_file.is_file():
            raise VitDSIError(f"no saved retriever at {path} (missing retriever.json)")
        try:
            config = json.loads(cfg_file.read_text())
            params = dict(config["build_params"])
            name, query_args = config["retriever"], dict(config["query_args"])
            corpus_size, image_size = int(config["corpus_size"]), int(config["image_size"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise VitDSIError(
                f"{cfg_file}: not a readable saved-retriever config ({type(e).__name__}: {e}); the file is "
                "truncated, empty or not written by Retriever.save; save the index again"
            ) from None
        if not (0 <= corpus_size <= MAX_IMAGES and 1 <= image_size <= MAX_IMAGE_SIDE):
            raise VitDSIError(f"{cfg_file}: corpus_size {corpus_size:,} or image_size {image_size:,} out of bounds "
                              f"(0..{MAX_IMAGES:,} images of 1..{MAX_IMAGE_SIDE} px); save the index again")
        if device is not None:
            params["device"] = device
        try:
            retriever = create(name, **params)
        except VitDSIError as e:
            raise VitDSIError(f"{cfg_file}: {e}") from None
        retriever.query_args.update(query_args)
        retriever.corpus_size = corpus_size
        retriever.image_size = image_size
        state = load_state_file(path / "state.pt", map_location=retriever.device)
        try:
            retriever._load_state(state)
        except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as e:
            if isinstance(e, VitDSIError):
                raise
            raise VitDSIError(
                f"{path / 'state.pt'}: does not hold a '{name}' index ({type(e).__name__}: {e}); save the index again"
            ) from None
        return retriever

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.build_params().items())
        return f"{type(self).__name__}({args})"


def load_state_file(file: Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(file, weights_only=True)` with every failure as one VitDSIError naming the file:
    a missing, empty or truncated file, or one that holds pickled objects other than tensors and
    plain values (which could run code when unpickled, so they are refused, never executed)."""
    if not file.is_file():
        raise VitDSIError(f"{file}: missing; the saved index is incomplete (save it again)")
    if file.stat().st_size == 0:
        raise VitDSIError(f"{file}: empty file; the saved index is incomplete (save it again)")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e).split("WeightsUnpickler error:")[-1]
        lines = [line.strip() for line in text.splitlines() if line.strip() and "documentation" not in line]
        detail = next((line for line in lines if "GLOBAL" in line or "global" in line), None)
        if detail is not None:
            raise VitDSIError(
                f"{file}: refused to load: it holds pickled objects other than tensors and plain values, which "
                f"could run code ({detail}); only load indexes you trust, or re-save it with this version"
            ) from None
        raise VitDSIError(
            f"{file}: refused to load: not a torch file of plain tensors and values "
            f"({lines[0] if lines else type(e).__name__}); it is truncated or corrupt, or not written by "
            "Retriever.save (nothing in it was executed)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as e:
        raise VitDSIError(
            f"{file}: not a readable torch file ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
            "it is truncated or corrupt; save the index again"
        ) from None
    if not isinstance(state, dict):
        raise VitDSIError(f"{file}: expected a dict of tensors, found {type(state).__name__}; save the index again")
    return state


def query_kind_of(queries: Any, owner: str = "search") -> str:
    """'image' for a tensor, 'text' for a list / tuple / array of str; anything else (a bare str
    too) is a VitDSIError saying what `search` takes (`owner`: the retriever, for the message)."""
    if isinstance(queries, torch.Tensor):
        return "image"
    if isinstance(queries, np.ndarray) and queries.dtype.kind in "UO" and queries.ndim == 1:
        queries = queries.tolist()
    if isinstance(queries, list | tuple) and all(isinstance(t, str) for t in queries):
        return "text"
    what = ("a single str: wrap it in a list" if isinstance(queries, str) else
            f"{type(queries).__name__}" + (" (not all str)" if isinstance(queries, list | tuple) else ""))
    raise VitDSIError(f"{owner}: queries must be a uint8 image tensor [n, 3, H, W] or a list of captions (str), "
                      f"got {what}")


# ---- registry -------------------------------------------------------------------------
_REGISTRY: dict[str, type[Retriever]] = {}


def register(name: str) -> Callable[[type[Retriever]], type[Retriever]]:
    """Class decorator adding a retriever under `name`; a duplicate name is an error."""

    def wrap(cls: type[Retriever]) -> type[Retriever]:
        if name in _REGISTRY:
            raise ValueError(f"retriever '{name}' is already registered by {_REGISTRY[name].__qualname__}")
        if not issubclass(cls, Retriever):
            raise TypeError(f"@register('{name}') needs a Retriever subclass, got {cls!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered() -> dict[str, type[Retriever]]:
    """All registered retrievers, by name (importing the built-in ones first)."""
    import vitdsi.retrievers  # noqa: F401  (fills the registry)

    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Retriever]:
    known = registered()
    if name not in known:
        raise VitDSIError(f"unknown retriever '{name}'; registered retrievers: {', '.join(known)}")
    return known[name]


def create(name: str, **params: Any) -> Retriever:
    """Instantiate retriever `name`; an unknown parameter names the allowed ones."""
    cls = get(name)
    allowed = {p.name for p in retriever_params(cls)}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise VitDSIError(f"retriever '{name}': unknown parameter(s) {unknown}; allowed: {sorted(allowed)}")
    for key, value in params.items():
        check_param(name, key, value)
    return cls(**params)


def retriever_params(cls: type[Retriever]) -> list[ParamInfo]:
    """Build parameters of `cls`: its `config_params`, then its keyword constructor parameters
    (its own build parameters, seed and device), following `**params` up to the base classes'
    constructors they are passed on to."""
    out = {f.name: ParamInfo(f.name, f.default, _type_name(f.type)) for f in cls.config_params}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        forwards = False
        for p in inspect.signature(klass.__init__).parameters.values():
            forwards |= p.kind == p.VAR_KEYWORD
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in out:
                out[p.name] = ParamInfo(p.name, None if p.default is p.empty else p.default, _type_name(p.annotation))
        if not forwards or klass is Retriever:
            break
    return list(out.values())


def fields_of(config: type, *names: str) -> tuple[Field, ...]:
    """The fields `names` of dataclass `config`, in that order, for a retriever's `config_params`."""
    by_name = {f.name: f for f in fields(config)}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise TypeError(f"{config.__name__} has no field(s) {missing}")
    return tuple(by_name[n] for n in names)


def with_defaults(params: tuple[Field, ...], **defaults: Any) -> tuple[Field, ...]:
    """`params` (config fields) with other defaults for some, for a retriever whose natural setting
    differs from the config's (the config's own default is left unchanged)."""
    unknown = sorted(set(defaults) - {f.name for f in params})
    if unknown:
        raise TypeError(f"no parameter(s) {unknown} to give a default")
    out = []
    for f in params:
        if f.name in defaults:
            f = copy.copy(f)
            f.default = defaults[f.name]
        out.append(f)
    return tuple(out)


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


_CASTS = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(value: Any, annotation: str) -> Any:
    """`value` as the declared type ('int', 'float | None', ...): a YAML '5e-4' or an Optuna
    float for an int field gets the type the config expects."""
    optional = annotation.replace(" ", "").endswith("|None")
    if value is None and optional:
        return None
    if len([t for t in annotation.split("|") if t.strip() != "None"]) > 1:
        return value  # a union such as 'bool | int': kept as given, the config checks it
    cast = _CASTS.get(annotation.split("|")[0].strip())
    return value if cast is None else cast(value)


# ---- helpers shared by retrievers -----------------------------------------------------
def default_device() -> torch.device:
    """CUDA when present, else CPU (overridable per retriever with `device=`)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def images_to_float(images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 [n, 3, H, W] -> float32 in [0, 1] on `device`."""
    if device is not None:
        images = images.to(device, non_blocking=True)
    return images.float().div_(255.0)
