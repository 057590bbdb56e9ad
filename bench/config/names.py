"""Names in a study file: where a key of `fixed` / `space` points (`route`), the build
parameters the harness sets itself (`RESERVED_PARAMS`) and whether a retriever has a named
parameter or query argument (`check_name`)."""

from __future__ import annotations

from bench.config.errors import StudyConfigError, suggest
from vitdsi.retrievers.params import retriever_params

RESERVED_PARAMS = ("seed", "device")  # set by the harness (repeats, --device), never by a study


def route(key: str) -> tuple[str, str]:
    """'dataset.n_total' -> ('dataset', 'n_total'); 'query.beam' -> ('query', 'beam');
    'method' -> ('method', 'method'); 'depth' -> ('param', 'depth')."""
    if key == "method":
        return "method", key
    for prefix in ("dataset", "query"):
        if key.startswith(prefix + "."):
            return prefix, key[len(prefix) + 1 :]
    return "param", key


def check_name(cls, where: str, name: str, field_path: str, source: str, method: str | None = None) -> None:
    """A build parameter (`where` 'param') or query argument ('query') that retriever `cls`
    has; other places are not checked here."""
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
        raise StudyConfigError(
            f"{source}: field `{field_path}`: {who} has no {kind} '{name}'{suggest(name, allowed)}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
