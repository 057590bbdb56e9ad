"""Study files: a YAML validated by pydantic, then resolved against a scale preset.

One YAML is one Optuna study (docs/design.md, "Optuna and MLflow"): the dataset and its split,
the scale preset, the retriever (or several named `methods`, for Table-1 style studies),
fixed parameters, a search space, the sampler, the trial budget, the objective, the
metrics, repeats over seeds and the MLflow experiment. Every field is checked before any
work starts: a typo or a wrong type names the file, the field and the allowed values; an
unknown retriever lists the registered ones; an unknown parameter lists the allowed ones.

Parameters resolve from general to specific (later wins): retriever defaults < scale preset
(`bench.scales`) < `fixed` < the method's `params` < the trial's sampled values. The
study's own `scales.<scale>` block is deep-merged into the file first, so a study can shrink
its grid or model at `smoke` without a second file (a `null` there deletes a key).

Keys in `fixed` and `space` address three places: `dataset.<field>` (e.g. `dataset.n_total`,
so DB size can be searched), `query.<arg>` (query-time arguments such as a beam size) and,
without a prefix, the retriever's build parameters; `method` (space only) picks a method.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import importlib.util
import json
import re
import sys
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vitdsi.errors import VitDSIError

Scalar = bool | int | float | str | None
RESERVED_PARAMS = ("seed", "device")  # set by the harness (repeats, --device), never by a study
MAX_GRID = 10_000


class StudyConfigError(VitDSIError):
    """A study file is invalid; the message names the file, the field and what is allowed."""


# ---- the file, as pydantic models ------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Categorical(_Model):
    """One of a list of values (a YAML list is shorthand for this)."""

    type: Literal["categorical"] = "categorical"
    choices: list[Scalar] = Field(min_length=1)

    def values(self) -> list[Scalar]:
        return list(self.choices)


class IntRange(_Model):
    """Integers low..high (inclusive) with a step, optionally log-uniform."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

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

    type: Literal["float", "log"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False

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


class InstanceConfig(_Model):
    """The instance protocol: queries are new views of indexed images (vitdsi.data.protocols)."""

    strength: Literal["light", "medium", "strong"] = "medium"  # view strength preset
    train_views: int = Field(2, ge=0)  # train views of each corpus image that has any
    untrained_share: float = Field(0.5, ge=0, le=1)  # share of corpus images with no train view
    hflip: bool | None = None  # mirror views half the time; None = unless the dataset forbids it


class UnseenConfig(_Model):
    """The unseen-classes protocol: some classes are indexed but never trained on (vitdsi.data.protocols)."""

    share: float = Field(0.3, gt=0, lt=1)  # share of the classes held out from every label and training pair


class GradedConfig(_Model):
    """The graded protocol: multi-label data with graded gains (vitdsi.data.protocols)."""

    gain: Literal["shared", "jaccard"] = "shared"  # shared categories with the query, or their Jaccard index


class DatasetConfig(_Model):
    """Dataset and split; an unset field takes the scale preset's value."""

    name: str | None = None  # dataset registry name (`bench list datasets`)
    root: str | None = None  # where the files are, for file-based sources
    size: int | None = Field(None, ge=1)  # square image side in pixels
    n_total: int | None = Field(None, ge=2)  # images drawn for the split (indexed + queries)
    split_ratio: float | None = Field(None, gt=0, le=1)  # fraction of n_total that is indexed
    query_fractions: tuple[float, float, float] | None = None  # train / val / test share of the queries
    seed: int = 0  # seeds the draw of images and the split (all trials share one split)
    limit: int | None = Field(None, ge=1)  # keep at most this many source images (stratified)
    options: dict[str, Any] = Field(default_factory=dict)  # other loader parameters (e.g. fit: pad)
    protocol: Literal["class", "instance", "unseen-classes", "graded"] = "class"  # what a query is (vitdsi.data.protocols)
    instance: InstanceConfig | None = None  # options of the instance protocol
    unseen: UnseenConfig | None = None  # options of the unseen-classes protocol
    graded: GradedConfig | None = None  # options of the graded protocol


class SamplerConfig(_Model):
    type: Literal["grid", "tpe", "random"] | None = None  # default: grid when every dimension is a list of choices
    seed: int = 0  # seeds the sampler (per trial number, so parallel workers differ)
    n_startup_trials: int | None = Field(None, ge=0)  # TPE: random trials before modelling


class ObjectiveConfig(_Model):
    metric: str = "MAP@10"  # a metric name (vitdsi.metrics), added to `metrics` when missing
    direction: Literal["maximize", "minimize"] | None = None  # default: the metric's own


class MLflowConfig(_Model):
    experiment: str | None = None  # MLflow experiment; default: the study name
    log_index: bool = True  # store the trained index of each trial as an artifact (for `bench search`)


class LatencyConfig(_Model):
    """Latency studies (bench/latency.py): `dataset.n_total` is then the number of indexed
    images N, and `n_queries` more images of the source, never indexed, are the queries."""

    n_queries: int = Field(256, ge=1)  # held-out query images (timed, and scored for accuracy)
    k: int = Field(10, ge=1)  # results per query while timing
    batch_size: int = Field(256, ge=2)  # the batched measurement (batch 1 is always measured)
    calls: int = Field(30, ge=1)  # timed calls at batch 1 (after warm-up)
    batch_calls: int = Field(5, ge=1)  # timed calls at `batch_size`
    warmup: int = Field(3, ge=0)  # untimed calls first
    threads: int = Field(1, ge=1)  # torch / FAISS / OpenCV threads, the same for every method (1: per-query cost without thread-pool effects)


class ContinualConfig(_Model):
    """Continual-indexing studies (DSI++): each trial indexes the first `initial` share of the
    indexed images, then adds the rest in `steps` equal batches with `Retriever.add`, and logs
    IA@1 of the original images and of every added batch, the ranked metrics and the wall time
    after each step."""

    initial: float = Field(0.5, gt=0, lt=1)  # share of the indexed images in the first index
    steps: int = Field(5, ge=1)  # add steps that bring in the rest, in equal batches


class MethodConfig(_Model):
    retriever: str  # registry name (`bench list retrievers`)
    params: dict[str, Any] = Field(default_factory=dict)  # build parameters of this method
    query: dict[str, Any] = Field(default_factory=dict)  # query arguments of this method


DEFAULT_STUDY_METRICS = ["P@10", "MAP@10", "R@100", "nDCG@10", "MRR", "FPR@10", "IA@1", "IA@5"]


class StudyFile(_Model):
    """The YAML as written (see the module docstring for how it resolves)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # study name; also the default experiment
    description: str = ""
    scale: str = "small"  # default scale preset; `bench run --scale` overrides it
    plugins: list[str] = Field(default_factory=list)  # modules or .py files (relative to the study) that register retrievers
    retriever: str | None = None  # one retriever ...
    methods: dict[str, MethodConfig] | None = None  # ... or several named (retriever, params) methods
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    fixed: dict[str, Any] = Field(default_factory=dict)  # parameters every trial uses
    query: dict[str, Any] = Field(default_factory=dict)  # query arguments every trial uses
    space: dict[str, Distribution] = Field(default_factory=dict)  # what Optuna searches
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    n_trials: int | None = Field(None, ge=1)  # finished trials wanted; default: the whole grid, or 20
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_STUDY_METRICS), min_length=1)
    repeats: int = Field(1, ge=1)  # seeds per trial; metrics are the mean over seeds with a 95% CI
    seed: int = 0  # first retriever seed; repeat r uses seed + r
    # torch / FAISS / OpenCV threads per worker; None = the libraries' default (every core). With
    # several workers on one machine, give each cores / workers: two 2-thread workers on 2 cores
    # trained DSIs 5-15x slower than two 1-thread ones
    threads: int | None = Field(None, ge=1)
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)
    latency: LatencyConfig | None = None  # makes this a latency study (see LatencyConfig)
    continual: ContinualConfig | None = None  # makes this a continual-indexing study (see ContinualConfig)
    scales: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-scale overrides of the fields above

    @field_validator("space", mode="before")
    @classmethod
    def _shorthand(cls, space: Any) -> Any:
        if isinstance(space, dict):
            return {k: {"type": "categorical", "choices": v} if isinstance(v, list) else v for k, v in space.items()}
        return space

    @model_validator(mode="after")
    def _one_retriever_source(self) -> StudyFile:
        if (self.retriever is None) == (self.methods is None):
            raise ValueError("give either `retriever` (one retriever) or `methods` (several named ones), not both or neither")
        if self.methods is not None and not self.methods:
            raise ValueError("`methods` is empty; name at least one method")
        return self


# ---- the resolved study -----------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    """A dataset and split with every value filled in."""

    name: str  # dataset registry name
    size: int  # image side in pixels
    n_total: int  # images drawn for the split
    split_ratio: float  # indexed fraction
    query_fractions: tuple[float, float, float]  # train / val / test share of the queries
    seed: int  # seeds the image draw and the split
    root: str | None = None  # where the files are
    limit: int | None = None  # cap on source images
    options: dict[str, Any] = field(default_factory=dict)  # other loader parameters
    protocol: str = "class"  # what a query is: 'class', 'instance' or 'unseen-classes' (vitdsi.data.protocols)
    instance: dict[str, Any] = field(default_factory=dict)  # InstanceOptions fields (instance protocol)
    unseen: dict[str, Any] = field(default_factory=dict)  # UnseenOptions fields (unseen-classes protocol)
    graded: dict[str, Any] = field(default_factory=dict)  # GradedOptions fields (graded protocol)

    def protocol_options(self):
        """The vitdsi.data.protocols options of this config's protocol (None for `class`)."""
        from vitdsi.data.protocols import GradedOptions, InstanceOptions, UnseenOptions

        options = {"instance": (InstanceOptions, self.instance), "unseen-classes": (UnseenOptions, self.unseen),
                   "graded": (GradedOptions, self.graded)}
        if self.protocol not in options:
            return None
        cls, fields = options[self.protocol]
        return cls(**fields)

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `vitdsi.data.load_dataset(self.name, **kw)`."""
        kw: dict[str, Any] = {"size": self.size, **self.options}
        if self.root is not None:
            kw["root"] = self.root
        if self.limit is not None:
            kw["limit"] = self.limit
            kw["seed"] = self.seed
        return kw

    def split_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `vitdsi.data.make_split(dataset, **kw)`."""
        return {"n_total": self.n_total, "split_ratio": self.split_ratio,
                "query_fractions": self.query_fractions, "seed": self.seed}


@dataclass(frozen=True)
class Method:
    name: str  # method name (the retriever name for single-retriever studies)
    retriever: str  # registry name
    params: dict[str, Any]  # build parameters: scale preset < fixed < method params
    query: dict[str, Any]  # query arguments


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs, fully resolved (logged as the trial's config.yaml)."""

    study: str  # study file name
    scale: str  # scale preset
    method: str  # method name
    retriever: str  # registry name
    params: dict[str, Any]  # build parameters (without seed and device)
    query: dict[str, Any]  # query arguments
    dataset: DataConfig
    metrics: tuple[str, ...]  # canonical metric names
    repeats: int  # seeds to run
    seed: int  # first seed
    sampled: dict[str, Any]  # the values Optuna chose for this trial
    latency: dict[str, Any] | None = None  # LatencyConfig fields, for latency studies
    continual: dict[str, Any] | None = None  # ContinualConfig fields, for continual-indexing studies

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = list(self.metrics)
        d["dataset"]["query_fractions"] = list(self.dataset.query_fractions)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> TrialConfig:
        d = copy.deepcopy(d)
        data = d.pop("dataset")
        data["query_fractions"] = tuple(data["query_fractions"])
        return TrialConfig(dataset=DataConfig(**data), **{**d, "metrics": tuple(d["metrics"])})


@dataclass(frozen=True)
class Study:
    """A validated study at one scale: what `bench run` executes."""

    name: str
    description: str
    scale: str
    file: str | None  # the YAML it came from
    methods: dict[str, Method]
    dataset: DataConfig
    space: dict[str, Categorical | IntRange | FloatRange]
    sampler: str  # grid / tpe / random
    sampler_seed: int
    n_startup_trials: int | None
    n_trials: int  # COMPLETE trials wanted
    metric: str  # objective metric (canonical name)
    direction: str  # maximize / minimize
    metrics: tuple[str, ...]  # canonical names, objective included
    repeats: int
    seed: int
    experiment: str
    log_index: bool
    plugins: tuple[str, ...]
    latency: dict[str, Any] | None = None  # LatencyConfig fields, for latency studies
    continual: dict[str, Any] | None = None  # ContinualConfig fields, for continual-indexing studies
    threads: int | None = None  # torch / FAISS / OpenCV threads per worker (None: libraries' default)

    @property
    def default_study_name(self) -> str:
        """Optuna study name: one study per (file, scale), since scales change the numbers."""
        return f"{self.name}-{self.scale}"

    def grid(self) -> list[dict[str, Any]]:
        """Every point of the space, in file order (first key varies slowest); grid sampler only."""
        return _grid_points(self.space)

    def trial_config(self, sampled: dict[str, Any]) -> TrialConfig:
        """The trial for one set of sampled values (keys as in `space`)."""
        unknown = sorted(set(sampled) - set(self.space))
        if unknown:
            raise StudyConfigError(f"study '{self.name}': sampled values for {unknown} are not in its space {sorted(self.space)}")
        method_name = sampled.get("method", next(iter(self.methods)))
        if method_name not in self.methods:
            raise StudyConfigError(f"study '{self.name}': unknown method '{method_name}'; methods: {', '.join(self.methods)}")
        method = self.methods[method_name]
        params, query = dict(method.params), dict(method.query)
        data_changes: dict[str, Any] = {}
        for key, value in sampled.items():
            where, name = _route(key)
            if where == "dataset":
                data_changes[name] = tuple(value) if name == "query_fractions" else value
            elif where == "query":
                query[name] = value
            elif where == "param":
                params[name] = value
        data = replace(self.dataset, **data_changes)
        if self.latency is not None:
            # n_total is the indexed N; n_queries more source images are the (test) queries
            n, q = data.n_total, self.latency["n_queries"]
            data = replace(data, n_total=n + q, split_ratio=n / (n + q), query_fractions=(0.0, 0.0, 1.0))
        return TrialConfig(
            study=self.name, scale=self.scale, method=method_name, retriever=method.retriever,
            params=params, query=query, dataset=data,
            metrics=self.metrics, repeats=self.repeats, seed=self.seed, sampled=dict(sampled),
            latency=dict(self.latency) if self.latency is not None else None,
            continual=dict(self.continual) if self.continual is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description of everything that decides the numbers (and the budget)."""
        return {
            "name": self.name, "description": self.description, "scale": self.scale,
            "methods": {k: asdict(m) for k, m in self.methods.items()},
            "dataset": {**asdict(self.dataset), "query_fractions": list(self.dataset.query_fractions)},
            "space": {k: v.model_dump() for k, v in self.space.items()},
            "sampler": {"type": self.sampler, "seed": self.sampler_seed, "n_startup_trials": self.n_startup_trials},
            "n_trials": self.n_trials,
            "objective": {"metric": self.metric, "direction": self.direction},
            "metrics": list(self.metrics), "repeats": self.repeats, "seed": self.seed,
            "mlflow": {"experiment": self.experiment, "log_index": self.log_index},
            **({"latency": self.latency} if self.latency is not None else {}),
            **({"continual": self.continual} if self.continual is not None else {}),
            **({"threads": self.threads} if self.threads is not None else {}),
        }

    def fingerprint(self) -> str:
        """Hash of what makes trials comparable (not the budget, the description or MLflow names):
        a stored study resumes only with the same fingerprint."""
        d = self.to_dict()
        for key in ("description", "n_trials", "mlflow", "threads"):
            d.pop(key, None)
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- loading ----------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; read it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise StudyConfigError(f"study file not found: {path}")
    if path.is_dir():
        raise StudyConfigError(f"{path}: is a directory; give a study file such as {path / 'patch_size.yaml'}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise StudyConfigError(f"{path}: not a text (UTF-8) file (byte {e.start}); a study file is YAML") from None
    except OSError as e:
        raise StudyConfigError(f"{path}: cannot read the study file: {e.strerror or e}") from None
    if "\x00" in text:
        raise StudyConfigError(f"{path}: a binary file (it holds NUL bytes); a study file is YAML")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise StudyConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise StudyConfigError(f"{path}: a study file is a mapping of fields (name, retriever, space, ...), got {type(data).__name__}")
    return data


def load_study(path: str | Path, scale: str | None = None, overrides: list[str] | None = None) -> Study:
    """Read, validate and resolve a study file at `scale` (default: the file's own), after
    `overrides` such as "dataset.root=/data/imagenet" (see `apply_overrides`)."""
    path = Path(path)
    return resolve(read_yaml(path), scale=scale, source=str(path), overrides=overrides or [])


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "<study>") -> dict[str, Any]:
    """Set fields from "path.to.field=value" strings (value read as YAML), as `bench run --set`
    does. Below `fixed`, `query` and `space` the rest of the path is one key, so
    "space.dataset.n_total=[128, 256]" sets the `dataset.n_total` dimension."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise StudyConfigError(f"{source}: --set {item!r}: write FIELD=VALUE, e.g. dataset.root=/data/imagenet")
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            if part in ("fixed", "query", "space", "params") and i + 1 < len(parts):
                parts = parts[: i + 1] + [".".join(parts[i + 1 :])]
                break
        try:
            value = yaml.load(raw, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError as e:
            raise StudyConfigError(f"{source}: --set {item!r}: the value is not valid YAML: {e}") from None
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def resolve(data: dict[str, Any], *, scale: str | None = None, source: str = "<study>",
            overrides: list[str] | None = None) -> Study:
    """Validate a study mapping (as read from YAML) and resolve it at `scale`.

    `overrides` ("field=value", as `bench run --set`) win over every layer of the file: they
    are applied after the file's `scales.<scale>` block is merged in (an override of
    `scales.*` itself, or of `scale`, is applied to the file before the merge)."""
    from bench.scales import SCALES

    overrides = list(overrides or [])
    early = [o for o in overrides if o.partition("=")[0].strip().split(".")[0] in ("scales", "scale")]
    late = [o for o in overrides if o not in early]
    data = apply_overrides(data, early, source=source)
    base = _validate(data, source)
    scale = scale or base.scale
    if scale not in SCALES:
        where = "--scale" if scale != base.scale else "field `scale`"
        raise StudyConfigError(f"{source}: {where}: unknown scale '{scale}'; allowed: {', '.join(SCALES)}")
    for name, overlay in base.scales.items():
        if name not in SCALES:
            raise StudyConfigError(f"{source}: field `scales.{name}`: unknown scale '{name}'; allowed: {', '.join(SCALES)}")
        bad = sorted(set(overlay) - (set(StudyFile.model_fields) - {"name", "scale", "scales"}))
        if bad:
            allowed = sorted(set(StudyFile.model_fields) - {"name", "scale", "scales"})
            raise StudyConfigError(f"{source}: field `scales.{name}`: unknown field(s) {bad}{_suggest(bad[0], allowed)}; allowed: {', '.join(allowed)}")
    study_file = base
    if scale in base.scales or late:
        merged = _deep_merge({k: v for k, v in data.items() if k != "scales"}, base.scales.get(scale, {}))
        merged = apply_overrides(merged, late, source=source)
        where = [f"`scales.{scale}`"] * (scale in base.scales) + ["--set"] * bool(late)
        study_file = _validate(merged, f"{source} (with {' and '.join(where)} applied)")
    _import_plugins(study_file.plugins, Path(source).parent if source != "<study>" else Path.cwd(), source)
    return _resolve(study_file, scale, source)


def _validate(data: dict[str, Any], source: str) -> StudyFile:
    try:
        return StudyFile.model_validate(data)
    except ValidationError as e:
        raise StudyConfigError(_format_errors(source, e)) from None


def _resolve(sf: StudyFile, scale_name: str, source: str) -> Study:
    from bench.scales import get_scale
    from vitdsi.metrics import parse_metric
    from vitdsi.retrievers.base import registered

    scale = get_scale(scale_name)
    known = registered()

    def fail(where: str, message: str) -> StudyConfigError:
        return StudyConfigError(f"{source}: field `{where}`: {message}")

    # methods: (name, retriever, own params, own query, where in the file)
    if sf.methods is None:
        raw_methods = {sf.retriever: MethodConfig(retriever=sf.retriever)}
        where_retriever = {sf.retriever: "retriever"}
    else:
        raw_methods = sf.methods
        where_retriever = {m: f"methods.{m}.retriever" for m in sf.methods}
    for mname, mc in raw_methods.items():
        if mc.retriever not in known:
            raise fail(where_retriever[mname], f"unknown retriever '{mc.retriever}'{_suggest(mc.retriever, known)}; registered retrievers: {', '.join(known)}")

    # fixed / space keys: dataset.*, query.*, method, or build parameters
    for section, keys in (("fixed", sf.fixed), ("space", sf.space)):
        for key in keys:
            where, name = _route(key)
            if where == "method":
                if section == "fixed":
                    raise fail(f"fixed.{key}", "a method is chosen in `space` (or by having one method), not fixed")
                if len(raw_methods) < 2 and sf.methods is None:
                    raise fail(f"space.{key}", "`method` needs a `methods` block naming at least two methods")
            elif where == "dataset":
                allowed = [f.name for f in fields(DataConfig) if f.name != "options"]
                if name not in allowed:
                    raise fail(f"{section}.{key}", f"unknown dataset field '{name}'{_suggest(name, allowed)}; allowed: {', '.join('dataset.' + a for a in allowed)}")
            elif where == "param" and name in RESERVED_PARAMS:
                hint = "set the top-level `seed` (repeat r uses seed + r)" if name == "seed" else "use `bench run --device`"
                raise fail(f"{section}.{key}", f"'{name}' is set by the harness; {hint}")
            for mname, mc in raw_methods.items():
                _check_name(known[mc.retriever], where, name, f"{section}.{key}", source, method=mname if sf.methods else None)
    for mname, mc in raw_methods.items():
        for key in mc.params:
            if key in RESERVED_PARAMS:
                raise fail(f"methods.{mname}.params.{key}", f"'{key}' is set by the harness")
            _check_name(known[mc.retriever], "param", key, f"methods.{mname}.params.{key}", source)
        for key in mc.query:
            _check_name(known[mc.retriever], "query", key, f"methods.{mname}.query.{key}", source)
    for key in sf.query:
        for mname, mc in raw_methods.items():
            _check_name(known[mc.retriever], "query", key, f"query.{key}", source, method=mname if sf.methods else None)
    if "method" in sf.space:
        dist = sf.space["method"]
        if not isinstance(dist, Categorical):
            raise fail("space.method", "a method is a categorical choice, e.g. `method: [a, b]`")
        bad = [c for c in dist.choices if c not in raw_methods]
        if bad:
            raise fail("space.method", f"unknown method(s) {bad}; methods in this file: {', '.join(raw_methods)}")
    elif sf.methods is not None and len(sf.methods) > 1:
        raise fail("space", f"this study names {len(sf.methods)} methods; add `method: [{', '.join(sf.methods)}]` to `space` to compare them")

    # methods resolved: scale preset < fixed < method params
    fixed_params = {k: v for k, v in sf.fixed.items() if _route(k)[0] == "param"}
    fixed_query = {_route(k)[1]: v for k, v in sf.fixed.items() if _route(k)[0] == "query"}
    methods: dict[str, Method] = {}
    for mname, mc in raw_methods.items():
        params = {k: v for k, v in scale.params_for(mc.retriever).items() if k not in RESERVED_PARAMS}
        params.update(fixed_params)
        params.update(mc.params)
        methods[mname] = Method(mname, mc.retriever, params, {**sf.query, **fixed_query, **mc.query})

    dataset = _resolve_dataset(sf, scale, source)
    fixed_data = {_route(k)[1]: v for k, v in sf.fixed.items() if _route(k)[0] == "dataset"}
    if fixed_data:
        if "query_fractions" in fixed_data:
            fixed_data["query_fractions"] = tuple(fixed_data["query_fractions"])
        dataset = replace(dataset, **fixed_data)

    # metrics and objective
    metrics: list[str] = []
    for i, m in enumerate(sf.metrics):
        try:
            metrics.append(parse_metric(str(m)).name)
        except VitDSIError as e:
            raise fail(f"metrics[{i}]", str(e)) from None
    try:
        objective = parse_metric(sf.objective.metric)
    except VitDSIError as e:
        raise fail("objective.metric", str(e)) from None
    if objective.name not in metrics:
        metrics.append(objective.name)
    metrics = list(dict.fromkeys(metrics))
    direction = sf.objective.direction or ("maximize" if objective.higher_is_better else "minimize")

    # sampler and budget
    # lists of values are an ablation (grid); ranges are a search (TPE) unless the file says grid
    sampler = sf.sampler.type or ("grid" if all(isinstance(d, Categorical) for d in sf.space.values()) else "tpe")
    if sampler == "grid":
        for key, d in sf.space.items():
            if not _enumerable(d):
                raise fail(f"space.{key}", "the grid sampler needs categorical choices, an int range or a stepped float range; "
                           "give `choices`, add a `step`, or use `sampler: {type: tpe}`")
        n_points = int(np.prod([len(d.values()) for d in sf.space.values()])) if sf.space else 1
        if n_points > MAX_GRID:
            raise fail("space", f"the grid has {n_points} points (more than {MAX_GRID}); use `sampler: {{type: tpe}}`")
        n_trials = min(sf.n_trials or n_points, n_points)
    else:
        if not sf.space:
            raise fail("space", f"the {sampler} sampler needs a search space; with nothing to search use `sampler: {{type: grid}}`")
        n_trials = sf.n_trials or 20

    study = Study(
        name=sf.name, description=sf.description.strip(), scale=scale_name, file=source,
        methods=methods, dataset=dataset, space=dict(sf.space), sampler=sampler,
        sampler_seed=sf.sampler.seed, n_startup_trials=sf.sampler.n_startup_trials, n_trials=n_trials,
        metric=objective.name, direction=direction, metrics=tuple(metrics), repeats=sf.repeats,
        seed=sf.seed, experiment=sf.mlflow.experiment or sf.name, log_index=sf.mlflow.log_index,
        plugins=tuple(sf.plugins),
        latency=sf.latency.model_dump() if sf.latency is not None else None,
        continual=sf.continual.model_dump() if sf.continual is not None else None,
        threads=sf.threads,
    )
    if study.latency is not None and study.continual is not None:
        raise fail("continual", "a study is a latency study or a continual-indexing study, not both")
    _check_values(study, sf, known, source)
    return study


def _resolve_dataset(sf: StudyFile, scale, source: str) -> DataConfig:
    from vitdsi.data import DATASETS

    d = sf.dataset
    name = d.name or scale.dataset
    if name not in DATASETS:
        raise StudyConfigError(f"{source}: field `dataset.name`: unknown dataset '{name}'{_suggest(name, DATASETS)}; known datasets: {', '.join(DATASETS)}")
    allowed = DATASETS[name].params()
    preset = dict(scale.dataset_params) if name == scale.dataset else {}
    options = {k: v for k, v in preset.items() if k not in ("size", "root")}
    options.update(d.options)
    first_class = {"size", "root", "limit", "seed"}
    for key in options:
        if key in first_class:
            raise StudyConfigError(f"{source}: field `dataset.options.{key}`: set `dataset.{key}` instead")
        if key not in allowed:
            opts = sorted(set(allowed) - first_class)
            raise StudyConfigError(f"{source}: field `dataset.options.{key}`: dataset '{name}' has no parameter '{key}'{_suggest(key, opts)}; allowed: {', '.join(opts) or 'none'}")
    if d.root is not None and "root" not in allowed:
        raise StudyConfigError(f"{source}: field `dataset.root`: dataset '{name}' is not read from files; remove `root`")
    for block, protocol in (("instance", "instance"), ("unseen", "unseen-classes"), ("graded", "graded")):
        if getattr(d, block) is not None and d.protocol != protocol:
            raise StudyConfigError(f"{source}: field `dataset.{block}`: options of the {protocol} protocol, but "
                                   f"`dataset.protocol` is '{d.protocol}'; set `protocol: {protocol}` or remove them")
    fractions = d.query_fractions or (0.8, 0.1, 0.1)
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise StudyConfigError(f"{source}: field `dataset.query_fractions`: three non-negative numbers summing to 1 (train, val, test), got {list(fractions)}")
    return DataConfig(
        name=name,
        size=d.size or preset.get("size") or allowed.get("size") or 32,
        n_total=d.n_total or scale.n_total,
        split_ratio=d.split_ratio or scale.split_ratio,
        query_fractions=tuple(float(f) for f in fractions),
        seed=d.seed,
        root=d.root if d.root is not None else preset.get("root"),
        limit=d.limit,
        options=options,
        protocol=d.protocol,
        instance=d.instance.model_dump() if d.instance is not None else {},
        unseen=d.unseen.model_dump() if d.unseen is not None else {},
        graded=d.graded.model_dump() if d.graded is not None else {},
    )


def _check_values(study: Study, sf: StudyFile, known: dict, source: str) -> None:
    """Types against the retriever's defaults, then a dry construction of each distinct
    configuration (so a bad choice such as `mode: finetuned` fails now, not in trial 7)."""
    from vitdsi.retrievers.base import retriever_params

    defaults = {name: {p.name: p.default for p in retriever_params(known[m.retriever])} for name, m in study.methods.items()}

    def check_type(method: str, key: str, value: Any, where: str) -> None:
        default = defaults[method].get(key)
        if default is None or value is None:
            return
        ok = {bool: lambda v: isinstance(v, bool),
              int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
              str: lambda v: isinstance(v, str)}.get(type(default))
        if ok is not None and not ok(value):
            raise StudyConfigError(f"{source}: field `{where}`: parameter '{key}' of retriever '{study.methods[method].retriever}' "
                                   f"takes {type(default).__name__} values (default {default!r}), got {value!r}")

    for mname, m in study.methods.items():
        for key, value in m.params.items():
            if sf.methods and key in sf.methods[mname].params:
                where = f"methods.{mname}.params.{key}"
            elif key in sf.fixed:
                where = f"fixed.{key}"
            else:
                where = f"(scale '{study.scale}' preset) {key}"
            check_type(mname, key, value, where)
    for key, dist in study.space.items():
        where, name = _route(key)
        if where != "param":
            continue
        samples = dist.choices if isinstance(dist, Categorical) else [dist.low, dist.high]
        for mname in study.methods:
            for v in samples:
                check_type(mname, name, v, f"space.{key}")

    if study.sampler == "grid":
        points = study.grid()
    else:
        points = [{}] + [{k: c} for k, d in study.space.items() if isinstance(d, Categorical) for c in d.choices]
    if study.sampler != "grid":  # the ends of searched dataset ranges too
        for k, d in study.space.items():
            if _route(k)[0] == "dataset" and isinstance(d, IntRange | FloatRange):
                points += [{k: d.low}, {k: d.high}]
    seen: dict[str, Any] = {}
    checked: set[str] = set()
    for point in points:
        shown = point or "the fixed parameters"
        trial = study.trial_config(point)
        _check_split(study, trial.dataset, source, shown)
        key = json.dumps([trial.retriever, trial.params], sort_keys=True, default=str)
        if key not in seen and len(seen) < 64:
            try:
                seen[key] = known[trial.retriever](**trial.params, device="cpu")
            except Exception as e:  # the retriever's own validation, whatever its type
                raise StudyConfigError(f"{source}: retriever '{trial.retriever}' rejects {shown}: {e}") from None
        size_key = json.dumps([key, trial.dataset.size])
        if key in seen and size_key not in checked:
            checked.add(size_key)
            try:
                seen[key].check_image_size(trial.dataset.size)
            except VitDSIError as e:
                raise StudyConfigError(f"{source}: {shown} with images of {trial.dataset.size} px "
                                       f"(dataset.size): {e}") from None


def _check_split(study: Study, data: DataConfig, source: str, shown: Any) -> None:
    """The split of one trial has queries, test queries and (for the objective) validation queries."""
    from vitdsi.data.split import split_sizes

    if not isinstance(data.split_ratio, int | float) or not isinstance(data.n_total, int) or isinstance(data.n_total, bool):
        raise StudyConfigError(f"{source}: {shown}: dataset.n_total must be an integer and dataset.split_ratio a number, "
                               f"got {data.n_total!r} and {data.split_ratio!r}")
    try:
        sizes = split_sizes(data.n_total, float(data.split_ratio), tuple(data.query_fractions))
    except VitDSIError as e:
        raise StudyConfigError(f"{source}: {shown}: {e}") from None
    if study.continual is not None:
        first = int(round(study.continual["initial"] * sizes["idb"]))
        if first < 1 or sizes["idb"] - first < study.continual["steps"]:
            raise StudyConfigError(
                f"{source}: {shown}: continual indexing of {sizes['idb']} indexed images needs at least one in the "
                f"first index ({first}) and one per add step ({sizes['idb'] - first} left for "
                f"{study.continual['steps']} steps); change continual.initial / continual.steps or dataset.n_total"
            )
    if study.latency is None and sizes["val"] == 0 and not study.metric.startswith("IA@"):
        raise StudyConfigError(
            f"{source}: {shown}: the split has no validation queries (query_fractions "
            f"{list(data.query_fractions)}), but the objective {study.metric} is read on them; give val a share"
        )


def check_data(study: Study, source: str | None = None) -> list[str]:
    """Look at the data of every trial before any runs (cheap: no decoding): the dataset is
    where the study says (a missing root is an error naming it), it has at least `n_total`
    images, and the image size. Returns notes for the run header, e.g. the resolved image size
    and a warning when file images are upscaled more than 2x."""
    from vitdsi.data.registry import probe_dataset
    from vitdsi.errors import DatasetNotFoundError

    source = source or study.file or study.name
    points = study.grid() if study.sampler == "grid" else [{}]
    configs: dict[str, DataConfig] = {}
    for point in points:
        d = study.trial_config(point).dataset
        configs.setdefault(json.dumps(asdict(d), sort_keys=True, default=str), d)
    notes: list[str] = []
    probes: dict[str, Any] = {}
    for d in configs.values():
        kw = d.load_kwargs()
        probe_key = json.dumps([d.name, {k: v for k, v in kw.items() if k not in ("size", "limit", "seed")}],
                               sort_keys=True, default=str)
        if probe_key not in probes:
            try:
                probes[probe_key] = probe_dataset(d.name, **{k: v for k, v in kw.items() if k not in ("size", "limit", "seed")})
            except DatasetNotFoundError as e:
                hint = ("; give its location with `dataset: {root: PATH}` in the study or `bench run --set dataset.root=PATH`"
                        if "root" in _dataset_params(d.name) else "")
                raise StudyConfigError(f"{source}: dataset '{d.name}': {e}{hint}") from None
            except VitDSIError as e:
                raise StudyConfigError(f"{source}: dataset '{d.name}': {e}") from None
        probe = probes[probe_key]
        available = probe.n_images
        if available is not None and d.limit is not None and d.limit > available:
            raise StudyConfigError(f"{source}: field `dataset.limit`: {d.limit} images asked but dataset '{d.name}' "
                                   f"{'at ' + probe.where + ' ' if probe.where else ''}has {'at most ' if probe.file_source else ''}{available}")
        if d.limit is not None:
            available = d.limit if available is None else min(available, d.limit)
        if available is not None and d.n_total > available:
            raise StudyConfigError(
                f"{source}: field `dataset.n_total`: {d.n_total} images asked but dataset '{d.name}' "
                f"{'at ' + probe.where + ' ' if probe.where else ''}has {'at most ' if probe.file_source else ''}{available}"
                f"{' (dataset.limit)' if d.limit is not None and available == d.limit else ''}; use n_total <= {available}"
            )
        line = f"images: {d.name} at {d.size} px"
        if probe.native_size:
            line += f" (source images {'about ' if probe.file_source else ''}{probe.native_size} px)"
        if line not in notes:
            notes.append(line)
        if probe.file_source and probe.native_size and d.size > 2 * probe.native_size:
            warn = (f"warning: dataset '{d.name}' images are about {probe.native_size} px but dataset.size is {d.size}: "
                    f"every image is upscaled {d.size / probe.native_size:.1f}x (set dataset.size, e.g. "
                    f"--set dataset.size={probe.native_size})")
            if warn not in notes:
                notes.append(warn)
    return notes


def _dataset_params(name: str) -> dict[str, Any]:
    from vitdsi.data import DATASETS

    return DATASETS[name].params()


def _check_name(cls, where: str, name: str, field_path: str, source: str, method: str | None = None) -> None:
    from vitdsi.retrievers.base import retriever_params

    if where == "param":
        allowed = [p.name for p in retriever_params(cls) if p.name not in RESERVED_PARAMS]
        kind = "parameter"
    elif where == "query":
        allowed = sorted(cls.query_defaults)
        kind = "query argument"
    else:
        return
    if name not in allowed:
        who = f"retriever '{cls.name}'" + (f" (method '{method}')" if method else "")
        raise StudyConfigError(f"{source}: field `{field_path}`: {who} has no {kind} '{name}'{_suggest(name, allowed)}; "
                               f"allowed: {', '.join(allowed) or 'none'}")


# ---- helpers -----------------------------------------------------------------------------
def _route(key: str) -> tuple[str, str]:
    """'dataset.n_total' -> ('dataset', 'n_total'); 'query.beam' -> ('query', 'beam');
    'method' -> ('method', 'method'); 'depth' -> ('param', 'depth')."""
    if key == "method":
        return "method", key
    for prefix in ("dataset", "query"):
        if key.startswith(prefix + "."):
            return prefix, key[len(prefix) + 1 :]
    return "param", key


def _enumerable(d: Any) -> bool:
    return isinstance(d, Categorical | IntRange) or (isinstance(d, FloatRange) and d.step is not None)


def _grid_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    import itertools

    keys = list(space)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(space[k].values() for k in keys))]


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _format_errors(source: str, error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        loc = orig = tuple(e["loc"])
        if len(loc) >= 3 and loc[0] == "space" and loc[2] in ("categorical", "int", "float", "log"):
            loc = loc[:2] + loc[3:]  # the union's tag, not a field the user wrote
        path = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(StudyFile, orig[:-1])
            msg = f"unknown field '{loc[-1]}'"
            if allowed:
                msg += f"{_suggest(loc[-1], allowed)}; allowed: {', '.join(allowed)}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = e["msg"]
            if "input" in e and e["type"] not in ("model_type", "dict_type"):
                msg += f" (got {e['input']!r})"
        lines.append(f"  field `{path}`: {msg}")
    return f"{source}: invalid study file\n" + "\n".join(lines)


def _fields_at(model: Any, loc: tuple) -> list[str]:
    """Field names of the model found by following `loc` from `model` (for 'allowed: ...')."""
    current: Any = model
    for part in loc:
        current = _unwrap(current, part)
        if current is None:
            return []
    current = _unwrap(current, None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(tp: Any, part: Any) -> Any:
    """One step down a type: a model's field, a dict's value, a union member by its tag."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            tagged = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel) and "type" in m.model_fields
                      and part in (typing.get_args(m.model_fields["type"].annotation) or ())]
            if tagged:
                return tagged[0]
            if len(members) == 1:
                tp = members[0]
            else:
                models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
                dicts = [m for m in members if typing.get_origin(m) is dict]
                tp = models[0] if models else (dicts[0] if dicts else None)
                if tp is None:
                    return None
        else:
            break
    if part is None:
        return tp
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        f = tp.model_fields.get(str(part))
        return f.annotation if f else None
    if typing.get_origin(tp) is dict:
        return typing.get_args(tp)[1]
    if typing.get_origin(tp) in (list, tuple):
        return typing.get_args(tp)[0]
    return None


def _import_plugins(plugins: list[str], base_dir: Path, source: str) -> None:
    """Import modules (dotted names) or .py files (relative to the study file) that register
    retrievers; each is imported once per process."""
    for entry in plugins:
        try:
            if entry.endswith(".py"):
                path = (base_dir / entry).resolve()
                if not path.exists():
                    raise StudyConfigError(f"{source}: field `plugins`: no file {path}")
                mod_name = "bench_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
                if mod_name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(mod_name, None)
                    raise
            else:
                importlib.import_module(entry)
        except StudyConfigError:
            raise
        except Exception as e:
            raise StudyConfigError(f"{source}: field `plugins`: cannot import '{entry}': {type(e).__name__}: {e}") from None
