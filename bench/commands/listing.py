"""`bench list retrievers | datasets | studies`: what can be run, with its parameters."""

from __future__ import annotations

from enum import Enum

import typer
from rich.markup import escape
from rich.table import Table

from vitdsi.log import console


class What(str, Enum):
    retrievers = "retrievers"
    datasets = "datasets"
    studies = "studies"


def command(what: What = typer.Argument(..., help="retrievers, datasets or studies")) -> None:
    """List registered retrievers, datasets or the study files, with their parameters."""
    {"retrievers": _retrievers, "datasets": _datasets, "studies": _studies}[what.value]()


def _retrievers() -> None:
    from vitdsi.retrievers.params import retriever_params
    from vitdsi.retrievers.registry import registered

    table = Table(title="retrievers (build parameters = default; query arguments)", show_lines=True)
    for col in ("name", "queries", "learns from (at most)", "build parameters", "query arguments", "what"):
        table.add_column(col, overflow="fold")
    for name, cls in registered().items():
        params = ", ".join(f"{p.name}={p.default!r}" for p in retriever_params(cls) if p.name not in ("seed", "device"))
        query = ", ".join(f"{k}={v!r}" for k, v in cls.query_defaults.items()) or "-"
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        table.add_row(name, cls.query_kind, cls.supervision.describe(), params or "-", query, doc)
    console.print(table)
    console.print("queries: image retrievers answer query images; text retrievers answer captions (`protocol: text`, "
                  "`bench search --text`).")
    console.print("learns from: what may reach training besides the corpus pixels (corpus labels, train-query pairs "
                  "derived from labels, the indexed images' captions, pretrained weights); some retrievers use less "
                  "depending on their parameters (e.g. a zero-shot dsi-vit with random ids is label-free), and each "
                  "trial records what it used.")


def _datasets() -> None:
    from vitdsi.data import list_datasets

    table = Table(title="datasets (parameters = default)", show_lines=True)
    for col in ("name", "parameters", "what"):
        table.add_column(col, overflow="fold")
    for spec in list_datasets():
        table.add_row(spec.name, ", ".join(f"{k}={v!r}" for k, v in spec.params().items()), spec.description)
    console.print(table)


def _studies() -> None:
    from bench.commands.common import studies_dirs
    from bench.config import load_study
    from vitdsi.errors import VitDSIError

    files = sorted({p.resolve(): p for d in studies_dirs() for p in d.glob("*.yaml")}.values(), key=lambda p: p.stem)
    if not files:
        console.print("no studies/ folder with *.yaml files here")
        return
    table = Table(title=f"studies in {', '.join(str(d) for d in studies_dirs())} (trials at the file's scale)", show_lines=True)
    for col in ("name", "methods", "searched", "trials", "about"):
        table.add_column(col, overflow="fold")
    for path in files:
        try:
            s = load_study(path)
        except VitDSIError as e:
            table.add_row(path.stem, "-", "-", "-", f"[red]invalid:[/] {escape(str(e))}")
            continue
        methods = ", ".join(s.methods) if len(s.methods) > 1 else next(iter(s.methods.values())).retriever
        about = s.description.replace("\n", " ").split(". ")[0] if s.description else ""
        table.add_row(s.name, methods, ", ".join(s.space) or "-", f"{s.n_trials} {s.sampler} ({s.scale})", about)
    console.print(table)
