"""Latency measurement helpers: fits, crossover and a real (tiny) measurement."""

from __future__ import annotations

import numpy as np
import pytest

from bench.kinds.latency.measure import crossover, fit_loglog, index_bytes, measure_search
from vitdsi.retrievers import create


def test_loglog_slope_recovers_constant_and_linear_scaling():
    ns = 2.0 ** np.arange(8, 17)
    assert fit_loglog(ns, np.full_like(ns, 3.0)).slope == pytest.approx(0.0, abs=1e-9)
    fit = fit_loglog(ns, 1e-4 * ns)
    assert fit.slope == pytest.approx(1.0) and fit.r2 == pytest.approx(1.0)
    assert fit.predict(1024.0) == pytest.approx(1e-4 * 1024)
    with pytest.raises(ValueError):
        fit_loglog([256], [1.0])


def test_crossover_between_constant_and_linear():
    ns = 2.0 ** np.arange(8, 17)
    dsi = np.full_like(ns, 2.0)  # O(1): 2 ms
    brute = 1e-3 * ns  # O(N): 2 ms at N = 2000
    assert crossover(ns, dsi, brute) == pytest.approx(2000.0, rel=1e-6)
    assert crossover(ns, dsi, brute * 1e3) == ns[0]  # faster everywhere
    assert crossover(ns, dsi, brute * 1e-6) is None  # never faster in range


def test_measure_search_on_a_real_index(tiny_split):
    r = create("pixels-knn", device="cpu")
    r.index(tiny_split.corpus)
    one = measure_search(r, tiny_split.test.images, k=5, batch_size=1, calls=5, warmup=1)
    many = measure_search(r, tiny_split.test.images, k=5, batch_size=16, calls=3, warmup=1)
    assert one.calls == 5 and many.calls == 3 and many.batch_size == 16
    assert 0 < one.p50_ms <= one.p95_ms
    assert index_bytes(r) > len(tiny_split.corpus) * 3 * 32 * 32 * 4  # float32 features at least


def test_pareto_front_keeps_the_undominated_points():
    from bench.kinds.latency.measure import pareto_front

    ms = [1.0, 2.0, 2.0, 4.0, 0.5, 3.0, np.nan]
    quality = [0.5, 0.7, 0.6, 0.9, 0.1, 0.7, 1.0]
    # 2.0 ms / 0.6 and 3.0 ms / 0.7 are beaten by 2.0 ms / 0.7; a NaN latency is on no front
    assert pareto_front(ms, quality).tolist() == [True, True, False, True, True, False, False]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]).tolist() == [True, True]  # ties dominate nobody
    assert pareto_front([1.0, 2.0], [0.9, np.nan]).tolist() == [True, False]


def test_add_is_timed_on_a_copy_and_skipped_without_add_support(tiny_split):
    from bench.kinds.latency.trial import add_ms_per_image
    from vitdsi.retrievers.base import Retriever

    r = create("pixels-knn", device="cpu")
    r.index(tiny_split.corpus)
    before = r.search(tiny_split.test.images, 5).ids.clone()
    assert add_ms_per_image(r, tiny_split.val) > 0
    assert r.corpus_size == len(tiny_split.corpus)  # the measured index is untouched
    assert (r.search(tiny_split.test.images, 5).ids == before).all()
    assert add_ms_per_image(r, tiny_split.val.subset(np.arange(0))) is None

    class NoAdd(Retriever):  # index and search only: `add` raises
        name = "no-add"

        def _index(self, corpus, train_queries):
            pass

        def _search(self, queries, k):
            raise AssertionError("not searched")

    no_add = NoAdd(device="cpu")
    no_add.index(tiny_split.corpus)
    assert r.supports_add and not no_add.supports_add
    assert add_ms_per_image(no_add, tiny_split.val) is None


def test_indexing_summary_reads_where_the_indexing_phase_stopped():
    from bench.kinds.latency.trial import indexing_summary

    history = [
        {"phase": "own-ids", "epoch": 1, "ia1": 0.2},
        *({"phase": "index", "epoch": e, "ia1": 0.5 if e == 10 else None} for e in range(1, 11)),
        {"phase": "index", "epoch": 11, "ia1": 0.96},
        {"phase": "retrieval", "epoch": 1, "ia1": None},
        {"phase": "index", "epoch": 1, "ia1": 0.4, "add_step": 64},
    ]  # an add step, not the build
    assert indexing_summary(history) == {"index_epochs_run": 11.0, "index_ia1": 0.96}
    assert indexing_summary([{"phase": "retrieval", "epoch": 1}]) == {}
    assert indexing_summary([]) == {}


def test_grow_rule_and_scored_k():
    from bench.config.scoring import scored_k
    from bench.kinds.latency.config import grown_params

    grow = {
        "methods": ["dsi"],
        "at": {4096: {"dim": 192}, "16384": {"dim": 256, "depth": 6}},
    }  # a logged key is a str
    assert grown_params(grow, "dsi", 4095) == {}
    assert grown_params(grow, "dsi", 4096) == {"dim": 192}
    assert grown_params(grow, "dsi", 65536) == {"dim": 256, "depth": 6}  # the largest threshold reached wins
    assert grown_params(grow, "bovw", 65536) == {} and grown_params(None, "dsi", 65536) == {}
    assert scored_k(["P@10", "MAP@10", "IA@5"]) == 10  # IA@K queries the indexed images apart
    assert scored_k(["P@10", "MRR"]) == 100 and scored_k(["IA@1"]) == 1


