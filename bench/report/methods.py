"""The Set-up's record of what each method built: its retriever, every build parameter as the
study resolved it (scale preset < fixed < method params; searched ones with their range, the
rest at the retriever's defaults) and its query arguments, and the `bench run --set`
overrides of the run."""

from __future__ import annotations

import json
from typing import Any

from bench.report.data import StudyRecord
from bench.tracking import OVERRIDES_TAG
from vitdsi.retrievers.params import retriever_params
from vitdsi.retrievers.registry import registered

RESERVED = ("seed", "device")  # set per trial by the harness, not by the study


def overrides_text(record: StudyRecord) -> str:
    """The run's `--set` overrides as the Set-up prints them."""
    raw = record.tags.get(OVERRIDES_TAG)
    if raw is None:
        return "not recorded"
    items = json.loads(raw)
    return ", ".join(f"`--set {o}`" for o in items) if items else "none"


def methods_section(record: StudyRecord) -> str:
    """One block per method: retriever, build parameters, query arguments."""
    methods = record.resolved.get("methods", {})
    space = record.resolved.get("space", {})
    blocks = []
    for name, method in methods.items():
        retriever = method.get("retriever", "?")
        params = dict(method.get("params", {}))
        query = dict(method.get("query", {}))
        defaults, query_defaults = _defaults(retriever)
        # a searched parameter is this method's when its retriever has it (or is unknown here)
        searched = {
            k: range_text(v)
            for k, v in space.items()
            if k != "method"
            and not k.startswith(("dataset.", "query."))
            and (not defaults or k in defaults or k in params)
        }
        searched_query = {
            k[len("query.") :]: range_text(v)
            for k, v in space.items()
            if k.startswith("query.")
            and (not query_defaults or k[len("query.") :] in query_defaults or k[len("query.") :] in query)
        }
        tuned = {
            k: range_text(v)
            for k, v in ((record.resolved.get("tune") or {}).get("methods") or {}).get(name, {}).items()
        }
        rows = [f"{k}={_value(v)}" for k, v in params.items() if k not in searched and k not in tuned]
        rows += [f"{k}={v} (searched)" for k, v in searched.items()]
        rows += [f"{k}={v} (tuned, see Tuning)" for k, v in tuned.items()]
        rest = [
            f"{k}={_value(v)}"
            for k, v in defaults.items()
            if k not in params and k not in searched and k not in tuned
        ]
        query_rows = [
            f"{k}={_value(v)}" for k, v in {**query_defaults, **query}.items() if k not in searched_query
        ]
        query_rows += [f"{k}={v} (searched)" for k, v in searched_query.items()]
        lines = [
            f"- **{name}**: retriever `{retriever}`",
            f"  - build parameters: {', '.join(rows) or 'none set'}",
        ]
        if rest:
            lines.append(f"  - at the retriever's defaults: {', '.join(rest)}")
        lines.append(f"  - query arguments: {', '.join(query_rows) or 'none'}")
        blocks.append("\n".join(lines))
    return (
        "Methods as resolved at this scale (scale preset < `fixed` < `views` < the method's `params` < "
        "`--set`); "
        "defaults are those of the retriever in the code that wrote this report.\n\n" + "\n".join(blocks)
    )


def _defaults(retriever: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The retriever's build-parameter and query-argument defaults ({} for one not registered here)."""

    cls = registered().get(retriever)
    if cls is None:
        return {}, {}
    return {p.name: p.default for p in retriever_params(cls) if p.name not in RESERVED}, dict(
        cls.query_defaults
    )


def range_text(spec: dict[str, Any]) -> str:
    """A searched dimension in words: its choices, or its bounds."""
    if spec.get("type") == "categorical":
        return " | ".join(_value(c) for c in spec.get("choices", []))
    return f"{spec.get('low')}..{spec.get('high')}" + (" (log)" if spec.get("log") else "")


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, list | dict) else str(v)
