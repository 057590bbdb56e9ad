"""What a latency study measures at scale: a fixed number of queries under the instance protocol,
the peak resident set of the searches, model bytes, an atomic DSI's output layer alone, and the
report's build seconds from cold."""

from __future__ import annotations

import mmap
import types

import pandas as pd
import pytest
import torch

from bench import plots
from bench.config import StudyConfigError, resolve
from bench.kinds.latency.memory import model_bytes, peak_rss_bytes, reset_peak_rss
from bench.kinds.latency.report_scale import cost_section
from bench.kinds.latency.trial import latency_record
from bench.trial import prepare
from vitdsi.data.split import split_sizes
from vitdsi.retrievers import create
from vitdsi.retrievers.dsi_base import SMOKE_MODEL

OPTS = {"batch_size": 8, "calls": 3, "batch_calls": 2, "warmup": 1, "threads": 1, "add_images": 4}


def _instance_study(**latency):
    return {
        "name": "lat-instance",
        "scale": "smoke",
        "retriever": "pixels-knn",
        "metrics": ["R@1", "MRR"],
        "dataset": {"name": "digits", "protocol": "instance", "instance": {"train_views": 2}},
        "space": {"dataset.n_total": [64, 256]},
        "latency": {"n_queries": 24, "train_queries": 20, "add_images": 5, **latency},
    }


def test_instance_protocol_gives_the_same_number_of_queries_at_every_n():
    study = resolve(_instance_study())
    for n in (64, 256):
        data = study.trial_config({"dataset.n_total": n}).dataset
        assert split_sizes(data.n_total, data.split_ratio, data.query_fractions)["idb"] == n
        _, sets = prepare(data)
        assert len(sets.corpus) == n
        # 24 test and 24 validation views, each of a distinct indexed image
        for part in (sets.test, sets.val):
            assert len(part) == 24 and len(set(part.view_of.tolist())) == 24
            assert part.view_of.min() >= 0 and part.view_of.max() < n
            assert part.meta["protocol"] == "instance"
        # 20 train views: two of each of 10 indexed images
        assert len(sets.train) == 20 and len(set(sets.train.view_of.tolist())) == 10
        # the images `add` is timed with are source images that are never indexed
        assert len(sets.held_out) == 5 and sets.held_out.view_of is None
        assert not set(sets.held_out.source_ids) & set(sets.corpus.source_ids)


@pytest.mark.parametrize(
    ("latency", "match"),
    [
        ({"n_queries": 100}, r"`latency.n_queries`: 100 test views .* but N = 64"),
        ({"train_queries": 21}, r"`latency.train_queries`: 21 train views .* a multiple of train_views"),
    ],
)
def test_instance_latency_counts_are_checked(latency, match):
    with pytest.raises(StudyConfigError, match=match):
        resolve(_instance_study(**latency)).trial_config({"dataset.n_total": 64})


def test_peak_rss_reset_forgets_an_earlier_peak():
    if not reset_peak_rss() or peak_rss_bytes() is None:
        pytest.skip("no /proc/self/clear_refs or VmHWM here")
    # an anonymous mapping of its own (not the allocator's, which may reuse pages already resident
    # after earlier tests), every page touched, then unmapped
    assert reset_peak_rss()
    start = peak_rss_bytes()
    big = mmap.mmap(-1, 256 * 2**20)
    big.write(b"\1" * len(big))
    big.close()
    before = peak_rss_bytes()
    assert before > start + 200 * 2**20
    assert reset_peak_rss()
    after = peak_rss_bytes()
    assert after < before - 200 * 2**20


def test_model_bytes_sums_parameters_and_buffers(tiny_split):
    module = torch.nn.Linear(4, 3)  # 15 float32 parameters
    module.register_buffer("steps", torch.zeros(5, dtype=torch.int64))
    assert model_bytes(types.SimpleNamespace(model=module)) == 15 * 4 + 5 * 8
    knn = create("pixels-knn", device="cpu")
    knn.index(tiny_split.corpus)
    assert model_bytes(knn) is None


