"""`bench list retrievers | datasets | studies`: what can be run, with its parameters."""

from __future__ import annotations

import textwrap
from enum import Enum

import typer
from rich.markup import escape
from rich.table import Table

from vitdsi.log import console

RESERVED = ("seed", "device")  # set per trial by the harness


class What(str, Enum):
    retrievers = "retrievers"
    datasets = "datasets"
    studies = "studies"


def command(
    what: What = typer.Argument(..., help="retrievers, datasets or studies"),
    name: str = typer.Argument(
        None,
        help="With `retrievers`: one retriever, listed with every parameter's type, "
        "default and allowed values.",
    ),
) -> None:
    """List registered retrievers, datasets or the study files, with their parameters."""
    from bench.commands.common import friendly_errors

    with friendly_errors():
        if name is not None:
            if what is not What.retrievers:
                from vitdsi.errors import VitDSIError

                raise VitDSIError(
                    f"bench list {what.value} takes no NAME (only `bench list retrievers NAME` does)"
                )
            _retriever(name)
            return
        {"retrievers": _retrievers, "datasets": _datasets, "studies": _studies}[what.value]()


def _say(text: str, indent: int = 0, hanging: int = 2) -> None:
    """`text` wrapped to the terminal's width, `indent` spaces in and `hanging` more after the first line."""
    width = max(40, console.width)
    lines = textwrap.wrap(
        text,
        width=width,
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + hanging),
        break_on_hyphens=False,
    ) or [""]
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _summary(cls) -> str:
    doc = (cls.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""


def _retrievers() -> None:
    from vitdsi.retrievers.params import retriever_params
    from vitdsi.retrievers.registry import registered

    for name, cls in registered().items():
        _say(f"{name}: {_summary(cls)}")
        _say(f"queries: {cls.query_kind}; learns from (at most): {cls.supervision.describe()}", indent=2)
        params = [p.name for p in retriever_params(cls) if p.name not in RESERVED]
        _say(f"parameters: {', '.join(params) or 'none'}", indent=2)
        if cls.query_defaults:
            _say(f"query arguments: {', '.join(cls.query_defaults)}", indent=2)
        console.print()
    _say(
        "`bench list retrievers NAME` gives each parameter's type, default and allowed values. Queries: "
        "image retrievers answer query images; text retrievers answer captions (`protocol: text`, `bench "
        "search --text`). Learns from: what may reach training besides the corpus pixels (corpus labels, "
        "train-query pairs derived from labels, the indexed images' captions, pretrained weights); some "
        "retrievers use less depending on their parameters (e.g. a zero-shot dsi-vit with random ids is "
        "label-free), and each trial records what it used.",
        hanging=0,
    )


def _retriever(name: str) -> None:
    from bench.choices import param_choices
    from vitdsi.retrievers.params import retriever_params
    from vitdsi.retrievers.registry import get

    cls = get(name)
    choices = param_choices()
    _say(f"{name}: {_summary(cls)}")
    _say(f"queries: {cls.query_kind}; learns from (at most): {cls.supervision.describe()}", indent=2)
    _say("build parameters (name: type = default):", indent=2)
    for p in retriever_params(cls):
        if p.name not in RESERVED:
            _param(p.name, p.annotation, p.default, choices.get(p.name))
    _say(
        "query arguments (name: type = default):" if cls.query_defaults else "query arguments: none", indent=2
    )
    for key, default in cls.query_defaults.items():
        _param(key, type(default).__name__, default, choices.get(key))


def _param(name: str, annotation: str, default, allowed: tuple[str, ...] | None) -> None:
    _say(f"{name}: {annotation} = {default!r}", indent=4, hanging=4)
    if allowed:
        _say("allowed: " + " | ".join(allowed), indent=8, hanging=9)


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

    files = sorted(
        {p.resolve(): p for d in studies_dirs() for p in d.glob("*.yaml")}.values(), key=lambda p: p.stem
    )
    if not files:
        console.print("no studies/ folder with *.yaml files here")
        return
    table = Table(
        title=f"studies in {', '.join(str(d) for d in studies_dirs())} (trials at the file's scale)",
        show_lines=True,
    )
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
        table.add_row(
            s.name, methods, ", ".join(s.space) or "-", f"{s.n_trials} {s.sampler} ({s.scale})", about
        )
    console.print(table)
