"""The study file as written: pydantic models of the YAML, checked field by field.

Keys of `fixed` and `space` address three places (`bench.config.names.route`): `dataset.<field>`,
`query.<arg>` (query-time arguments) and, without a prefix, the retriever's build
parameters; `method` (space only) picks one of the file's `methods`. The blocks of the study
kinds (`latency:`, `continual:`) are their packages' models (`bench.kinds`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import typing
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from bench.config.block import Block as _Model
from bench.config.errors import StudyConfigError, field_errors, suggest
from bench.kinds import KINDS
from vitdsi.data.protocols import PROTOCOLS, Protocol
from vitdsi.errors import VitDSIError
from vitdsi.limits import MAX_IMAGE_SIDE, MAX_IMAGES, MAX_SEED
from vitdsi.training.train_views import VIEW_STRENGTHS

Scalar = bool | int | float | str | None
MAX_REPEATS = 100  # seeds per trial
DEFAULT_STUDY_METRICS = ["P@10", "MAP@10", "R@100", "nDCG@10", "MRR", "FPR@10", "IA@1", "IA@5"]


class Categorical(_Model):
    """One of a list of values (a YAML list is shorthand for this)."""

    type: Literal["categorical"] = "categorical"  # the union's tag
    choices: list[Scalar] = Field(min_length=1)  # the values, in grid order

    def values(self) -> list[Scalar]:
        return list(self.choices)


class IntRange(_Model):
    """Integers low..high (inclusive) with a step, optionally log-uniform."""

    type: Literal["int"]  # the union's tag
    low: int  # smallest value
    high: int  # largest value (inclusive)
    step: int = Field(1, ge=1)  # spacing of the values
    log: bool = False  # sample log-uniformly (needs low >= 1 and step 1)

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("a log int range needs low >= 1 and step 1")
        return self

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


class FloatRange(_Model):
    """Floats in [low, high]: uniform, stepped (`step`), or log-uniform (`log: true` or type `log`)."""

    type: Literal["float", "log"]  # the union's tag; `log` is short for `float` with `log: true`
    low: float  # smallest value
    high: float  # largest value
    step: float | None = Field(None, gt=0)  # spacing of the values (a grid can enumerate them)
    log: bool = False  # sample log-uniformly (needs low > 0, no step)

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if self.type == "log":
            self.log = True
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("a range is either log or stepped, not both")
        return self

    def values(self) -> list[float]:
        if self.step is None:
            raise ValueError("only a stepped float range can be enumerated")
        n = int(np.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [float(round(self.low + i * self.step, 12)) for i in range(n)]


Distribution = Annotated[Categorical | IntRange | FloatRange, Field(discriminator="type")]


class _ProtocolBlock(_Model):
    """A protocol's options as a study file writes them under `dataset:`; checked by the
    protocol's own options dataclass (vitdsi.data.protocols)."""

    options_class: ClassVar[type]

    @model_validator(mode="after")
    def _check(self) -> _ProtocolBlock:
        try:
            self.options_class(**self.model_dump())
        except VitDSIError as e:
            raise ValueError(str(e)) from None
        return self


@functools.cache
def block_model(protocol: Protocol) -> type[_ProtocolBlock]:
    """The pydantic model of a protocol's options block, built from its options dataclass."""
    hints = typing.get_type_hints(protocol.options)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(protocol.options)}
    model = create_model(f"{protocol.options.__name__}Block", __base__=_ProtocolBlock, **fields)
    model.options_class = protocol.options
    return model


