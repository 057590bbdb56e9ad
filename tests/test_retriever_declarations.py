"""What a retriever declares about itself for the harness: its smoke settings (`smoke_params`, read
by the smoke scale preset) and how its searches run (`search_info`, logged by every trial)."""

from __future__ import annotations

from typing import Any, ClassVar

from conftest import smoke_retriever

import bench.scales
from bench.scales import SCALES
from bench.trial import search_settings
from vitdsi.retrievers import create
from vitdsi.retrievers.base import Retriever


class _Declared(Retriever):
    smoke_params: ClassVar[dict[str, Any]] = {"width": 3}

    def __init__(self, *, width: int = 10, **params: Any) -> None:
        super().__init__(**params)
        self.width = width

    def _index(self, corpus, train_queries):
        pass

    def _search(self, queries, k):
        raise NotImplementedError


def test_smoke_preset_reads_each_retrievers_own_smoke_params(monkeypatch):
    monkeypatch.setattr(bench.scales, "registered", lambda: {"declared": _Declared, "plain": Retriever})
    smoke = SCALES["smoke"]
    assert smoke.params_for("declared") == {"width": 3}
    assert smoke.params_for("plain") == {}  # declares none: its defaults
    assert smoke.params_for("unknown") == {}
    got = smoke.params_for("declared")
    got["width"] = 5  # a copy: the class's declaration is untouched
    assert _Declared.smoke_params == {"width": 3}


def test_other_presets_keep_their_own_tables():
    assert SCALES["small"].params_for("dsi-vit")["patch_size"] == 4
    assert SCALES["small"].params_for("bovw") == {}


def test_smoke_params_of_the_builtin_retrievers_build():
    assert SCALES["smoke"].params_for("dsi-vit")["index_epochs"] == 100
    assert SCALES["smoke"].params_for("classifier")["dim"] == 32
    assert smoke_retriever("dual-encoder").embed_dim == 16


def test_search_info_is_empty_for_a_retriever_without_a_beam(tiny_split):
    knn = create("pixels-knn", device="cpu")
    knn.index(tiny_split.corpus)
    assert knn.search_info(10) == {}
    assert search_settings(knn, 10) == {"search_k": 10.0}


def test_a_dsi_reports_its_effective_beam_and_id_length(tiny_split):
    dsi = smoke_retriever("dsi-vit", index_epochs=1, retrieval_epochs=0, mode="zero-shot")
    assert dsi.search_info(5) == {"search_beam": 10.0}  # no ids before indexing
    dsi.index(tiny_split.corpus)  # 60 images, clustered ids: 2 digits
    assert dsi.search_info(5) == {"search_beam": 10.0, "id_length": 2.0}
    assert dsi.search_info(20) == {"search_beam": 20.0, "id_length": 2.0}  # at least k hypotheses
    # the trial asks at most the corpus size
    assert search_settings(dsi, 100) == {"search_k": 100.0, "search_beam": 60.0, "id_length": 2.0}
    atomic = smoke_retriever("dsi-vit", id_scheme="atomic", index_epochs=1, retrieval_epochs=0, mode="zero-shot")
    atomic.index(tiny_split.corpus)
    assert "search_beam" not in atomic.search_info(5)
