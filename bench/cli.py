"""The `bench` command (README.md "The CLI"; docs/design.md for the architecture).

    bench run studies/patch_size.yaml [--scale smoke] [--n-trials 2] [--storage URL] ...
    bench list retrievers [NAME] | datasets | studies
    bench ui [--port 5000] [--wait 120]
    bench search --run RUN_ID_OR_PREFIX IMAGE... [--k 5] [--out grid.png]
    bench report STUDY [--study-name NAME]
    bench cache [list | remove DIGEST | remove --all]
    bench store pack FOLDER ARCHIVE.tar.xz | unpack ARCHIVE.tar.xz FOLDER

Each command lives in its own module under bench/commands and imports its heavy
dependencies (torch, optuna, mlflow) only when it runs, so `--help` stays fast.
"""

from __future__ import annotations

import typer

from bench.commands import cache, listing, report, run, search, store, ui

app = typer.Typer(
    name="bench",
    help="Benchmark and ablation harness for image retrieval with a ViT Differentiable Search Index.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("run")(run.command)
app.command("list")(listing.command)
app.command("ui")(ui.command)
app.command("search")(search.command)
app.command("report")(report.command)
app.command("cache")(cache.command)
app.command("store")(store.command)


def main() -> None:  # `python -m bench.cli`
    app()


if __name__ == "__main__":
    main()