class DatasetConfig(_Model):
    """Dataset and split; an unset field takes the scale preset's value. The options of a
    protocol go in a block named by the protocol registry (`instance:`, `unseen:`, ...)."""

    model_config = ConfigDict(extra="allow")  # the protocol blocks, checked by `protocol_blocks`

    name: str | None = None  # dataset registry name (`bench list datasets`)
    root: str | None = None  # where the files are, for file-based sources
    size: int | None = Field(None, ge=1, le=MAX_IMAGE_SIDE)  # square image side in pixels
    n_total: int | None = Field(None, ge=2, le=MAX_IMAGES)  # images drawn for the split (indexed + queries)
    split_ratio: float | None = Field(None, gt=0, le=1)  # fraction of n_total that is indexed
    query_fractions: tuple[float, float, float] | None = None  # train / val / test share of the queries
    # seeds the draw of images and the split (all trials share one split)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    limit: int | None = Field(None, ge=1, le=MAX_IMAGES)  # keep at most this many source images (stratified)
    options: dict[str, Any] = Field(default_factory=dict)  # other loader parameters (e.g. fit: pad)
    protocol: str = "class"  # what a query is: a name in vitdsi.data.protocols.PROTOCOLS

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, v: str) -> str:
        if v not in PROTOCOLS:
            raise ValueError(f"unknown protocol '{v}'{suggest(v, PROTOCOLS)}; known: {', '.join(PROTOCOLS)}")
        return v

    def protocol_blocks(self) -> dict[str, dict[str, Any]]:
        """The protocol option blocks the file gives, checked and with defaults filled in, by block
        name; a key that is neither a field nor a registered protocol's block is an error."""
        blocks = {p.block: p for p in PROTOCOLS.values() if p.block}
        out = {}
        for key, value in (self.model_extra or {}).items():
            if value is None and key in blocks:  # `instance: null`, as if not written
                continue
            if key not in blocks:
                allowed = [*DatasetConfig.model_fields, *blocks]
                raise StudyConfigError(
                    f"field `dataset.{key}`: unknown field '{key}'{suggest(key, allowed)}; "
                    f"allowed: {', '.join(allowed)}"
                )
            try:
                out[key] = block_model(blocks[key]).model_validate(value or {}).model_dump()
            except ValidationError as e:
                raise StudyConfigError("; ".join(field_errors(e, prefix=f"dataset.{key}."))) from None
        return out


class SamplerConfig(_Model):
    """The Optuna sampler."""

    type: Literal["grid", "tpe", "random"] | None = (
        None  # default: grid when every dimension is a list of choices
    )
    # seeds the sampler (per trial number, so parallel workers differ)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    n_startup_trials: int | None = Field(None, ge=0)  # TPE: random trials before modelling


class ObjectiveConfig(_Model):
    """What Optuna optimises (read on the validation queries)."""

    metric: str = "MAP@10"  # a metric name (vitdsi.metrics), added to `metrics` when missing
    direction: Literal["maximize", "minimize"] | None = None  # default: the metric's own


class MLflowConfig(_Model):
    """Where the study's runs are logged."""

    experiment: str | None = None  # MLflow experiment; default: the study name
    log_index: bool = True  # store the trained index of each trial as an artifact (for `bench search`)


class ReportConfig(_Model):
    """What `bench report` adds to this study's report beyond the sections every study gets."""

    paper_table: bool = (
        False  # the paper's Table 1 beside our numbers, per DB size and method (bench/paper.py)
    )
    # methods (study-file names or retriever names) that every other trial is also compared with,
    # paired and Holm-corrected, on each split: e.g. the label-free baselines a DSI has to beat
    compare_with: list[str] = Field(default_factory=list)
    # a tie is claimed only when two one-sided tests show |difference| < this margin (in units of
    # the objective, e.g. 0.02 MAP@10); None: no tie is ever claimed, a non-difference is "undecided"
    equivalence_margin: float | None = Field(None, gt=0, le=1)
    # the primary seed-level test: a two-level bootstrap over seeds, then queries within them, or a
    # paired Student t over the per-seed mean differences
    paired_test: Literal["bootstrap", "seed-t"] = "bootstrap"
    bootstrap_samples: int = Field(10_000, ge=1_000, le=1_000_000)  # bootstrap replicates per comparison


def _categorical_shorthand(space: Any) -> Any:
    """A YAML list in a mapping of distributions is shorthand for `{type: categorical, choices: [...]}`."""
    if isinstance(space, dict):
        return {
            k: {"type": "categorical", "choices": v} if isinstance(v, list) else v for k, v in space.items()
        }
    return space


class TuneConfig(_Model):
    """Tuning before the comparison (bench.study.tuning): each method named in `methods` first gets
    `trials_per_method` trials over its own knobs, one seed each, scored on the validation queries;
    its best recipe is then merged into its parameters for the study's trials on every seed."""

    trials_per_method: int = Field(ge=1)  # finished tuning trials per method: the same budget for each
    sampler: Literal["tpe", "random"] = "tpe"  # how knobs are drawn
    seed: int = Field(0, ge=0, le=MAX_SEED)  # seeds the sampler (per trial number)
    # TPE: random trials first; None = half the budget, at most 10
    n_startup_trials: int | None = Field(None, ge=0)
    methods: dict[str, dict[str, Distribution]] = Field(min_length=1)  # method -> build parameter -> range

    @field_validator("methods", mode="before")
    @classmethod
    def _shorthand(cls, methods: Any) -> Any:
        if isinstance(methods, dict):
            return {m: _categorical_shorthand(knobs) for m, knobs in methods.items()}
        return methods


