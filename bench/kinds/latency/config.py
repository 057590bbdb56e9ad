"""A latency study's `latency:` block (`LatencyConfig`) and its rules that reach beyond the block
itself: one k for quality and time (`bench.config.scoring.scored_k`, checked against
`latency.k`), and model size growing with the database size N (`latency.grow`: `grown_params`
applies it to a trial, `check_latency` checks it against the file's methods and search space
before any trial runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from bench.config.block import Block
from bench.config.errors import StudyConfigError
from bench.config.names import RESERVED_PARAMS, check_name, route
from bench.config.scoring import MRR_DEPTH, scored_k
from bench.kinds.latency.protocol import class_trial_data, instance_trial_data

if TYPE_CHECKING:
    from bench.config.resolved import DataConfig
    from bench.config.schema import MethodConfig, StudyFile


class GrowConfig(Block):
    """Model size that grows with the database size N (latency studies): from each threshold N up,
    its build parameters override those of every method named in `methods`; thresholds apply in
    ascending order, so the largest one reached wins (`grown_params`)."""

    # methods (names in `methods`) that grow, e.g. the DSIs and a matched baseline
    methods: list[str] = Field(min_length=1)
    at: dict[int, dict[str, Any]] = Field(min_length=1)  # threshold N -> build parameters from that N up

    @model_validator(mode="after")
    def _check(self) -> GrowConfig:
        for threshold, params in self.at.items():
            if threshold < 1:
                raise ValueError(
                    f"threshold {threshold}: a threshold is a number of indexed images, at least 1"
                )
            if not params:
                raise ValueError(
                    f"threshold {threshold}: give the build parameters that change from N = {threshold} up"
                )
        return self


class LatencyConfig(Block):
    """Latency studies (bench.kinds.latency): `dataset.n_total` is then the number of indexed
    images N, and more images of the source, never indexed, are the queries (`n_queries`), the
    train queries (`train_queries`) and the images `add` is timed with (`add_images`); under the
    instance protocol the queries and train queries are that many views of indexed images
    (bench.kinds.latency.protocol)."""

    n_queries: int = Field(256, ge=1)  # held-out query images (timed, and scored for accuracy)
    # results per query while timing; None = the k quality is scored at (the largest cutoff of
    # `metrics`, 100 with MRR). Any other value is an error: quality and time use one k
    k: int | None = Field(None, ge=1)
    batch_size: int = Field(256, ge=2)  # the batched measurement (batch 1 is always measured)
    calls: int = Field(30, ge=1)  # timed calls at batch 1 (after warm-up)
    batch_calls: int = Field(5, ge=1)  # timed calls at `batch_size`
    warmup: int = Field(3, ge=0)  # untimed calls first
    # torch / FAISS / OpenCV threads, the same for every method (1: per-query cost without thread-pool
    # effects)
    threads: int = Field(1, ge=1)
    # held-out train queries (the same count at every N) for methods that learn from queries (a
    # fine-tuned DSI, the dual encoder); 0 = none, every method indexes the corpus alone
    train_queries: int = Field(0, ge=0)
    # held-out images added with `Retriever.add` to a copy of the index after the timed searches
    # (per-image add time; the split's validation part); 0 = add time not measured
    add_images: int = Field(0, ge=0)
    grow: GrowConfig | None = None  # model size by N (see GrowConfig); None = the same at every N


def grown_params(grow: dict[str, Any] | None, method: str, n: int) -> dict[str, Any]:
    """The build parameters the `latency.grow` rule sets for `method` at N = `n` indexed images:
    the overrides of every threshold <= n, in ascending order ({} when the method does not grow)."""
    if not grow or method not in grow["methods"]:
        return {}
    at = {int(t): params for t, params in grow["at"].items()}  # keys are strings once logged as json
    out: dict[str, Any] = {}
    for threshold in sorted(t for t in at if t <= n):
        out.update(at[threshold])
    return out


def check_latency(
    sf: StudyFile, methods: dict[str, MethodConfig], known: dict[str, type], metrics: list[str], source: str
) -> None:
    """`latency.k` equals the k quality is scored at, and every `latency.grow` method and parameter
    exists, is a build parameter of each growing method's retriever and is not also searched."""
    latency = sf.latency
    if latency is None:
        return
    k = scored_k(metrics)
    if latency.k is not None and latency.k != k:
        raise StudyConfigError(
            f"{source}: field `latency.k`: searches would be timed at k={latency.k} but quality is scored at "
            f"k={k} (the largest cutoff of "
            f"`metrics`{f', {MRR_DEPTH} with MRR' if 'MRR' in metrics else ''}); quality and latency use one "
            "k: remove `latency.k` (it defaults to the scored k) or change the metrics"
        )
    grow = latency.grow
    if grow is None:
        return
    for i, name in enumerate(grow.methods):
        if name not in methods:
            raise StudyConfigError(
                f"{source}: field `latency.grow.methods[{i}]`: unknown method '{name}'; "
                f"methods in this file: {', '.join(methods)}"
            )
    for threshold, params in grow.at.items():
        for key in params:
            where = f"latency.grow.at.{threshold}.{key}"
            if route(key)[0] != "param":
                raise StudyConfigError(
                    f"{source}: field `{where}`: the grow rule sets build parameters only, "
                    "not dataset fields or query arguments"
                )
            if key in RESERVED_PARAMS:
                raise StudyConfigError(f"{source}: field `{where}`: '{key}' is set by the harness")
            if key in sf.space:
                raise StudyConfigError(
                    f"{source}: field `{where}`: '{key}' is also searched in `space`; a parameter "
                    "either grows with N or is searched, not both"
                )
            for name in grow.methods:
                check_name(known[methods[name].retriever], "param", key, where, source, method=name)


def latency_trial(
    settings: dict[str, Any], method: str, data: DataConfig, params: dict[str, Any]
) -> tuple[DataConfig, dict[str, Any], dict[str, Any]]:
    """A latency trial's dataset, build parameters and settings: `dataset.n_total` is the indexed N,
    the queries, train queries and images `add` is timed with are fixed in number whatever N
    (`bench.kinds.latency.protocol`, by protocol); the grow rule sets the parameters at N."""
    n = data.n_total
    trial_data = instance_trial_data if data.protocol == "instance" else class_trial_data
    data = trial_data(settings, data)
    params = {**params, **grown_params(settings.get("grow"), method, n)}
    return data, params, {k: v for k, v in settings.items() if k != "grow"}  # its effect is in `params`
