"""Build parameters of retrievers: their declaration (`config_params` from config dataclass
fields, keyword constructor arguments), listing (`retriever_params`, for `bench list` and
validation) and coercion of given values to the declared type (a YAML '5e-4' for a float)."""

from __future__ import annotations

import copy
import inspect
from dataclasses import Field, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ParamInfo:
    """One constructor parameter of a retriever, for `bench list retrievers` and validation."""

    name: str
    default: Any
    annotation: str


def retriever_params(cls: type) -> list[ParamInfo]:
    """Build parameters of retriever class `cls`: its `config_params`, then its keyword constructor
    parameters (its own build parameters, seed and device), following `**params` up to the base
    classes' constructors they are passed on to. `Retriever.__init__` takes `config_params` as
    `**params` and passes nothing on; `object.__init__` (next in line) adds no named parameter."""
    out = {f.name: ParamInfo(f.name, f.default, type_name(f.type)) for f in cls.config_params}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        forwards = False
        for p in inspect.signature(klass.__init__).parameters.values():
            forwards |= p.kind == p.VAR_KEYWORD
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in out:
                out[p.name] = ParamInfo(
                    p.name, None if p.default is p.empty else p.default, type_name(p.annotation)
                )
        if not forwards:
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


def type_name(annotation: Any) -> str:
    """An annotation as text: 'int', 'float | None' (annotations are strings under `from __future__
    import annotations`)."""
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


_CASTS = {"int": int, "float": float, "bool": bool, "str": str}


def coerce(value: Any, annotation: str) -> Any:
    """`value` as the declared type ('int', 'float | None', ...): a YAML '5e-4' or an Optuna
    float for an int field gets the type the config expects."""
    optional = annotation.replace(" ", "").endswith("|None")
    if value is None and optional:
        return None
    if len([t for t in annotation.split("|") if t.strip() != "None"]) > 1:
        return value  # a union such as 'bool | int': kept as given, the config checks it
    cast = _CASTS.get(annotation.split("|")[0].strip())
    return value if cast is None else cast(value)