LATENCY_METHODS = {"dsi": {"retriever": "dsi-vit"}, "knn": {"retriever": "pixels-knn"}}


def _latency_study(**latency):
    return {
        "name": "lat",
        "scale": "smoke",
        "methods": LATENCY_METHODS,
        "metrics": ["IA@1", "MAP@10"],
        "space": {"dataset.n_total": [64, 256], "method": ["dsi", "knn"]},
        "latency": {"n_queries": 16, **latency},
    }


def test_latency_split_holds_train_add_and_timed_queries_and_grows_the_model():
    from bench.config import resolve
    from vitdsi.data.split import split_sizes

    study = resolve(
        _latency_study(train_queries=24, add_images=8, grow={"methods": ["dsi"], "at": {256: {"dim": 96}}})
    )
    for n in (64, 256):
        data = study.trial_config({"dataset.n_total": n, "method": "dsi"}).dataset
        assert split_sizes(data.n_total, data.split_ratio, data.query_fractions) == {
            "idb": n,
            "train": 24,
            "val": 8,
            "test": 16,
        }
    dsi = {n: study.trial_config({"dataset.n_total": n, "method": "dsi"}) for n in (64, 256)}
    knn = study.trial_config({"dataset.n_total": 256, "method": "knn"})
    # the smoke preset's, then the grow rule's
    assert dsi[64].params["dim"] == 64 and dsi[256].params["dim"] == 96
    assert "dim" not in knn.params
    assert "grow" not in dsi[256].latency  # its effect is in the params (and so in the fingerprint)
    assert dsi[64].fingerprint() != dsi[256].fingerprint()


@pytest.mark.parametrize(
    ("latency", "metrics", "match"),
    [
        ({"k": 5}, None, r"`latency.k`: .*timed at k=5 but quality is scored at k=10"),
        ({"k": 10}, ["MAP@10", "MRR"], r"scored at k=100 .*100 with MRR"),
        (
            {"grow": {"methods": ["dsi", "bovw"], "at": {256: {"dim": 96}}}},
            None,
            r"`latency.grow.methods\[1\]`: unknown method 'bovw'",
        ),
        (
            {"grow": {"methods": ["dsi", "knn"], "at": {256: {"dim": 96}}}},
            None,
            r"`latency.grow.at.256.dim`: retriever 'pixels-knn' \(method 'knn'\) has no parameter 'dim'",
        ),
        ({"grow": {"methods": ["dsi"], "at": {256: {"query.beam_size": 5}}}}, None, "build parameters only"),
        (
            {"grow": {"methods": ["dsi"], "at": {0: {"dim": 96}}}},
            None,
            "threshold 0: a threshold is a number of indexed images",
        ),
        ({"grow": {"methods": ["dsi"], "at": {256: {}}}}, None, "threshold 256: give the build parameters"),
        (
            {"grow": {"methods": ["dsi"], "at": {256: {"dim": 90}}}},
            None,
            "heads",
        ),  # the retriever's own check, per point
    ],
)
def test_latency_block_errors_name_the_field(latency, metrics, match):
    from bench.config import StudyConfigError, resolve

    study = _latency_study(**latency)
    if metrics:
        study["metrics"] = metrics
    with pytest.raises(StudyConfigError, match=match):
        resolve(study, source="lat.yaml")


def test_grown_parameter_cannot_also_be_searched():
    from bench.config import StudyConfigError, resolve

    study = _latency_study(grow={"methods": ["dsi"], "at": {256: {"depth": 3}}})
    study["methods"] = {"dsi": {"retriever": "dsi-vit"}, "dsi2": {"retriever": "dsi-vit"}}
    study["space"] = {"dataset.n_total": [64, 256], "method": ["dsi", "dsi2"], "depth": [1, 2]}
    with pytest.raises(
        StudyConfigError, match=r"`latency.grow.at.256.depth`: 'depth' is also searched in `space`"
    ):
        resolve(study, source="lat.yaml")


def test_scaling_table_reads_no_law_and_no_crossover_from_two_sizes(tmp_path):
    import pandas as pd

    from bench.kinds.latency.report import _scaling

    def table(sizes):
        rows = [("dsi", True, n, 5.0 + 1e-5 * n) for n in sizes] + [
            ("scan", False, n, 1e-3 * n) for n in sizes
        ]
        runs = pd.DataFrame(rows, columns=["method", "dsi", "N", "p50"])
        return "\n".join(_scaling("s", runs, "p50", "batch 1", tmp_path, "fig"))

    two = table([1024, 65536])
    assert "| scan | 2 | 1.000 | n/a | none: 2 sizes" in two and "Crossover" not in two
    three = table([1024, 8192, 65536])
    assert "| scan | 3 | 1.000 | 1.000 | ≈ O(N) |" in three and "is faster from there on" in three
