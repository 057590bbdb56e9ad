"""`bench cache`: list and remove the frozen-encoder feature cache (vitdsi.features.feature_cache)."""

from __future__ import annotations

import re

import typer

from bench.commands.common import friendly_errors
from vitdsi.log import console


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _seconds(manifest: dict) -> str:
    """The entry's recorded build seconds ('? s' for an entry written before they were recorded)."""
    seconds = manifest.get("build_seconds")
    return "? s" if seconds is None else f"{seconds:.1f} s"


def _resolution(key: dict) -> str:
    """' at N px' where the preprocessing resizes (two entries of one encoder differ by it)."""
    found = re.search(r"resize to (\d+) px", key.get("preprocessing", ""))
    return f" at {found.group(1)} px" if found else ""


def command(
    action: str = typer.Argument("list", help="list (default) or remove"),
    entry: str = typer.Argument(
        None, help="remove: the digest (or a unique prefix) of one entry; omit with --all"
    ),
    remove_all: bool = typer.Option(False, "--all", help="remove: every entry"),
    root: str = typer.Option(
        None, "--dir", help="Cache folder (default: VITDSI_CACHE_DIR, else ~/.cache/vitdsi/features)."
    ),
) -> None:
    """List the cached encoder outputs with their sizes, or remove entries."""
    from vitdsi.features.feature_cache import FeatureCache

    cache = FeatureCache(root)
    with friendly_errors():
        if action == "list":
            entries = cache.entries()
            if not entries:
                console.print(f"no cached features in {cache.root}")
                return
            console.print(f"{len(entries)} entries, {_size(sum(e.bytes for e in entries))} in {cache.root}")
            for e in entries:
                key = e.manifest.get("key", {})
                shape = "x".join(str(s) for s in e.manifest.get("shape", [])) or "?"
                console.print(
                    f"  {e.digest[:12]}  {_size(e.bytes):>9}  {shape:>16}  {key.get('encoder', '?')}"
                    + _resolution(key)
                    + (f"  views: {key['views']}" if key.get("views") else "")
                    + f"  ({e.manifest.get('created', '?')}, built in {_seconds(e.manifest)})",
                    highlight=False,
                    soft_wrap=True,
                )
        elif action == "remove":
            if bool(entry) == remove_all:
                raise typer.BadParameter("bench cache remove takes one entry's digest prefix, or --all")
            gone = cache.remove(None if remove_all else entry)
            console.print(
                f"removed {len(gone)} entries ({_size(sum(e.bytes for e in gone))}) from {cache.root}"
            )
        else:
            raise typer.BadParameter(f"unknown action '{action}': use list or remove")
