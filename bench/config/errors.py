"""Errors in study files: `StudyConfigError`, and pydantic's validation errors rewritten as
one line per field that names the field, what is wrong and, for a typo, the allowed names."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from vitdsi.errors import VitDSIError


class StudyConfigError(VitDSIError):
    """A study file is invalid; the message names the file, the field and what is allowed."""


def suggest(name: Any, options: Iterable[Any]) -> str:
    """ " (did you mean 'x'?)" for the option closest to a mistyped `name`, else ""."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def field_errors(error: ValidationError, root: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """One "field `path`: message" line per error; an unknown field lists the allowed ones
    (looked up from `root`, the model that was validated). `prefix` goes before every path."""
    lines = []
    for e in error.errors():
        loc = orig = tuple(e["loc"])
        tag_at = 2 if loc[:1] == ("space",) else 4 if loc[:2] == ("tune", "methods") else None
        if tag_at is not None and len(loc) > tag_at and loc[tag_at] in ("categorical", "int", "float", "log"):
            loc = loc[:tag_at] + loc[tag_at + 1 :]  # the union's tag, not a field the user wrote
        joined = ".".join(str(p) for p in loc)
        path = (prefix + joined if joined else prefix.rstrip(".")) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(root, orig[:-1]) if root is not None else []
            msg = f"unknown field '{loc[-1]}'"
            if allowed:
                msg += f"{suggest(loc[-1], allowed)}; allowed: {', '.join(allowed)}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "value_error":  # a check of ours: its message names the value already
            msg = e["msg"].removeprefix("Value error, ")
        else:
            msg = e["msg"]
            if "input" in e and e["type"] not in ("model_type", "dict_type"):
                msg += f" (got {e['input']!r})"
        lines.append(f"field `{path}`: {msg}")
    return lines


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
            tagged = [
                m
                for m in members
                if isinstance(m, type)
                and issubclass(m, BaseModel)
                and "type" in m.model_fields
                and part in (typing.get_args(m.model_fields["type"].annotation) or ())
            ]
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
