"""A saved index is data, never code: `load_retriever` refuses pickled objects, and a broken
saved index (empty, truncated, not json) is one VitDSIError naming the file."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from conftest import smoke_retriever

from vitdsi.errors import VitDSIError
from vitdsi.retrievers import create, load_retriever, save_retriever


class _Payload:
    """Unpickling this would create the marker file (what an attacker's state.pt would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture()
def saved(tiny_split, tmp_path):
    r = create("pixels-knn", device="cpu")
    r.index(tiny_split.corpus)
    save_retriever(r, tmp_path / "index")
    return tmp_path / "index"


def test_malicious_state_is_refused_without_running(saved, tmp_path):
    marker = tmp_path / "pwned"
    # a state.pt written by torch.save (zip container) whose pickle runs os.makedirs when loaded
    torch.save({"features": _Payload(str(marker)), "mean": torch.zeros(3)}, saved / "state.pt")
    with pytest.raises(VitDSIError, match=r"state\.pt: refused to load") as info:
        load_retriever(saved, device="cpu")
    assert str(saved / "state.pt") in str(info.value)
    assert not marker.exists(), "the pickled payload ran"
    # a plain (legacy, non-zip) pickle file as well
    (saved / "state.pt").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(VitDSIError, match=r"state\.pt: refused to load.*nothing in it was executed"):
        load_retriever(saved, device="cpu")
    assert not marker.exists(), "the pickled payload ran"


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", "half"])
def test_empty_or_truncated_state_is_a_named_error(saved, content):
    state = saved / "state.pt"
    if content == "half":
        content = state.read_bytes()[: state.stat().st_size // 2]
    state.write_bytes(content)
    with pytest.raises(
        VitDSIError,
        match=r"state\.pt: (empty file|not a readable torch file|refused to load: not a torch file)",
    ):
        load_retriever(saved, device="cpu")
    with pytest.raises(VitDSIError, match=str(saved)):
        load_retriever(saved, device="cpu")


@pytest.mark.parametrize(
    "content", ["", '{"retriever": "pixels-knn", "build_', '{"retriever": "pixels-knn"}', "[1, 2]"]
)
def test_empty_or_truncated_config_is_a_named_error(saved, content):
    (saved / "retriever.json").write_text(content)
    with pytest.raises(VitDSIError, match=r"retriever\.json: not a readable saved-retriever config"):
        load_retriever(saved, device="cpu")


def test_state_of_every_retriever_loads_with_weights_only(tiny_split, tmp_path):
    """What each built-in retriever saves is plain tensors and values (weights_only-loadable);
    the round trip itself is in the contract tests."""
    for name in ("bovw", "embedding", "pixels-knn", "random", "dsi-vit"):
        r = smoke_retriever(name)
        r.index(tiny_split.corpus, train_queries=tiny_split.train)
        save_retriever(r, tmp_path / name)
        torch.load(tmp_path / name / "state.pt", weights_only=True)
        assert json.loads((tmp_path / name / "retriever.json").read_text())["retriever"] == name


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("image_size", 10**6, "image_size 1,000,000 out of bounds"),
        ("corpus_size", 2**70, "out of bounds"),
        (
            "build_params",
            {"center": True, "batch_size": -5},
            "parameter 'batch_size' must be in 1..100,000,000",
        ),
    ],
)
def test_out_of_bounds_saved_config_is_a_named_error(saved, key, value, message):
    config = json.loads((saved / "retriever.json").read_text())
    config[key] = value
    (saved / "retriever.json").write_text(json.dumps(config))
    with pytest.raises(VitDSIError, match=rf"retriever\.json: .*{message}"):
        load_retriever(saved, device="cpu")
