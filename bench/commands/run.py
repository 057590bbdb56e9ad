"""`bench run STUDY.yaml`: run (or resume) a study; every trial becomes an MLflow run."""

from __future__ import annotations

import typer
from rich.markup import escape

from bench.commands.common import find_study, friendly_errors
from vitdsi.interrupt import deferred_interrupts
from vitdsi.log import console

# the longer options of `command`
_N_TRIALS = typer.Option(
    None,
    "--n-trials",
    min=1,
    help="COMPLETE trials wanted in the study, counting those of earlier runs (default: the file's "
    "n_trials, or the whole grid).",
)
_STORAGE = typer.Option(
    None,
    "--storage",
    help="Optuna storage URL, e.g. postgresql://user:pw@host/db (default: sqlite optuna.db beside the "
    "MLflow store).",
)
_THREADS = typer.Option(
    None,
    "--threads",
    min=1,
    help="torch / FAISS / OpenCV threads of this worker (default: the file's `threads`, else every "
    "core); with several workers on one machine give each cores / workers.",
)
_REUSE = typer.Option(
    False,
    "--reuse",
    help="A trial whose configuration (dataset, split, build parameters, seed, query arguments) already "
    "finished in this tracking store copies that run's metrics, tagged reused_from, instead of training "
    "again.",
)


def command(
    study_file: str = typer.Argument(
        ..., help="Study YAML (e.g. studies/patch_size.yaml) or a study name (patch_size)."
    ),
    scale: str = typer.Option(
        None, "--scale", help="Scale preset: smoke, small or paper (default: the file's `scale`)."
    ),
    n_trials: int = _N_TRIALS,
    storage: str = _STORAGE,
    tracking_uri: str = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).",
    ),
    study_name: str = typer.Option(None, "--study-name", help="Optuna study name (default: <name>-<scale>)."),
    device: str = typer.Option(
        None,
        "--device",
        help="torch device for the retrievers, e.g. cpu or cuda:0 (default: CUDA when present).",
    ),
    heartbeat: int = typer.Option(
        10,
        "--heartbeat",
        min=1,
        help="Seconds between trial heartbeats; a trial silent for 3 beats is re-queued.",
    ),
    threads: int = _THREADS,
    wait: bool = typer.Option(
        True,
        "--wait/--no-wait",
        help="When only other workers' trials remain, wait for them (and take over dead ones); "
        "tuning trials are always waited for, since the study's trials need their recipes.",
    ),
    reuse: bool = _REUSE,
    overrides: list[str] = typer.Option(
        None,
        "--set",
        help="Override a field of the file, e.g. --set dataset.root=/data/imagenet --set repeats=3 "
        "(repeatable).",
    ),
    check: bool = typer.Option(
        False, "--check", help="Validate the study file, print the resolved study and exit."
    ),
) -> None:
    """Run or resume an Optuna study from a YAML file; safe to start in several processes at once."""
    from bench.config import load_study

    path = find_study(study_file)
    # from here Ctrl-C / SIGTERM set a flag, acted on between trials and epochs (vitdsi.interrupt)
    with deferred_interrupts(), friendly_errors():
        if device is not None:
            from vitdsi.device import resolve_device

            resolve_device(device)  # a device this machine lacks: one error before any store is opened
        study = load_study(path, scale=scale, overrides=overrides or [])
        if check:
            _print_check(study, path)
            return
        from bench.study import RunOptions

        options = RunOptions(
            storage=storage,
            tracking_uri=tracking_uri,
            study_name=study_name,
            n_trials=n_trials,
            device=device,
            heartbeat=heartbeat,
            wait_for_others=wait,
            threads=threads,
            reuse=reuse,
        )
        outcome = _run(study, options, overrides)
    _finish(outcome)


def _print_check(study, path) -> None:
    """`--check`: the resolved study, the data notes and the split, then ok."""
    import yaml

    from bench.config import check_data
    from bench.config.checks import split_summary

    class _Dumper(yaml.SafeDumper):
        """Multi-line strings (a study's description) as literal blocks, as the study file has them."""

    def _str(dumper, text):
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)

    _Dumper.add_representer(str, _str)
    console.print(
        yaml.dump(study.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False),
        markup=False,
        soft_wrap=True,
    )
    for note in check_data(study, str(path)):
        console.print(note, markup=False, style="yellow" if note.startswith("warning") else None)
    for line in split_summary(study):
        console.print(line, markup=False, highlight=False)
    n = len(study.grid()) if study.sampler == "grid" else study.n_trials
    tuning = (
        f", after {study.tune.trials_per_method} tuning trials for each of {', '.join(study.tune.methods)}"
        if study.tune is not None
        else ""
    )
    console.print(f"[green]ok[/]: {path} at scale {study.scale}: {n} trials, {study.sampler} sampler{tuning}")


def _run(study, options, overrides: list[str] | None):
    """Run the study (its outcome), recording the `--set` overrides on its parent run."""
    from bench.study import StudyMismatchError, run
    from bench.tracking import Tracker

    try:
        outcome = run(study, options)
        Tracker(outcome.tracking_uri).set_overrides(outcome.parent_run_id, overrides or [])
    except StudyMismatchError as e:
        console.print(f"[red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:  # while the data were checked, before the study was opened
        console.print("[yellow]interrupted[/] before the first trial; nothing was recorded")
        raise typer.Exit(130) from None
    return outcome


def _finish(outcome) -> None:
    """The trials table and summary; exit 130 when interrupted, 1 when trials are missing."""
    from bench.study import describe, trials_table

    if outcome.trials:
        console.print(trials_table(outcome))
    console.print(describe(outcome), markup=False, highlight=False)
    if outcome.interrupted:
        raise typer.Exit(130)
    if not outcome.done:
        console.print(
            f"[yellow]{outcome.complete}/{outcome.target} trials complete[/]; "
            f"failed this run: {outcome.failed or 'none'}. Fix the cause and run again to retry them."
        )
        raise typer.Exit(1)
