"""Checks of a resolved study before any trial runs: parameter names and value types against
the retrievers, a dry construction of each distinct configuration, every trial's split, and
(`check_data`) that the data are where the study says and large enough."""

from __future__ import annotations

import json
from typing import Any

from bench.config.errors import StudyConfigError
from bench.config.names import route
from bench.config.resolved import DataConfig, Study
from bench.config.schema import Categorical, FloatRange, IntRange, StudyFile
from bench.kinds import kind_of
from vitdsi.data import DATASETS
from vitdsi.data.registry import probe_dataset
from vitdsi.data.split import split_sizes
from vitdsi.errors import DatasetNotFoundError, VitDSIError
from vitdsi.limits import check_param
from vitdsi.retrievers.params import retriever_params
from vitdsi.retrievers.registry import registered


def _is_union(annotation: str) -> bool:
    return len([t for t in annotation.split("|") if t.strip() not in ("", "None")]) > 1


def _bound_error(retriever: str, key: str, value: Any) -> str | None:
    """The bound `value` breaks as a build parameter of `retriever` (vitdsi.limits), if any."""
    try:
        check_param(retriever, key, value)
    except VitDSIError as e:
        return str(e)
    return None


def check_values(study: Study, sf: StudyFile, known: dict, source: str) -> None:
    """Types against the retriever's defaults, then a dry construction of each distinct
    configuration (so a bad choice such as `mode: finetuned` fails now, not in trial 7)."""

    infos = {
        name: {p.name: p for p in retriever_params(known[m.retriever])} for name, m in study.methods.items()
    }
    problems: list[str] = []  # every bad value, each naming its field; raised together
    beyond: dict[str, str] = {}  # field -> the bound (vitdsi.limits) its value breaks

    def check_type(method: str, key: str, value: Any, where: str) -> None:
        info = infos[method].get(key)
        default = info.default if info is not None else None
        if default is None or value is None or _is_union(info.annotation):
            return  # a union such as 'bool | int' is checked by the retriever's dry construction
        ok = {
            bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            str: lambda v: isinstance(v, str),
        }.get(type(default))
        if ok is not None and not ok(value):
            problems.append(
                f"field `{where}`: parameter '{key}' of retriever '{study.methods[method].retriever}' "
                f"takes {type(default).__name__} values (default {default!r}), got {value!r}"
            )
        elif (broken := _bound_error(study.methods[method].retriever, key, value)) is not None:
            # unless a rejection by the retriever names the field
            beyond[where] = f"field `{where}`: {broken}"

    paths: dict[tuple[str, str], str] = {}  # (method, parameter) -> where the study file sets it
    for mname, m in study.methods.items():
        for key, value in m.params.items():
            if sf.methods and key in sf.methods[mname].params:
                where = f"methods.{mname}.params.{key}"
            elif key in sf.fixed:
                where = f"fixed.{key}"
            else:
                where = f"(scale '{study.scale}' preset) {key}"
            paths[mname, key] = where
            check_type(mname, key, value, where)
    for key, dist in study.space.items():
        where, name = route(key)
        if where != "param":
            continue
        samples = dist.choices if isinstance(dist, Categorical) else [dist.low, dist.high]
        for mname in study.methods:
            for v in samples:
                check_type(mname, name, v, f"space.{key}")
    _raise_all(problems, source)

    _check_points(study, known, _points(study), paths, problems, source)
    problems += [line for where, line in beyond.items() if not any(f"field `{where}`" in p for p in problems)]
    _raise_all(problems, source)


def _points(study: Study) -> list[dict[str, Any]]:
    """The points whose configurations are checked: the grid, else the fixed parameters, each
    categorical choice alone and the ends of searched dataset ranges."""
    if study.sampler == "grid":
        points = study.grid()
    else:
        points = [{}] + [
            {k: c} for k, d in study.space.items() if isinstance(d, Categorical) for c in d.choices
        ]
    if study.sampler != "grid":  # the ends of searched dataset ranges too
        for k, d in study.space.items():
            if route(k)[0] == "dataset" and isinstance(d, IntRange | FloatRange):
                points += [{k: d.low}, {k: d.high}]
    return points


