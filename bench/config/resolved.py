"""A study resolved at one scale (`Study`) and one trial of it (`TrialConfig`): frozen
pydantic models with every value filled in. `model_dump(mode="json")` is what is logged
(study_resolved.yaml, a trial's config.yaml); `model_validate` reads it back."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_serializer

from bench.config.errors import StudyConfigError, field_errors
from bench.config.names import route
from bench.config.schema import Distribution, TuneConfig, grid_points
from bench.kinds import KINDS, kind_of
from vitdsi.data.protocols import get_protocol
from vitdsi.limits import MAX_IMAGE_SIDE, MAX_IMAGES

_R = TypeVar("_R", bound="Resolved")


class Resolved(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def replace(self: _R, **changes: Any) -> _R:
        """A copy with `changes`, validated like a new one (so a YAML list becomes a tuple)."""
        return self.model_validate({**dict(self), **changes})


class DataConfig(Resolved):
    """A dataset and split with every value filled in."""

    name: str  # dataset registry name
    size: Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]  # image side in pixels
    # strict: a searched n_total or split_ratio of the wrong type is an error, not rounded or cast
    n_total: Annotated[int, Field(strict=True, ge=2, le=MAX_IMAGES)]  # images drawn for the split
    split_ratio: Annotated[float, Field(strict=True)]  # indexed fraction
    query_fractions: tuple[float, float, float]  # train / val / test share of the queries
    seed: int  # seeds the image draw and the split
    root: str | None = None  # where the files are
    limit: int | None = None  # cap on source images
    options: dict[str, Any] = Field(default_factory=dict)  # other loader parameters
    protocol: str = "class"  # what a query is: a name in vitdsi.data.protocols.PROTOCOLS
    # protocol options as the study file gives them, by block ({"instance": {...}}, defaults filled
    # in); a protocol searched in `space` whose block the file does not give takes its defaults
    protocol_args: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def protocol_options(self):
        """The vitdsi.data.protocols options of this config's protocol (None for one without options)."""
        protocol = get_protocol(self.protocol)
        return protocol.make_options(self.protocol_args.get(protocol.block or "", {}))

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
        return {
            "n_total": self.n_total,
            "split_ratio": self.split_ratio,
            "query_fractions": self.query_fractions,
            "seed": self.seed,
        }


class Method(Resolved):
    """One method of a study: a retriever with its parameters."""

    name: str  # method name (the retriever name for single-retriever studies)
    retriever: str  # registry name
    params: dict[str, Any]  # build parameters: scale preset < fixed < method params
    query: dict[str, Any]  # query arguments


class _TrialHead(Resolved):
    """The fields of a trial before the study kinds' settings."""

    study: str  # study file name
    scale: str  # scale preset
    method: str  # method name
    retriever: str  # registry name
    params: dict[str, Any]  # build parameters (without seed and device)
    query: dict[str, Any]  # query arguments
    dataset: DataConfig  # the data and split of this trial
    metrics: tuple[str, ...]  # canonical metric names
    repeats: int  # seeds to run
    seed: int  # first seed
    sampled: dict[str, Any]  # the values Optuna chose for this trial


def _kind_settings(base: type[Resolved]) -> type[Resolved]:
    """`base` with a field per study kind (bench.kinds), named by its block: the block's fields
    for a study of that kind (as the kind makes them for a trial), else None."""
    return create_model(
        f"{base.__name__}Kinds",
        __base__=base,
        **{kind.key: (dict[str, Any] | None, None) for kind in KINDS.values()},
    )


class TrialConfig(_kind_settings(_TrialHead)):
    """Everything one trial needs, fully resolved (logged as the trial's config.yaml)."""

    objective: str | None = None  # the study's objective: the validation metric training stops on

    def fingerprint(self) -> str:
        """What a trial builds: retriever, build parameters, the dataset with its options,
        protocol and split, the seeds (first seed, repeats), the settings of a study kind that
        change what is built (continual steps) and the objective (early stopping reads it). Not
        the query arguments, other metrics, names or device: trials with one fingerprint build
        the same index."""
        builds = {kind.key for kind in KINDS.values() if kind.builds}
        return digest(
            self.model_dump(
                mode="json",
                include={"retriever", "params", "dataset", "seed", "repeats", *builds, "objective"},
            )
        )

    def result_fingerprint(self) -> str:
        """The fingerprint with the query arguments and the settings of a study kind that change
        only what is measured (latency): trials with one result fingerprint measure the same
        numbers (`bench run --reuse` copies them)."""
        measures = {kind.key for kind in KINDS.values() if not kind.builds}
        return digest(
            {"build": self.fingerprint(), **self.model_dump(mode="json", include={"query", *measures})}
        )


