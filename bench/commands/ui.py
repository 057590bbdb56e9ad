"""`bench ui`: the MLflow UI on the project's tracking store."""

from __future__ import annotations

import os
import sys

import typer

from vitdsi.log import console


def command(
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(5000, "--port", help="Port to listen on."),
) -> None:
    """Start `mlflow ui` on the tracking store the studies write to."""
    from bench.tracking import local_store_dir, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(tracking_uri)
    if local_store_dir(uri) is None:
        console.print(f"the tracking store is a server: open {uri} in a browser")
        return
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        console.print(f"[yellow]no MLflow store at {path} yet[/]; run a study first (bench run studies/patch_size.yaml --scale smoke)")
        raise typer.Exit(1)
    console.print(f"MLflow UI on http://{host}:{port} for {uri} (Ctrl-C to stop)")
    args = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    os.execv(sys.executable, args)
