"""The Set-up's declaration of the training views (vitdsi.training.train_views): the strength
each trained method drew its views at, whether that is one strength for all (augmentation
parity), the DSIs' pseudo-query views per indexed image, and the methods that draw their views
from a fixed bank of V views per image (`view_bank`, vitdsi.training.view_bank). Read from the
study as resolved (`views:` block, `fixed`, method params), with the retriever's defaults for what
none set."""

from __future__ import annotations

from typing import Any

from bench.report.data import StudyRecord
from vitdsi.retrievers.params import retriever_params
from vitdsi.retrievers.registry import registered
from vitdsi.training.train_views import VIEWS, describe_views

FAMILY = "`vitdsi.training.train_views`"


def views_text(record: StudyRecord) -> str:
    """The Set-up row: the view family, its strength per method, and the DSIs' index views."""
    space = record.resolved.get("space", {})
    strengths: dict[str, str] = {}  # method -> strength, or 'searched'
    index_views: dict[str, str] = {}  # method -> K, or 'searched'
    banks: dict[str, str] = {}  # method -> V, or 'searched'
    for name, method in record.resolved.get("methods", {}).items():
        defaults = _defaults(method.get("retriever", "?"))
        params = method.get("params", {})
        for key, out in (("views", strengths), ("index_views", index_views), ("view_bank", banks)):
            if key in defaults or key in params:
                out[name] = "searched" if key in space else str(params.get(key, defaults.get(key)))
    if not strengths:
        return "no method trains with the view family"
    distinct = set(strengths.values())
    if len(distinct) == 1 and (only := distinct.pop()) in VIEWS:
        text = f"{FAMILY}, {describe_views(only)}, for every trained method ({', '.join(strengths)})"
    else:
        text = f"{FAMILY}, not one strength (no augmentation parity): " + ", ".join(
            f"{m} {s}" for m, s in strengths.items()
        )
    with_k = {m: k for m, k in index_views.items() if k != "0"}
    if with_k:
        text += (
            "; DSI indexing presents each indexed image and K pseudo-query views of it per epoch: "
            + ", ".join(f"{m} K={k}" for m, k in with_k.items())
        )
    with_v = {m: v for m, v in banks.items() if v != "0" and strengths.get(m) != "none"}
    if with_v:
        text += (
            "; views drawn from a bank of V views per image, made once and computed once through the frozen "
            "encoder (each presentation reads one of them or the image): "
            + ", ".join(f"{m} bank of {v} views" for m, v in with_v.items())
        )
    return text


def _defaults(retriever: str) -> dict[str, Any]:
    """The retriever's build-parameter defaults ({} for one not registered here)."""

    cls = registered().get(retriever)
    return {} if cls is None else {p.name: p.default for p in retriever_params(cls)}
