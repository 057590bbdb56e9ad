"""An on-disk cache of a frozen encoder's output, shared by every trial and study.

A frozen pretrained encoder (EfficientNet-Lite0's fixed blocks, MiniLM, the `embedding`
retriever's backbone: vitdsi.features.backbone_cache) maps an image to the same features
every time, and on a CPU that mapping costs far more than training the small model on top of
it. So its output for a set of images is computed once and kept as a
memory-mapped `.npy` array, keyed by everything that decides it: which images (a hash of
their bytes, so a changed dataset, split, size or view bank is a different entry), which
encoder and which of its blocks, and the preprocessing. Any key part that changes is a miss.

An entry is one folder `ROOT/<digest>/` with `features.npy` and `manifest.json` (the key
parts, shape, dtype, byte size and a BLAKE2 checksum of the array). It is built in a private
folder, streamed batch by batch into the memory map (never the whole input in memory) and
renamed into place (`vitdsi.cache_folder`), under a file lock, so two workers asking for
the same entry compute it once. An entry that fails its checks on load (truncated, edited,
half-deleted) is rebuilt with a warning. `ROOT` is `VITDSI_CACHE_DIR`, else
~/.cache/vitdsi/features; VITDSI_FEATURE_CACHE=0 turns the cache off (`default_cache`).

The manifest also records `build_seconds`, the wall seconds the entry's build took (the
encoder's extraction streamed into it, and its checksum), with the torch threads and CPUs it
ran with (the device is part of the key's preprocessing). `get` hands them to an
`ExtractionTime` (vitdsi.features.extraction) on a hit as on a miss, so a build that reads an
entry can say what it would have cost from cold. An entry written before that record still
loads; its seconds are unknown (`ExtractionTime.unknown`) until it is rebuilt
(`bench cache remove`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from vitdsi.cache_folder import build_atomically
from vitdsi.errors import VitDSIError
from vitdsi.features.extraction import ExtractionTime
from vitdsi.log import get_logger

log = get_logger("vitdsi.cache")

MARKER = "manifest.json"  # written last: its presence marks a complete entry
FORMAT = 1  # bump when what an entry holds for the same key changes
_HASH_CHUNK = 1 << 24  # bytes hashed at a time


def default_root() -> Path:
    return Path(os.environ.get("VITDSI_CACHE_DIR") or Path.home() / ".cache" / "vitdsi" / "features")


def default_cache() -> FeatureCache | None:
    """The cache trainers use: at `default_root()`, or None when VITDSI_FEATURE_CACHE=0 turns it off."""
    return None if os.environ.get("VITDSI_FEATURE_CACHE", "1") == "0" else FeatureCache(default_root())


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """An entry's read-only memory map (`FeatureCache.get`) as a CPU tensor over the same memory,
    no copy: readers only gather rows of it, which copies them (torch warns of the read-only
    buffer; nothing writes to it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def fingerprint_array(a: np.ndarray) -> str:
    """BLAKE2b of an array's dtype, shape and bytes (chunked: no copy of a large array)."""
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    flat = a.reshape(-1).view(np.uint8)
    for start in range(0, flat.size, _HASH_CHUNK):
        h.update(flat[start : start + _HASH_CHUNK].data)
    return h.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Everything that decides a frozen encoder's output for a set of images."""

    images: str  # fingerprint of the uint8 images (fingerprint_array): dataset, split, size, views
    encoder: str  # the encoder and the blocks that run, e.g. "efficientnet-lite0 blocks[:6] @96px"
    preprocessing: str = ""  # how images become the encoder's input (resize, normalisation)
    views: str = ""  # for a bank of pseudo-query views: family, strength, V and its seed

    def digest(self) -> str:
        text = json.dumps({"format": FORMAT, **self.__dict__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class CacheEntry:
    """One complete entry as `bench cache list` shows it."""

    digest: str
    path: Path
    manifest: dict
    bytes: int  # on disk, array and manifest


class FeatureCache:
    """Memory-mapped encoder outputs under `root`, one folder per `CacheKey`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_root()

    def path(self, key: CacheKey) -> Path:
        return self.root / key.digest()

    def get(
        self,
        key: CacheKey,
        batches: Callable[[], Iterator[np.ndarray]],
        n: int,
        clock: ExtractionTime | None = None,
    ) -> np.ndarray:
        """The cached array for `key` (read-only memory map, `n` rows), built first when missing
        or broken: `batches()` yields consecutive row blocks of the encoder's output, in order.
        `clock` is given the entry's build seconds: measured on a miss, recorded on a hit."""
        clock = clock if clock is not None else ExtractionTime()
        folder = self.path(key)
        hit = self._load(folder, key)
        if hit is not None:
            clock.read(hit[1].get("build_seconds"))
            return hit[0]
        self.root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with FileLock(str(folder) + ".lock"):
            hit = self._load(folder, key)  # another worker may have built it while this one waited
            if hit is not None:
                clock.read(hit[1].get("build_seconds"), waited=time.perf_counter() - t0)
                return hit[0]
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            build_atomically(folder, MARKER, lambda tmp: _write(tmp, key, batches, n))
        built = self._load(folder, key)
        if built is None:
            raise VitDSIError(
                f"feature cache: the entry just built at {folder} does not read back; is the disk full?"
            )
        array, manifest = built
        clock.measured(manifest["build_seconds"])
        log.info("feature cache: built %s (%d rows) in %.1f s", folder.name, n, manifest["build_seconds"])
        return array

    def _load(self, folder: Path, key: CacheKey) -> tuple[np.ndarray, dict] | None:
        """The entry's array and manifest, or None when it is absent; a broken entry is warned
        about and removed."""
        manifest_path = folder / MARKER
        if not manifest_path.exists():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("key") != key.__dict__:
                raise ValueError("its manifest names another key")
            array = np.load(folder / "features.npy", mmap_mode="r")
            if list(array.shape) != manifest["shape"] or array.dtype.str != manifest["dtype"]:
                raise ValueError(f"shape {array.shape} {array.dtype.str} differs from its manifest")
            if fingerprint_array(array) != manifest["checksum"]:
                raise ValueError("its checksum does not match")
            seconds = manifest.get("build_seconds")  # absent in an entry written before it was recorded
            if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float)):
                raise ValueError(f"its build_seconds {seconds!r} is not a number")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("feature cache: entry %s is corrupt (%s); rebuilding it", folder, e)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return array, manifest

    def entries(self) -> list[CacheEntry]:
        """Complete entries, largest first."""
        out = []
        for folder in sorted(self.root.glob("*")) if self.root.exists() else []:
            if not folder.is_dir() or not (folder / MARKER).exists():
                continue
            try:
                manifest = json.loads((folder / MARKER).read_text())
            except (OSError, ValueError):
                manifest = {}
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            out.append(CacheEntry(folder.name, folder, manifest, size))
        return sorted(out, key=lambda e: -e.bytes)

    def remove(self, prefix: str | None = None) -> list[CacheEntry]:
        """Remove every entry (prefix None) or the one whose digest starts with `prefix`; an
        ambiguous or unknown prefix is an error naming the matches."""
        entries = self.entries()
        chosen = entries if prefix is None else [e for e in entries if e.digest.startswith(prefix)]
        if prefix is not None and len(chosen) != 1:
            found = ", ".join(e.digest for e in chosen) or "none"
            raise VitDSIError(
                f"feature cache: {len(chosen)} entries in {self.root} start with '{prefix}' "
                f"(matches: {found}); give a longer prefix"
            )
        for e in chosen:
            shutil.rmtree(e.path, ignore_errors=True)
        for lock in self.root.glob("*.lock") if prefix is None and self.root.exists() else []:
            lock.unlink(missing_ok=True)
        return chosen


def _write(tmp: Path, key: CacheKey, batches: Callable[[], Iterator[np.ndarray]], n: int) -> None:
    """Stream the encoder's output into `tmp/features.npy`, then write the manifest."""
    t0 = time.perf_counter()
    array, filled = None, 0
    for block in batches():
        block = np.asarray(block)
        if array is None:
            array = np.lib.format.open_memmap(
                tmp / "features.npy", mode="w+", dtype=block.dtype, shape=(n, *block.shape[1:])
            )
        if filled + len(block) > n:
            raise VitDSIError(f"feature cache: the encoder gave more than the {n} rows asked for")
        array[filled : filled + len(block)] = block
        filled += len(block)
    if array is None or filled != n:
        raise VitDSIError(f"feature cache: the encoder gave {filled} rows, {n} were asked for")
    array.flush()
    manifest = {
        "format": FORMAT,
        "key": key.__dict__,
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "checksum": fingerprint_array(array),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "build_seconds": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    del array
    (tmp / MARKER).write_text(json.dumps(manifest, indent=1))
