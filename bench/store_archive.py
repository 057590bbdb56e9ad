"""A study's local stores as one file: `bench store pack` and `bench store unpack`.

A local study keeps three things in one folder: the MLflow tracking store (`mlflow.db`), its
artifacts (`mlartifacts/`, where `bench.tracking` puts them) and the Optuna storage
(`optuna.db`). Packing writes a consistent copy of both databases (SQLite's online backup, so
workers may keep writing) and the artifacts into a `.tar.xz`, with a manifest that records the
folder's absolute artifact root. Unpacking extracts it into another folder, on this machine or
another, and rewrites every artifact location in the MLflow store to the new root, so that
`bench report` renders the same report from it and `bench run` resumes the study there: finished
trials stay finished, the per-seed checkpoints of an interrupted trial (`bench.seed_checkpoints`)
are restored, and tuning trials keep their recipes.

By default a finished trial's `index/` artifact (its first seed's model, for `bench search`) is
left out: reports and resumption do not read it and it is most of a store's size.
"""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.tracking import ARTIFACT_FOLDER
from vitdsi.errors import VitDSIError

MANIFEST = "store.json"
DATABASES = ("mlflow.db", "optuna.db")  # the MLflow store first: a store folder must have it
FORMAT = 1  # bumped when the layout of an archive changes


@dataclass(frozen=True)
class PackedStore:
    """What `pack` wrote."""

    archive: Path
    files: int  # artifact files in the archive
    skipped_index_files: int  # files of finished trials' index/ artifacts left out
    bytes: int  # size of the archive


def _snapshot(db: Path, to: Path) -> None:
    """A consistent copy of SQLite database `db`, taken while other processes may write to it."""
    source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    target = sqlite3.connect(to)
    try:
        with target:
            source.backup(target)
    finally:
        source.close()
        target.close()


def _is_index_artifact(relative: Path) -> bool:
    """`[<experiment>/]<run>/artifacts/index/...`: a trial's saved model (not a seed checkpoint's,
    which lies under `artifacts/seeds/`)."""
    parts = relative.parts
    at = parts.index("artifacts") if "artifacts" in parts[:3] else -1
    return at >= 0 and len(parts) > at + 2 and parts[at + 1] == "index"


def _store_files(folder: Path) -> list[str]:
    """The databases in study store `folder`; the Optuna one is absent when the study ran on a
    database server (`bench run --storage postgresql://...`)."""
    if not (folder / DATABASES[0]).is_file():
        raise VitDSIError(
            f"{folder} is not a study store: it has no {DATABASES[0]} (a store folder holds "
            f"{', '.join(DATABASES)} and {ARTIFACT_FOLDER}/, as `bench run --tracking-uri "
            "sqlite:///FOLDER/mlflow.db` leaves them)"
        )
    return [name for name in DATABASES if (folder / name).is_file()]


def pack(folder: str | Path, archive: str | Path, *, keep_index: bool = False) -> PackedStore:
    """Write the study store in `folder` to `archive` (.tar.xz)."""
    folder, archive = Path(folder).resolve(), Path(archive)
    databases = _store_files(folder)
    artifacts = folder / ARTIFACT_FOLDER
    files, skipped = [], 0
    if artifacts.is_dir():
        for path in sorted(p for p in artifacts.rglob("*") if p.is_file()):
            relative = path.relative_to(artifacts)
            if not keep_index and _is_index_artifact(relative):
                skipped += 1
            else:
                files.append((path, relative))
    manifest = {
        "format": FORMAT,
        "artifact_root": artifacts.as_uri(),
        "packed_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "databases": databases,
        "index_artifacts": "kept" if keep_index else "left out",
    }
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")  # an interrupted pack leaves no archive
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(partial, "w:xz") as tar:
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
        for name in databases:
            _snapshot(folder / name, Path(tmp) / name)
            tar.add(Path(tmp) / name, arcname=name)
        for path, relative in files:
            tar.add(path, arcname=str(Path(ARTIFACT_FOLDER) / relative))
    partial.replace(archive)
    return PackedStore(archive, len(files), skipped, archive.stat().st_size)


def unpack(archive: str | Path, folder: str | Path) -> dict:
    """Extract `archive` into `folder` (new or empty) and point its MLflow store at the artifacts
    there; returns the archive's manifest."""
    archive, folder = Path(archive), Path(folder)
    if not archive.is_file():
        raise VitDSIError(f"no store archive {archive}")
    if folder.exists() and any(folder.iterdir()):
        raise VitDSIError(f"{folder} is not empty: unpack a store into a new or empty folder")
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.ReadError as e:
        raise VitDSIError(f"{archive} cannot be read as a tar archive: {e}") from None
    folder.mkdir(parents=True, exist_ok=True)
    with tar:
        try:
            manifest = json.load(tar.extractfile(MANIFEST))
        except KeyError:
            raise VitDSIError(
                f"{archive} is not a store archive of `bench store pack` (no {MANIFEST})"
            ) from None
        if manifest.get("format") != FORMAT:
            raise VitDSIError(
                f"{archive} has store archive format {manifest.get('format')}; this version reads {FORMAT}"
            )
        tar.extractall(folder, filter="data")
    _relocate(folder / DATABASES[0], manifest["artifact_root"], (folder / ARTIFACT_FOLDER).resolve().as_uri())
    return manifest


def _relocate(db: Path, old_root: str, new_root: str) -> None:
    """Rewrite the artifact locations under `old_root` in MLflow store `db` to `new_root`."""
    con = sqlite3.connect(db)
    try:
        with con:
            for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE substr({column}, 1, ?) = ?",
                    (new_root, len(old_root) + 1, len(old_root), old_root),
                )
    finally:
        con.close()