def digest(d: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able dict (key order does not matter)."""
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _StudyHead(Resolved):
    """The fields of a study before the study kinds' settings."""

    name: str  # study name
    description: str  # what the study asks
    scale: str  # scale preset
    file: str | None = Field(exclude=True)  # the YAML it came from (not part of the record)
    methods: dict[str, Method]  # by method name; the first is the default
    dataset: DataConfig  # the data and split before sampled `dataset.*` values
    space: dict[str, Distribution]  # what Optuna searches, in file order
    sampler: str  # grid / tpe / random
    sampler_seed: int  # seeds the sampler
    n_startup_trials: int | None  # TPE: random trials before modelling
    n_trials: int  # COMPLETE trials wanted
    metric: str  # objective metric (canonical name)
    direction: str  # maximize / minimize
    metrics: tuple[str, ...]  # canonical names, objective included
    repeats: int  # seeds per trial
    seed: int  # first retriever seed
    experiment: str  # MLflow experiment
    log_index: bool  # store each trial's index as an artifact
    plugins: tuple[str, ...] = Field(exclude=True)  # imported while loading (not part of the record)


class Study(_kind_settings(_StudyHead)):
    """A validated study at one scale: what `bench run` executes."""

    threads: int | None = None  # torch / FAISS / OpenCV threads per worker (None: libraries' default)
    report: dict[str, Any] = Field(default_factory=dict)  # ReportConfig fields: extra report sections
    tune: TuneConfig | None = None  # the tune block at this scale (bench.config.tune); None = nothing tuned

    @model_serializer(mode="wrap")
    def _record(self, handler) -> dict[str, Any]:
        # Dumped in the study file's layout (sampler / objective / mlflow blocks; a study kind's
        # settings and threads only when set; report always). The fingerprint hashes this dump
        # (less report) and stored studies resume only with an equal one, so the layout must not change.
        d = handler(self)
        out = {k: d.pop(k) for k in ("name", "description", "scale", "methods", "dataset", "space")}
        out["sampler"] = {
            "type": d.pop("sampler"),
            "seed": d.pop("sampler_seed"),
            "n_startup_trials": d.pop("n_startup_trials"),
        }
        out["n_trials"] = d.pop("n_trials")
        out["objective"] = {"metric": d.pop("metric"), "direction": d.pop("direction")}
        out.update({k: d.pop(k) for k in ("metrics", "repeats", "seed")})
        out["mlflow"] = {"experiment": d.pop("experiment"), "log_index": d.pop("log_index")}
        out.update({k: v for k, v in d.items() if v is not None})
        return out

    @property
    def default_study_name(self) -> str:
        """Optuna study name: one study per (file, scale), since scales change the numbers."""
        return f"{self.name}-{self.scale}"

    def grid(self) -> list[dict[str, Any]]:
        """Every point of the space, in file order (first key varies slowest); grid sampler only."""
        return grid_points(self.space)

    def trial_config(self, sampled: dict[str, Any]) -> TrialConfig:
        """The trial for one set of sampled values (keys as in `space`)."""
        unknown = sorted(set(sampled) - set(self.space))
        if unknown:
            raise StudyConfigError(
                f"study '{self.name}': sampled values for {unknown} are not in its space {sorted(self.space)}"
            )
        method_name = sampled.get("method", next(iter(self.methods)))
        if method_name not in self.methods:
            raise StudyConfigError(
                f"study '{self.name}': unknown method '{method_name}'; methods: {', '.join(self.methods)}"
            )
        method = self.methods[method_name]
        params, query = dict(method.params), dict(method.query)
        data_changes: dict[str, Any] = {}
        for key, value in sampled.items():
            where, name = route(key)
            if where == "dataset":
                data_changes[name] = value
            elif where == "query":
                query[name] = value
            elif where == "param":
                params[name] = value
        try:
            data = self.dataset.replace(**data_changes)
        except ValidationError as e:
            lines = field_errors(e, prefix="dataset.")
            raise StudyConfigError(f"{self.file or self.name}: {sampled}: {'; '.join(lines)}") from None
        kinds: dict[str, Any] = {}
        study_kind = kind_of(self)
        if study_kind is not None:
            kind, settings = study_kind
            data, params, kinds[kind.key] = kind.trial_settings(settings, method_name, data, params)
        return TrialConfig(
            study=self.name,
            scale=self.scale,
            method=method_name,
            retriever=method.retriever,
            params=params,
            query=query,
            dataset=data,
            metrics=self.metrics,
            repeats=self.repeats,
            seed=self.seed,
            sampled=sampled,
            objective=self.metric,
            **kinds,
        )

    def fingerprint(self) -> str:
        """Hash of what makes trials comparable (not the budget, the description or MLflow names):
        a stored study resumes only with the same fingerprint."""
        d = self.model_dump()
        for key in ("description", "n_trials", "mlflow", "threads", "report"):
            d.pop(key, None)
        return digest(d)