@pytest.fixture(scope="module")
def dsis(tiny_split):
    built = {}
    for scheme in ("atomic", "clustered"):
        r = create(
            "dsi-vit",
            **{**SMOKE_MODEL, "mode": "zero-shot"},
            id_scheme=scheme,
            index_epochs=1,
            retrieval_epochs=0,
            device="cpu",
        )
        r.index(tiny_split.corpus)
        built[scheme] = r
    return built


def test_atomic_head_time_and_memory_are_logged(tiny_split, dsis):
    n = len(tiny_split.corpus)
    atomic = latency_record(dsis["atomic"], tiny_split, OPTS, 1.0, 5, [])
    assert 0 < atomic["atomic_head_b1_ms"] <= atomic["atomic_head_b1_p95_ms"]
    assert atomic["model_bytes"] == model_bytes(dsis["atomic"]) > 0
    assert atomic["model_bytes_per_image"] == pytest.approx(atomic["model_bytes"] / n)
    assert atomic["index_bytes_per_image"] == pytest.approx(atomic["index_bytes"] / n)
    assert atomic["add_images"] == len(tiny_split.val)  # class protocol: the split's validation part
    if reset_peak_rss():
        assert atomic["search_peak_rss_bytes"] > 0
    clustered = latency_record(dsis["clustered"], tiny_split, OPTS, 1.0, 5, [])
    knn = create("pixels-knn", device="cpu")
    knn.index(tiny_split.corpus)
    plain = latency_record(knn, tiny_split, OPTS, 1.0, 5, [])
    assert "atomic_head_b1_ms" not in clustered and "atomic_head_b1_ms" not in plain
    assert "model_bytes" in clustered and "model_bytes" not in plain and plain["index_bytes"] > 0


def test_a_dsi_adds_only_with_ids_it_can_extend(dsis):
    assert dsis["atomic"].supports_add and dsis["clustered"].supports_add
    for scheme in ("rq", "semantic"):
        assert not create("dsi-vit", id_scheme=scheme, device="cpu").supports_add


def test_cost_section_plots_cold_build_seconds_beside_the_wall_ones(tmp_path, monkeypatch):
    nan = float("nan")
    # method, N, wall, cold, extraction, unknown entries
    trials = [
        ("dsi", 64, 10.0, 40.0, 30.0, 0.0),  # read its features from the cache: 30 s not spent here
        ("dsi", 128, 70.0, 70.0, 60.0, 0.0),  # built them
        ("embedding", 64, 2.0, nan, 0.5, 1.0),  # read an entry that recorded no build seconds
        ("embedding", 128, 3.0, 4.0, 1.0, 0.0),
        ("bovw", 64, 5.0, nan, nan, nan),  # logged no extraction seconds
        ("bovw", 128, 9.0, nan, nan, nan),
    ]
    runs = pd.DataFrame(
        trials, columns=["method", "N", "index_build_s", "cold_build_s", "extraction_s", "extraction_unknown"]
    ).assign(target="", train_seconds=1.0, train_flops=nan)
    plotted = {}

    def plot(series, path, *args, **kwargs):
        plotted[path.name] = series
        return path

    monkeypatch.setattr(plots, "latency_plot", plot)
    text = cost_section("scale", runs, tmp_path, "fig")
    assert plotted["cost_cold_build_s.png"] == {
        "bovw": ([64, 128], [5.0, 9.0]),
        "dsi": ([64, 128], [40.0, 70.0]),
        "embedding": ([128], [4.0]),
    }
    header = "| method | N | cold build s | wall build s | extraction s | train s | train FLOPs |"
    rows = text[text.index(header) :].splitlines()[2:8]
    cells = [[c.strip() for c in row.strip("|").split("|")][:5] for row in rows]
    assert cells == [
        ["dsi", "64", "40.0", "10.0", "30.0"],
        ["dsi", "128", "70.0", "70.0", "60.0"],
        ["embedding", "64", "unknown", "2.0", "unknown"],
        ["embedding", "128", "4.0", "3.0", "1.0"],
        ["bovw", "64", "5.0 (wall)", "5.0", "n/a"],
        ["bovw", "128", "9.0 (wall)", "9.0", "n/a"],
    ]
    assert "charged per image set at the seconds measured when its feature-cache entry was built" in text
    assert "*(wall)*: the trial logged no extraction seconds" in text
