"""Shared fixtures: small real datasets, made once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VITDSI_PROGRESS", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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
