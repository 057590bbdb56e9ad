"""`bench ui`: the MLflow UI on the project's tracking store.

Starts `mlflow ui` as a child process and prints its URL only once the server answers on its
port (it takes seconds to start); a server that exits or stays silent is a clear error.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import typer

from vitdsi.errors import VitDSIError
from vitdsi.log import console


def command(
    tracking_uri: str = typer.Option(
        None, "--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(5000, "--port", help="Port to listen on."),
    wait: float = typer.Option(
        120.0,
        "--wait",
        min=1,
        help="Seconds to wait for the server to answer before giving up (it can take a minute on a busy "
        "machine).",
    ),
) -> None:
    """Start `mlflow ui` on the tracking store the studies write to."""
    from bench.commands.common import friendly_errors
    from bench.tracking import local_store_dir, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(tracking_uri)
    if local_store_dir(uri) is None:
        console.print(f"the tracking store is a server: open {uri} in a browser")
        return
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        console.print(
            f"[yellow]no MLflow store at {path} yet[/]; run a study first (bench run studies/patch_size.yaml "
            "--scale smoke)"
        )
        raise typer.Exit(1)
    with friendly_errors():
        server = start_server(server_command(uri, host, port), host, port, wait)
    console.print(f"MLflow UI on http://{host}:{port} for {uri} (Ctrl-C to stop)")
    try:
        code = server.wait()
    except KeyboardInterrupt:
        server.terminate()
        code = server.wait()
    raise typer.Exit(code if code > 0 else 0)


def server_command(uri: str, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]


def start_server(args: list[str], host: str, port: int, wait: float) -> subprocess.Popen:
    """Start `args` and return once it answers on host:port; a VitDSIError (the child stopped)
    when it exits first or is still silent after `wait` seconds."""
    if answers(host, port):
        raise VitDSIError(f"port {port} on {host} is already in use; choose another with --port")
    server = subprocess.Popen(args)
    deadline = time.monotonic() + wait
    while not answers(host, port):
        if server.poll() is not None:
            raise VitDSIError(
                f"the MLflow UI exited (code {server.returncode}) before answering on {host}:{port}; "
                "its output is above"
            )
        if time.monotonic() > deadline:
            server.terminate()
            server.wait()
            raise VitDSIError(
                f"the MLflow UI did not answer on {host}:{port} within {wait:g} s; stopped it "
                "(give it longer with --wait)"
            )
        time.sleep(0.2)
    return server


def answers(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port (a wildcard host is probed on loopback)."""
    probe = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        with socket.create_connection((probe, port), timeout=1.0):
            return True
    except OSError:
        return False
