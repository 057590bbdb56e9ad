"""`bench store pack | unpack`: a study's local stores (MLflow, its artifacts, Optuna) as one
file, to move a study to another machine, resume it there, or keep the raw runs behind a report
(bench.store_archive)."""

from __future__ import annotations

import typer

from bench.commands.common import friendly_errors
from vitdsi.log import console


def command(
    action: str = typer.Argument(..., help="pack (FOLDER -> ARCHIVE) or unpack (ARCHIVE -> FOLDER)"),
    source: str = typer.Argument(
        ..., help="pack: the store folder (mlflow.db, optuna.db, mlartifacts/); unpack: the archive"
    ),
    target: str = typer.Argument(
        ..., help="pack: the archive to write (.tar.xz); unpack: a new or empty folder"
    ),
    keep_index: bool = typer.Option(
        False, "--keep-index", help="pack: keep finished trials' index/ artifacts (for `bench search`)"
    ),
) -> None:
    """Pack a study store into one .tar.xz while workers may still write to it, or unpack one
    elsewhere; then `bench run` and `bench report` with --tracking-uri sqlite:///FOLDER/mlflow.db
    resume or render the study from it."""
    from bench.store_archive import pack, unpack

    with friendly_errors():
        if action == "pack":
            packed = pack(source, target, keep_index=keep_index)
            skipped = packed.skipped_index_files
            left_out = f", {skipped} index files left out" if skipped else ""
            console.print(
                f"[green]packed[/] {source} into {packed.archive} ({packed.bytes / 2**20:.1f} MB, "
                f"{packed.files} artifact files{left_out})"
            )
        elif action == "unpack":
            manifest = unpack(source, target)
            console.print(
                f"[green]unpacked[/] {source} into {target} (packed {manifest['packed_at']}); use "
                f"--tracking-uri sqlite:///{target}/mlflow.db with bench run / bench report"
            )
        else:
            raise typer.BadParameter(f"unknown action '{action}': use pack or unpack")
