"""A trial's build seconds from cold (bench.build_cost): a frozen-encoder DSI, dual encoder and
the embedding baseline run twice against one feature cache log the same extraction seconds both times, and the
warm run's cold build seconds exceed its wall seconds by what it did not extract."""

from __future__ import annotations

import pytest

from bench.build_cost import cold_build_summary
from bench.config import resolve
from bench.trial import forget_built, run_trial

# a frozen EfficientNet-Lite0 at 64 px under a tiny model, trained on its cached features
FROZEN = dict(
    encoder="efficientnet-lite0",
    encoder_size=64,
    freeze_encoder=True,
    dim=32,
    ff_dim=64,
    depth=1,
    heads=2,
    dropout=0.0,
    views="none",
)
METHODS = {
    "dsi-vit": {**FROZEN, "id_scheme": "atomic", "mode": "zero-shot", "index_epochs": 1},
    "dual-encoder": {**FROZEN, "epochs": 1, "index_type": "flat"},
    "embedding": {"backbone": "efficientnet-lite0", "index_type": "flat", "batch_size": 16},
}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty feature cache of this test's own, on."""
    monkeypatch.setenv("VITDSI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VITDSI_FEATURE_CACHE", raising=False)
    return tmp_path / "cache"


def _trial(retriever: str):
    study = resolve(
        {
            "name": "cold-build",
            "retriever": retriever,
            "scale": "smoke",
            "fixed": METHODS[retriever],
            "metrics": ["R@1"],
            "dataset": {"n_total": 48, "split_ratio": 0.5},
        }
    )
    forget_built()  # build again, as a later trial of another process would
    return run_trial(study.trial_config({}), device="cpu").timings


@pytest.mark.parametrize("retriever", ["dsi-vit", "dual-encoder", "embedding"])
def test_a_warm_build_logs_the_extraction_a_cold_one_measured(retriever, cache_dir):
    cold, warm = _trial(retriever), _trial(retriever)
    assert cold["extraction_s"] > 0 and cold["extraction_unknown"] == 0
    assert cold["extraction_spent_s"] == cold["extraction_s"]  # a miss: extracted now
    assert cold["cold_build_s"] == pytest.approx(cold["index_seconds"])
    assert warm["extraction_s"] == cold["extraction_s"]  # the seconds the entry recorded
    assert warm["extraction_spent_s"] == 0.0  # a hit: nothing extracted
    assert warm["cold_build_s"] == pytest.approx(warm["index_seconds"] + cold["extraction_s"])
    assert warm["cold_build_s"] > warm["index_seconds"]
    forget_built()


def test_cache_off_measures_the_extraction_every_time(monkeypatch):
    monkeypatch.setenv("VITDSI_FEATURE_CACHE", "0")
    first, again = _trial("dsi-vit"), _trial("dsi-vit")
    for timings in (first, again):
        assert timings["extraction_s"] == timings["extraction_spent_s"] > 0
        assert timings["cold_build_s"] == pytest.approx(timings["index_seconds"])
    forget_built()


def test_cold_build_is_unknown_when_an_entry_recorded_no_seconds():
    known = {"extraction_s": 2.0, "extraction_spent_s": 0.5, "extraction_unknown": 0.0}
    assert cold_build_summary([known], [3.0])["cold_build_s"] == 4.5
    old = {**known, "extraction_unknown": 1.0}
    assert "cold_build_s" not in cold_build_summary([known, old], [3.0, 3.0])
    # a retriever that reports no extraction (BoVW, a search without a frozen encoder) logs none
    assert cold_build_summary([{}], [3.0]) == {}
