"""`bench report STUDY`: write reports/STUDY.md and its PNGs from what the study logged."""

from __future__ import annotations

import typer

from bench.commands.common import friendly_errors
from vitdsi.log import console


def command(
    study: str = typer.Argument(
        ...,
        help="Study name as in its YAML `name` (e.g. patch_size), or its study file "
        "(studies/patch_size.yaml) as for `bench run`.",
    ),
    scale: str = typer.Option(
        None, "--scale", help="Report the run at this scale (default: the newest run of the study)."
    ),
    tracking_uri: str = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).",
    ),
    out: str = typer.Option("reports", "--out", help="Folder for STUDY.md and STUDY/*.png."),
    optuna_study: str = typer.Option(
        None,
        "--study-name",
        help="The Optuna / MLflow study name the run was given with `bench run --study-name` (default: the "
        "newest run of the study, whatever its name).",
    ),
    compare_with: list[str] = typer.Option(
        None,
        "--compare-with",
        help="A method (study-file or retriever name) every other trial is also compared with, paired and "
        "Holm-corrected; repeat for several (default: the study file's report.compare_with).",
    ),
) -> None:
    """Render a markdown report (tables, importances, Table 1, latency, curves, query grid); retrains
    nothing."""
    with friendly_errors():
        from bench.report import write_report

        study = study_name(study)

        path = write_report(
            study,
            tracking_uri=tracking_uri,
            scale=scale,
            out_dir=out,
            compare_with=compare_with or None,
            study_name=optuna_study,
        )
    console.print(f"[green]wrote[/] {path} (figures in {path.with_suffix('')}/)")


def study_name(arg: str) -> str:
    """The study name for `bench report ARG`: a bare name as given; a study file (a path, or a
    name ending in .yaml / .yml, found as `bench run` finds it) gives the `name` inside it, or
    its stem when no such file exists (the study may live only in the tracking store)."""
    from pathlib import Path

    from bench.commands.common import find_study
    from bench.config import StudyConfigError, read_yaml

    looks_like_file = arg.endswith((".yaml", ".yml")) or "/" in arg or Path(arg).is_file()
    if not looks_like_file:
        return arg
    try:
        path = find_study(arg)
    except typer.BadParameter:
        return Path(arg).stem if arg.endswith((".yaml", ".yml")) else Path(arg).name
    if path.is_dir():
        raise StudyConfigError(f"{path}: is a directory; give a study file or a study name")
    name = read_yaml(path).get("name")
    if not isinstance(name, str) or not name:
        raise StudyConfigError(
            f"{path}: field `name`: a study file names its study (e.g. `name: patch_size`)"
        )
    return name
