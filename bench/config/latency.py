"""The rules of a latency study's `latency:` block that reach beyond the block itself: one k
for quality and time (`scored_k`, checked against `latency.k`), and model size growing with the
database size N (`latency.grow`: `grown_params` applies it to a trial, `check_latency` checks it
against the file's methods and search space before any trial runs)."""

from __future__ import annotations

from typing import Any

from bench.config.errors import StudyConfigError
from bench.config.schema import RESERVED_PARAMS, MethodConfig, StudyFile, route

MRR_DEPTH = 100  # MRR has no cutoff: a trial returns this many results for it


def scored_k(metrics: list[str] | tuple[str, ...]) -> int:
    """The k a trial ranks its queries to and scores quality at: the largest cutoff of the ranked
    metrics (IA@K queries the indexed images apart), at least MRR_DEPTH when MRR is among them."""
    from vitdsi.metrics import parse_metric

    ranked = [parse_metric(m) for m in metrics if not parse_metric(m).is_indexing]
    k = max((m.k or 1 for m in ranked), default=1)
    return max(k, MRR_DEPTH) if any(m.k is None for m in ranked) else k


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


def check_latency(sf: StudyFile, methods: dict[str, MethodConfig], known: dict[str, type], metrics: list[str],
                  source: str) -> None:
    """`latency.k` equals the k quality is scored at, and every `latency.grow` method and parameter
    exists, is a build parameter of each growing method's retriever and is not also searched."""
    from bench.config.checks import check_name

    latency = sf.latency
    if latency is None:
        return
    k = scored_k(metrics)
    if latency.k is not None and latency.k != k:
        raise StudyConfigError(
            f"{source}: field `latency.k`: searches would be timed at k={latency.k} but quality is scored at k={k} "
            f"(the largest cutoff of `metrics`{f', {MRR_DEPTH} with MRR' if 'MRR' in metrics else ''}); quality and "
            "latency use one k: remove `latency.k` (it defaults to the scored k) or change the metrics"
        )
    grow = latency.grow
    if grow is None:
        return
    for i, name in enumerate(grow.methods):
        if name not in methods:
            raise StudyConfigError(f"{source}: field `latency.grow.methods[{i}]`: unknown method '{name}'; "
                                   f"methods in this file: {', '.join(methods)}")
    for threshold, params in grow.at.items():
        for key in params:
            where = f"latency.grow.at.{threshold}.{key}"
            if route(key)[0] != "param":
                raise StudyConfigError(f"{source}: field `{where}`: the grow rule sets build parameters only, "
                                       "not dataset fields or query arguments")
            if key in RESERVED_PARAMS:
                raise StudyConfigError(f"{source}: field `{where}`: '{key}' is set by the harness")
            if key in sf.space:
                raise StudyConfigError(f"{source}: field `{where}`: '{key}' is also searched in `space`; a parameter "
                                       "either grows with N or is searched, not both")
            for name in grow.methods:
                check_name(known[methods[name].retriever], "param", key, where, source, method=name)