def _check_points(
    study: Study, known: dict, points: list[dict[str, Any]], paths: dict, problems: list[str], source: str
) -> None:
    """Check the split and query kind of each point, construct each distinct configuration on the
    CPU (its rejections added to `problems`) and check its image size."""
    seen: dict[str, Any] = {}
    checked: set[str] = set()
    for point in points:
        shown = point or "the fixed parameters"
        trial = study.trial_config(point)
        _check_split(study, trial.dataset, source, shown)
        _check_query_kind(study, trial, known[trial.retriever], source, shown)
        key = json.dumps([trial.retriever, trial.params], sort_keys=True, default=str)
        if key not in seen and len(seen) < 64:
            try:
                seen[key] = known[trial.retriever](**trial.params, device="cpu")
            except Exception as e:  # the retriever's own validation, whatever its type
                where = {
                    k: f"space.{k}" if k in point else paths.get((trial.method, k), k) for k in trial.params
                }
                for line in _rejected(known[trial.retriever], trial.params, where) or [
                    f"retriever '{trial.retriever}' rejects {shown}: {e}"
                ]:
                    if line not in problems:
                        problems.append(line)
        size_key = json.dumps([key, trial.dataset.size])
        if key in seen and size_key not in checked:
            checked.add(size_key)
            try:
                seen[key].check_image_size(trial.dataset.size)
            except VitDSIError as e:
                raise StudyConfigError(
                    f"{source}: {shown} with images of {trial.dataset.size} px (dataset.size): {e}"
                ) from None


def _rejected(cls, params: dict[str, Any], where: dict[str, str]) -> list[str]:
    """Each parameter of a configuration the retriever rejects that it also rejects on its own
    (beside its defaults), with the field that sets it; [] when only the combination fails."""
    out = []
    for key, value in params.items():
        try:
            cls(**{key: value}, device="cpu")
        except Exception as e:  # the retriever's own validation, whatever its type
            out.append(f"field `{where[key]}`: {e}")
    return out


def _raise_all(problems: list[str], source: str) -> None:
    """One StudyConfigError naming every problem found, or nothing."""
    if problems:
        raise StudyConfigError(f"{source}: " + "; ".join(problems))


def _check_query_kind(study: Study, trial, cls, source: str, shown: Any) -> None:
    """The retriever takes the queries the protocol asks (captions under `text`, images otherwise),
    and no metric queries the indexed images with themselves (IA@K) when queries are captions."""
    kind = "text" if trial.dataset.protocol == "text" else "image"
    if cls.query_kind != kind:
        fit = [n for n, c in registered().items() if c.query_kind == kind]
        raise StudyConfigError(
            f"{source}: {shown}: retriever '{cls.name}' answers {cls.query_kind} queries but "
            f"`dataset.protocol: {trial.dataset.protocol}` asks "
            f"{'captions' if kind == 'text' else 'images'}; use {', '.join(fit)}"
            + (" or another protocol" if kind == "text" else " or `protocol: text`")
        )
    study_kind = kind_of(study)
    if kind == "text" and study_kind is not None and study_kind[0].text_refusal:
        raise StudyConfigError(f"{source}: field `{study_kind[0].key}`: {study_kind[0].text_refusal}")
    ia = [m for m in study.metrics if m.startswith("IA@")]
    if kind == "text" and ia:
        raise StudyConfigError(
            f"{source}: field `metrics`: {', '.join(ia)} query the indexed images with themselves, "
            "but under the text protocol queries are captions; remove them (the training curves "
            "show a DSI's indexing accuracy)"
        )


def _check_split(study: Study, data: DataConfig, source: str, shown: Any) -> None:
    """The split of one trial has queries, test queries and (for the objective) validation queries."""

    try:
        sizes = split_sizes(data.n_total, data.split_ratio, data.query_fractions)
    except VitDSIError as e:
        raise StudyConfigError(f"{source}: {shown}: {e}") from None
    study_kind = kind_of(study)
    if study_kind is not None:
        study_kind[0].check_split(study_kind[1], sizes, source, shown)
    needs_validation = study_kind is None or study_kind[0].needs_validation
    if needs_validation and sizes["val"] == 0 and not study.metric.startswith("IA@"):
        raise StudyConfigError(
            f"{source}: {shown}: the split has no validation queries (query_fractions "
            f"{list(data.query_fractions)}), but the objective {study.metric} is read on them; give val a "
            "share"
        )


