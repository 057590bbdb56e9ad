"""`bench report STUDY`: write reports/STUDY.md and its PNGs from what the study logged."""

from __future__ import annotations

import typer

from bench.commands.common import friendly_errors
from vitdsi.log import console


def command(
    study: str = typer.Argument(..., help="Study name as in its YAML `name` (e.g. patch_size)."),
    scale: str = typer.Option(None, "--scale", help="Report the run at this scale (default: the newest run of the study)."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    out: str = typer.Option("reports", "--out", help="Folder for STUDY.md and STUDY/*.png."),
) -> None:
    """Render a markdown report (tables, importances, Table 1, latency, curves, query grid); retrains nothing."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with friendly_errors():
        from bench.report import write_report

        path = write_report(study, tracking_uri=tracking_uri, scale=scale, out_dir=out)
    console.print(f"[green]wrote[/] {path} (figures in {path.with_suffix('')}/)")
