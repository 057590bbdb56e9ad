"""Helpers shared by the commands: finding study files and turning known errors into exits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.markup import escape

from vitdsi.log import console

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def studies_dirs() -> list[Path]:
    """Where study files are looked up: ./studies, then the project's own studies/."""
    out = []
    for d in (Path.cwd() / "studies", PROJECT_ROOT / "studies"):
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def find_study(name_or_path: str) -> Path:
    """A path as given, or a bare name such as `patch_size` found in a studies/ folder."""
    path = Path(name_or_path)
    if path.exists():
        return path
    for folder in studies_dirs():
        for candidate in (folder / name_or_path, folder / f"{name_or_path}.yaml"):
            if candidate.exists():
                return candidate
    known = sorted({p.stem for d in studies_dirs() for p in d.glob("*.yaml")})
    raise typer.BadParameter(
        f"no study file '{name_or_path}'" + (f"; known studies: {', '.join(known)}" if known else "")
    )


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Exit 2 with the message (no traceback) for bad input the library reports as such."""
    from vitdsi.errors import VitDSIError

    try:
        yield
    except VitDSIError as e:
        console.print(f"[red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None
