"""Resolution of a validated study file at a scale into a `Study`: parameters from general to
specific (retriever defaults < scale preset < `fixed` < the `views` block < a method's `params`;
sampled values come last, in `Study.trial_config`), dataset defaults, metrics, the sampler and the
budget."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from pydantic import ValidationError

from bench.config.checks import check_values
from bench.config.errors import StudyConfigError, field_errors, suggest
from bench.config.names import RESERVED_PARAMS, check_name, route
from bench.config.resolved import DataConfig, Method, Study
from bench.config.schema import Categorical, MethodConfig, StudyFile, enumerable
from bench.config.tune import resolve_tune
from bench.config.views import study_views
from bench.kinds import KINDS
from bench.scales import SCALES, get_scale
from vitdsi.data import DATASETS
from vitdsi.data.protocols import PROTOCOLS
from vitdsi.errors import VitDSIError
from vitdsi.metrics import parse_metric
from vitdsi.retrievers.registry import registered

MAX_GRID = 10_000
# what `scales.<scale>` may set
_PER_SCALE = sorted(set(StudyFile.model_fields) - {"name", "scale", "scales"})


def scale_overlay(sf: StudyFile, scale: str, source: str) -> dict[str, Any]:
    """The file's `scales.<scale>` block (empty if none), after checking every block names a
    known scale and only fields a scale may change."""

    for name, overlay in sf.scales.items():
        if name not in SCALES:
            raise StudyConfigError(
                f"{source}: field `scales.{name}`: unknown scale '{name}'; allowed: {', '.join(SCALES)}"
            )
        bad = sorted(set(overlay) - set(_PER_SCALE))
        if bad:
            raise StudyConfigError(
                f"{source}: field `scales.{name}`: unknown field(s) {bad}{suggest(bad[0], _PER_SCALE)}; "
                f"allowed: {', '.join(_PER_SCALE)}"
            )
    return sf.scales.get(scale, {})


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` merged into a copy of `base`, mappings key by key; a None value deletes the key."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_study(sf: StudyFile, scale_name: str, source: str) -> Study:
    """The `Study` of a validated file at `scale_name`, with every name and value checked
    against the registered retrievers and datasets."""

    scale = get_scale(scale_name)
    known = registered()
    raw_methods = _raw_methods(sf, known, source)
    _check_keys(sf, raw_methods, known, source)
    _check_method_choice(sf, raw_methods, source)
    methods = _resolve_methods(sf, raw_methods, known, scale, source)
    dataset = _resolve_dataset(sf, scale, source)
    fixed_data = {route(k)[1]: v for k, v in sf.fixed.items() if route(k)[0] == "dataset"}
    try:
        dataset = dataset.replace(**fixed_data)
    except ValidationError as e:
        raise StudyConfigError(f"{source}: " + "; ".join(field_errors(e, prefix="fixed.dataset."))) from None

    metrics, objective, direction = _metrics(sf, source)
    sampler, n_trials = _sampler_budget(sf, source)

    given = [kind for kind in KINDS.values() if getattr(sf, kind.key) is not None]
    if len(given) > 1:
        raise _fail(source, given[1].key, f"a study is a {given[0].name} or a {given[1].name}, not both")
    for kind in given:
        kind.check(sf, raw_methods, known, metrics, source)
    study = Study(
        name=sf.name,
        description=sf.description.strip(),
        scale=scale_name,
        file=source,
        methods=methods,
        dataset=dataset,
        space=sf.space,
        sampler=sampler,
        sampler_seed=sf.sampler.seed,
        n_startup_trials=sf.sampler.n_startup_trials,
        n_trials=n_trials,
        metric=objective.name,
        direction=direction,
        metrics=metrics,
        repeats=sf.repeats,
        seed=sf.seed,
        experiment=sf.mlflow.experiment or sf.name,
        log_index=sf.mlflow.log_index,
        plugins=sf.plugins,
        **{kind.key: getattr(sf, kind.key).model_dump() for kind in given},
        threads=sf.threads,
        tune=resolve_tune(sf, methods, known, scale.tune_trials, source),
        report=sf.report.model_dump(),
    )
    check_values(study, sf, known, source)
    return study


def _fail(source: str, where: str, message: str) -> StudyConfigError:
    return StudyConfigError(f"{source}: field `{where}`: {message}")


def _raw_methods(sf: StudyFile, known: dict, source: str) -> dict[str, MethodConfig]:
    """The file's methods by name (one named after its retriever without a `methods` block), each
    retriever checked to be registered."""
    # methods: (name, retriever, own params, own query, where in the file)
    if sf.methods is None:
        raw_methods = {sf.retriever: MethodConfig(retriever=sf.retriever)}
        where_retriever = {sf.retriever: "retriever"}
    else:
        raw_methods = sf.methods
        where_retriever = {m: f"methods.{m}.retriever" for m in sf.methods}
    for mname, mc in raw_methods.items():
        if mc.retriever not in known:
            raise _fail(
                source,
                where_retriever[mname],
                f"unknown retriever '{mc.retriever}'{suggest(mc.retriever, known)}; registered retrievers: "
                f"{', '.join(known)}",
            )
    return raw_methods


def _check_keys(sf: StudyFile, raw_methods: dict[str, MethodConfig], known: dict, source: str) -> None:
    """Every key of `fixed`, `space`, `query` and of each method's `params` and `query` names something
    its retrievers take."""
    # fixed / space keys: dataset.*, query.*, method, or build parameters
    for section, keys in (("fixed", sf.fixed), ("space", sf.space)):
        for key in keys:
            where, name = route(key)
            if where == "method":
                if section == "fixed":
                    raise _fail(
                        source,
                        f"fixed.{key}",
                        "a method is chosen in `space` (or by having one method), not fixed",
                    )
                if len(raw_methods) < 2 and sf.methods is None:
                    raise _fail(
                        source, f"space.{key}", "`method` needs a `methods` block naming at least two methods"
                    )
            elif where == "dataset":
                allowed = [f for f in DataConfig.model_fields if f != "options"]
                if name not in allowed:
                    raise _fail(
                        source,
                        f"{section}.{key}",
                        f"unknown dataset field '{name}'{suggest(name, allowed)}; allowed: "
                        f"{', '.join('dataset.' + a for a in allowed)}",
                    )
            elif where == "param" and name in RESERVED_PARAMS:
                hint = (
                    "set the top-level `seed` (repeat r uses seed + r)"
                    if name == "seed"
                    else "use `bench run --device`"
                )
                raise _fail(source, f"{section}.{key}", f"'{name}' is set by the harness; {hint}")
            for mname, mc in raw_methods.items():
                check_name(
                    known[mc.retriever],
                    where,
                    name,
                    f"{section}.{key}",
                    source,
                    method=mname if sf.methods else None,
                )
    for mname, mc in raw_methods.items():
        for key in mc.params:
            if key in RESERVED_PARAMS:
                raise _fail(source, f"methods.{mname}.params.{key}", f"'{key}' is set by the harness")
            check_name(known[mc.retriever], "param", key, f"methods.{mname}.params.{key}", source)
        for key in mc.query:
            check_name(known[mc.retriever], "query", key, f"methods.{mname}.query.{key}", source)
    for key in sf.query:
        for mname, mc in raw_methods.items():
            check_name(
                known[mc.retriever],
                "query",
                key,
                f"query.{key}",
                source,
                method=mname if sf.methods else None,
            )


def _check_method_choice(sf: StudyFile, raw_methods: dict[str, MethodConfig], source: str) -> None:
    """`space.method` chooses among the file's methods (required with several); `report.compare_with`
    names them."""
    if "method" in sf.space:
        dist = sf.space["method"]
        if not isinstance(dist, Categorical):
            raise _fail(source, "space.method", "a method is a categorical choice, e.g. `method: [a, b]`")
        bad = [c for c in dist.choices if c not in raw_methods]
        if bad:
            raise _fail(
                source,
                "space.method",
                f"unknown method(s) {bad}; methods in this file: {', '.join(raw_methods)}",
            )
    elif sf.methods is not None and len(sf.methods) > 1:
        raise _fail(
            source,
            "space",
            f"this study names {len(sf.methods)} methods; add `method: [{', '.join(sf.methods)}]` to `space` "
            "to compare them",
        )
    names = set(raw_methods) | {mc.retriever for mc in raw_methods.values()}
    for i, ref in enumerate(sf.report.compare_with):
        if ref not in names:
            raise _fail(
                source,
                f"report.compare_with[{i}]",
                f"'{ref}' is no method of this study{suggest(ref, sorted(names))}; "
                f"methods: {', '.join(raw_methods)}",
            )


def _resolve_methods(
    sf: StudyFile, raw_methods: dict[str, MethodConfig], known: dict, scale, source: str
) -> dict[str, Method]:
    # methods resolved: scale preset < fixed < the `views` block < method params
    fixed_params = {k: v for k, v in sf.fixed.items() if route(k)[0] == "param"}
    fixed_query = {route(k)[1]: v for k, v in sf.fixed.items() if route(k)[0] == "query"}
    methods: dict[str, Method] = {}
    for mname, mc in raw_methods.items():
        params = {k: v for k, v in scale.params_for(mc.retriever).items() if k not in RESERVED_PARAMS}
        params.update(fixed_params | study_views(sf, known[mc.retriever], source))
        params.update(mc.params)
        methods[mname] = Method(
            name=mname, retriever=mc.retriever, params=params, query={**sf.query, **fixed_query, **mc.query}
        )
    return methods


def _metrics(sf: StudyFile, source: str):
    """The study's metric names (the objective's included), the objective and its direction."""

    # metrics and objective
    metrics: list[str] = []
    for i, m in enumerate(sf.metrics):
        try:
            metrics.append(parse_metric(str(m)).name)
        except VitDSIError as e:
            raise _fail(source, f"metrics[{i}]", str(e)) from None
    try:
        objective = parse_metric(sf.objective.metric)
    except VitDSIError as e:
        raise _fail(source, "objective.metric", str(e)) from None
    if objective.name not in metrics:
        metrics.append(objective.name)
    metrics = list(dict.fromkeys(metrics))
    direction = sf.objective.direction or ("maximize" if objective.higher_is_better else "minimize")
    return metrics, objective, direction


def _sampler_budget(sf: StudyFile, source: str) -> tuple[str, int]:
    """The sampler type and the number of trials."""
    # sampler and budget
    # lists of values are an ablation (grid); ranges are a search (TPE) unless the file says grid
    sampler = sf.sampler.type or (
        "grid" if all(isinstance(d, Categorical) for d in sf.space.values()) else "tpe"
    )
    if sampler == "grid":
        for key, d in sf.space.items():
            if not enumerable(d):
                raise _fail(
                    source,
                    f"space.{key}",
                    "the grid sampler needs categorical choices, an int range or a stepped float range; "
                    "give `choices`, add a `step`, or use `sampler: {type: tpe}`",
                )
        n_points = int(np.prod([len(d.values()) for d in sf.space.values()])) if sf.space else 1
        if n_points > MAX_GRID:
            raise _fail(
                source,
                "space",
                f"the grid has {n_points} points (more than {MAX_GRID}); use `sampler: {{type: tpe}}`",
            )
        n_trials = min(sf.n_trials or n_points, n_points)
    else:
        if not sf.space:
            raise _fail(
                source,
                "space",
                f"the {sampler} sampler needs a search space; with nothing to search use `sampler: {{type: "
                f"grid}}`",
            )
        n_trials = sf.n_trials or 20
    return sampler, n_trials


def _resolve_dataset(sf: StudyFile, scale, source: str) -> DataConfig:

    d = sf.dataset
    name = d.name or scale.dataset
    if name not in DATASETS:
        raise StudyConfigError(
            f"{source}: field `dataset.name`: unknown dataset '{name}'{suggest(name, DATASETS)}; known "
            f"datasets: {', '.join(DATASETS)}"
        )
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
            raise StudyConfigError(
                f"{source}: field `dataset.options.{key}`: dataset '{name}' has no parameter "
                f"'{key}'{suggest(key, opts)}; allowed: {', '.join(opts) or 'none'}"
            )
    if d.root is not None and "root" not in allowed:
        raise StudyConfigError(
            f"{source}: field `dataset.root`: dataset '{name}' is not read from files; remove `root`"
        )
    try:
        blocks = d.protocol_blocks()
    except StudyConfigError as e:
        raise StudyConfigError(f"{source}: {e}") from None
    for protocol in PROTOCOLS.values():
        if protocol.block in blocks and d.protocol != protocol.name:
            raise StudyConfigError(
                f"{source}: field `dataset.{protocol.block}`: options of the {protocol.name} protocol, "
                f"but `dataset.protocol` is '{d.protocol}'; set `protocol: {protocol.name}` or remove them"
            )
    if d.protocol == "text" and ("captions" not in allowed or options.get("captions") in (0, False)):
        raise StudyConfigError(
            f"{source}: field `dataset.protocol`: the text protocol asks captions of the indexed images, and "
            f"dataset '{name}' has none{' (options.captions is off)' if 'captions' in allowed else ''}; use "
            "coco (with a captions file) or coco-mosaic"
        )
    fractions = d.query_fractions or (0.8, 0.1, 0.1)
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise StudyConfigError(
            f"{source}: field `dataset.query_fractions`: three non-negative numbers summing to 1 (train, "
            f"val, test), got {list(fractions)}"
        )
    return DataConfig(
        name=name,
        size=d.size or preset.get("size") or allowed.get("size") or 32,
        n_total=d.n_total or scale.n_total,
        split_ratio=d.split_ratio or scale.split_ratio,
        query_fractions=fractions,
        seed=d.seed,
        root=d.root if d.root is not None else preset.get("root"),
        limit=d.limit,
        options=options,
        protocol=d.protocol,
        protocol_args=blocks,
    )