def split_summary(study: Study) -> list[str]:
    """One line per distinct split of the study's trials: the images it indexes and the train /
    validation / test queries of each seed (every seed draws its own split of these sizes)."""

    points = study.grid() if study.sampler == "grid" else [{}]
    lines: list[str] = []
    for point in points:
        d = study.trial_config(point).dataset
        sizes = split_sizes(d.n_total, d.split_ratio, d.query_fractions)
        if d.protocol == "instance":
            # the queries are views of indexed images; the images set aside are not queried
            views = d.protocol_options().view_counts(sizes["idb"])
            line = (
                f"split: {d.n_total} images, {sizes['idb']} indexed, {d.n_total - sizes['idb']} set aside; "
                f"per seed {views['train']} train / {views['val']} validation / {views['test']} test "
                "queries, each a new view of an indexed image (`protocol: instance`)"
            )
        else:
            line = (
                f"split: {d.n_total} images, {sizes['idb']} indexed; per seed {sizes['train']} train / "
                f"{sizes['val']} validation / {sizes['test']} test queries"
            )
        if d.protocol == "text":
            line += (
                " (the query images set aside; under `protocol: text` the queries are captions of the "
                "indexed images)"
            )
        if line not in lines:
            lines.append(line)
    seeds = f"{study.repeats} seed(s) per trial" + (", each its own split" if study.repeats > 1 else "")
    return [f"{line}; {seeds}" for line in lines]


def check_data(study: Study, source: str | None = None) -> list[str]:
    """Look at the data of every trial before any runs (cheap: no decoding): the dataset is
    where the study says (a missing root is an error naming it), it has at least `n_total`
    images, and the image size. Returns notes for the run header, e.g. the resolved image size
    and a warning when file images are upscaled more than 2x."""

    source = source or study.file or study.name
    points = study.grid() if study.sampler == "grid" else [{}]
    configs: dict[str, DataConfig] = {}
    for point in points:
        d = study.trial_config(point).dataset
        configs.setdefault(d.model_dump_json(), d)
    notes: list[str] = []
    probes: dict[str, Any] = {}
    for d in configs.values():
        probe_kw = {k: v for k, v in d.load_kwargs().items() if k not in ("size", "limit", "seed")}
        probe_key = json.dumps([d.name, probe_kw], sort_keys=True, default=str)
        if probe_key not in probes:
            try:
                probes[probe_key] = probe_dataset(d.name, **probe_kw)
            except DatasetNotFoundError as e:
                hint = (
                    "; give its location with `dataset: {root: PATH}` in the study or `bench run --set "
                    "dataset.root=PATH`"
                    if "root" in DATASETS[d.name].params()
                    else ""
                )
                raise StudyConfigError(f"{source}: dataset '{d.name}': {e}{hint}") from None
            except VitDSIError as e:
                raise StudyConfigError(f"{source}: dataset '{d.name}': {e}") from None
        probe = probes[probe_key]
        available = probe.n_images
        where = (
            f"{'at ' + probe.where + ' ' if probe.where else ''}has {'at most ' if probe.file_source else ''}"
        )
        if available is not None and d.limit is not None and d.limit > available:
            raise StudyConfigError(
                f"{source}: field `dataset.limit`: {d.limit} images asked but dataset '{d.name}' "
                f"{where}{available}"
            )
        if d.limit is not None:
            available = d.limit if available is None else min(available, d.limit)
        if available is not None and d.n_total > available:
            raise StudyConfigError(
                f"{source}: field `dataset.n_total`: {d.n_total} images asked but dataset '{d.name}' "
                f"{where}{available}"
                f"{' (dataset.limit)' if d.limit is not None and available == d.limit else ''}; "
                f"use n_total <= {available}"
            )
        line = f"images: {d.name} at {d.size} px"
        if probe.native_size:
            line += f" (source images {'about ' if probe.file_source else ''}{probe.native_size} px)"
        if line not in notes:
            notes.append(line)
        if probe.file_source and probe.native_size and d.size > 2 * probe.native_size:
            warn = (
                f"warning: dataset '{d.name}' images are about {probe.native_size} px but dataset.size is "
                f"{d.size}: every image is upscaled {d.size / probe.native_size:.1f}x (set dataset.size, "
                f"e.g. --set dataset.size={probe.native_size})"
            )
            if warn not in notes:
                notes.append(warn)
    return notes
