"""Saving a built retriever to a directory and loading it back, safely.

A saved index is `retriever.json` (the retriever's name, build parameters, query arguments
and sizes) and `state.pt` (its learned state, `Retriever._state`). The state is read with
`torch.load(weights_only=True)`, so an index downloaded from a shared tracking server cannot
run code when it is loaded; every failure is one VitDSIError naming the file.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from vitdsi.errors import VitDSIError
from vitdsi.limits import MAX_IMAGE_SIDE, MAX_IMAGES
from vitdsi.retrievers.base import Retriever
from vitdsi.retrievers.registry import create


def save_retriever(retriever: Retriever, path: str | Path) -> None:
    """Write the index to directory `path`: config as json, learned state as a torch file."""
    if retriever.corpus_size is None:
        raise VitDSIError(f"{retriever.name}: nothing to save; index a corpus first")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "retriever": retriever.name,
        "build_params": retriever.build_params(),
        "query_args": retriever.query_args,
        "corpus_size": retriever.corpus_size,
        "image_size": retriever.image_size,
    }
    (path / "retriever.json").write_text(json.dumps(config, indent=2, default=str))
    torch.save(retriever._state(), path / "state.pt")


def load_retriever(path: str | Path, *, device: str | None = None) -> Retriever:
    """Read an index written by `save_retriever`, as an instance of the retriever class it was saved from.

    `state.pt` is read with `torch.load(weights_only=True)`: only tensors, numbers,
    strings, None and lists / dicts of them, never arbitrary pickled objects, so an index
    downloaded from a shared tracking server cannot run code when it is loaded. Anything
    else, or a truncated / empty file, is a VitDSIError naming the file."""
    path = Path(path)
    cfg_file = path / "retriever.json"
    if not cfg_file.is_file():
        raise VitDSIError(f"no saved retriever at {path} (missing retriever.json)")
    try:
        config = json.loads(cfg_file.read_text())
        params = dict(config["build_params"])
        name, query_args = config["retriever"], dict(config["query_args"])
        corpus_size, image_size = int(config["corpus_size"]), int(config["image_size"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise VitDSIError(
            f"{cfg_file}: not a readable saved-retriever config ({type(e).__name__}: {e}); the file is "
            "truncated, empty or not written by save_retriever; save the index again"
        ) from None
    if device is not None:
        params["device"] = device
    params.pop("augment", None)  # saved before `views` replaced it: a training setting, not needed to search
    if not (0 <= corpus_size <= MAX_IMAGES and 1 <= image_size <= MAX_IMAGE_SIDE):
        raise VitDSIError(
            f"{cfg_file}: corpus_size {corpus_size:,} or image_size {image_size:,} out of bounds "
            f"(0..{MAX_IMAGES:,} images of 1..{MAX_IMAGE_SIDE} px); save the index again"
        )
    try:
        retriever = create(name, **params)
    except VitDSIError as e:
        raise VitDSIError(f"{cfg_file}: {e}") from None
    retriever.query_args.update(query_args)
    retriever.corpus_size = corpus_size
    retriever.image_size = image_size
    state = load_state_file(path / "state.pt", map_location=retriever.device)
    try:
        retriever._load_state(state)
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as e:
        if isinstance(e, VitDSIError):
            raise
        raise VitDSIError(
            f"{path / 'state.pt'}: does not hold a '{name}' index ({type(e).__name__}: {e}); save the index "
            "again"
        ) from None
    return retriever


def load_state_file(file: Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(file, weights_only=True)` with every failure as one VitDSIError naming the file:
    a missing, empty or truncated file, or one that holds pickled objects other than tensors and
    plain values (which could run code when unpickled, so they are refused, never executed)."""
    if not file.is_file():
        raise VitDSIError(f"{file}: missing; the saved index is incomplete (save it again)")
    if file.stat().st_size == 0:
        raise VitDSIError(f"{file}: empty file; the saved index is incomplete (save it again)")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e).split("WeightsUnpickler error:")[-1]
        lines = [line.strip() for line in text.splitlines() if line.strip() and "documentation" not in line]
        detail = next((line for line in lines if "GLOBAL" in line or "global" in line), None)
        if detail is not None:
            raise VitDSIError(
                f"{file}: refused to load: it holds pickled objects other than tensors and plain values, "
                f"which could run code ({detail}); only load indexes you trust, or re-save it with this "
                "version"
            ) from None
        raise VitDSIError(
            f"{file}: refused to load: not a torch file of plain tensors and values "
            f"({lines[0] if lines else type(e).__name__}); it is truncated or corrupt, or not written by "
            "save_retriever (nothing in it was executed)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as e:
        raise VitDSIError(
            f"{file}: not a readable torch file ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); it is truncated or corrupt; save "
            "the index again"
        ) from None
    if not isinstance(state, dict):
        raise VitDSIError(
            f"{file}: expected a dict of tensors, found {type(state).__name__}; save the index again"
        )
    return state
