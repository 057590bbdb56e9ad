"""The retriever registry: retrievers by name (`@register`), looked up (`get`), listed
(`registered`) and built with checked parameters (`create`).

Importing this module runs `vitdsi/retrievers/__init__.py` first (Python imports a package
before its modules), and that imports every built-in retriever, so the registry is full before
anyone reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vitdsi.errors import VitDSIError
from vitdsi.limits import check_param
from vitdsi.retrievers.base import Retriever
from vitdsi.retrievers.params import retriever_params

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
    """All registered retrievers, by name: the built-in ones and those of imported plugins."""
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Retriever]:
    """The retriever class registered as `name`; an unknown name lists the registered ones."""
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