class ViewsConfig(_Model):
    """The training views of the whole study (vitdsi.training.train_views), declared once so every
    method trains at augmentation parity: sets the build parameter `views` of every method whose
    retriever has one and `index_views` of the DSIs, unless the method's `params` set them
    (bench.config.views)."""

    strength: Literal[VIEW_STRENGTHS]  # the view family's strength, for every method
    index_views: int = Field(0, ge=0)  # DSIs: pseudo-query views of each indexed image per indexing epoch

    @model_validator(mode="after")
    def _check(self) -> ViewsConfig:
        if self.index_views and self.strength == "none":
            raise ValueError(
                f"index_views {self.index_views} needs views to draw: set `strength` to light, medium or "
                "strong"
            )
        return self


class MethodConfig(_Model):
    """One named method of a multi-method study."""

    retriever: str  # registry name (`bench list retrievers`)
    params: dict[str, Any] = Field(default_factory=dict)  # build parameters of this method
    query: dict[str, Any] = Field(default_factory=dict)  # query arguments of this method


class _StudyFileHead(_Model):
    """The fields of a study file before the study kinds' blocks."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # study name; also the default experiment
    description: str = ""  # what the study asks (shown by `bench list` and in reports)
    scale: str = "small"  # default scale preset; `bench run --scale` overrides it
    # modules or .py files (relative to the study) that register retrievers
    plugins: list[str] = Field(default_factory=list)
    retriever: str | None = None  # one retriever ...
    methods: dict[str, MethodConfig] | None = None  # ... or several named (retriever, params) methods
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)  # the data and the split
    fixed: dict[str, Any] = Field(default_factory=dict)  # parameters every trial uses
    query: dict[str, Any] = Field(default_factory=dict)  # query arguments every trial uses
    views: ViewsConfig | None = None  # training views of every method, at parity (see ViewsConfig)
    space: dict[str, Distribution] = Field(default_factory=dict)  # what Optuna searches
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)  # how it searches
    n_trials: int | None = Field(None, ge=1)  # finished trials wanted; default: the whole grid, or 20
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)  # what it optimises
    # logged per trial
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_STUDY_METRICS), min_length=1)
    # seeds per trial; metrics are the mean over seeds with a 95% CI
    repeats: int = Field(1, ge=1, le=MAX_REPEATS)
    seed: int = Field(0, ge=0, le=MAX_SEED)  # first retriever seed; repeat r uses seed + r
    # torch / FAISS / OpenCV threads per worker; None = the libraries' default (every core). With
    # several workers on one machine, give each cores / workers: two 2-thread workers on 2 cores
    # trained DSIs 5-15x slower than two 1-thread ones
    threads: int | None = Field(None, ge=1)
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)  # where runs are logged


# each study kind's block (bench.kinds), e.g. `latency:`; setting one makes the study of that kind
_StudyFileKinds = create_model(
    "_StudyFileKinds",
    __base__=_StudyFileHead,
    **{kind.key: (kind.config | None, None) for kind in KINDS.values()},
)


class StudyFile(_StudyFileKinds):
    """The YAML as written (bench.config.resolution turns it into a `Study`)."""

    tune: TuneConfig | None = None  # tune each named method alike before the comparison (see TuneConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)  # extra report sections (see ReportConfig)
    scales: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-scale overrides of the fields above

    @field_validator("space", mode="before")
    @classmethod
    def _shorthand(cls, space: Any) -> Any:
        return _categorical_shorthand(space)

    @model_validator(mode="after")
    def _one_retriever_source(self) -> StudyFile:
        if self.seed + self.repeats - 1 > MAX_SEED:
            raise ValueError(
                f"`seed` + `repeats` - 1 = {self.seed + self.repeats - 1} exceeds the largest seed "
                f"{MAX_SEED} (repeat r uses seed + r)"
            )
        if (self.retriever is None) == (self.methods is None):
            raise ValueError(
                "give either `retriever` (one retriever) or `methods` (several named ones), not both or "
                "neither"
            )
        if self.methods is not None and not self.methods:
            raise ValueError("`methods` is empty; name at least one method")
        return self


def validate_file(data: dict[str, Any], source: str) -> StudyFile:
    """`data` as a `StudyFile`, or a `StudyConfigError` with one line per bad field."""
    try:
        return StudyFile.model_validate(data)
    except ValidationError as e:
        lines = field_errors(e, StudyFile)
        raise StudyConfigError(
            f"{source}: invalid study file\n" + "\n".join("  " + line for line in lines)
        ) from None


def enumerable(d: Any) -> bool:
    """Whether a grid can list the values of dimension `d`."""
    return isinstance(d, Categorical | IntRange) or (isinstance(d, FloatRange) and d.step is not None)


def grid_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every point of an enumerable space, in key order (the first key varies slowest)."""
    keys = list(space)
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(space[k].values() for k in keys))
    ]
