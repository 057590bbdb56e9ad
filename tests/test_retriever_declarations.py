"""What a retriever declares about itself: its smoke settings (`smoke_params`, read by the smoke
scale preset), how its searches run (`search_info`, logged by every trial), its build parameters
as typed attributes, and the one patch-size rule of the ViT retrievers."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from conftest import smoke_retriever

import bench.scales
from bench.scales import SCALES
from bench.trial import search_settings
from vitdsi.retrievers import create, registered
from vitdsi.retrievers.base import Retriever
from vitdsi.retrievers.params import type_name


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
    atomic = smoke_retriever(
        "dsi-vit", id_scheme="atomic", index_epochs=1, retrieval_epochs=0, mode="zero-shot"
    )
    atomic.index(tiny_split.corpus)
    assert "search_beam" not in atomic.search_info(5)


def _declared(cls: type) -> dict[str, str]:
    """Attribute annotations of `cls` and its bases (as text: the modules postpone annotations)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update({k: type_name(v) for k, v in vars(klass).get("__annotations__", {}).items()})
    return out


def test_every_build_parameter_is_a_declared_attribute_of_its_type():
    missing = [
        f"{name}.{f.name}: {type_name(f.type)} (declared {_declared(cls).get(f.name)})"
        for name, cls in registered().items()
        for f in cls.config_params
        if _declared(cls).get(f.name) != type_name(f.type)
    ]
    assert not missing, "declare each config_param on the class with the config's type: " + ", ".join(missing)
    dsi = create("dsi-vit", patch_size=4, views="light")
    assert (dsi.patch_size, dsi.views) == (4, "light")  # set by Retriever.__init__, as declared


def test_the_patch_size_rule_reads_the_same_from_a_config_and_a_retriever():
    from vitdsi.errors import VitDSIError
    from vitdsi.models.vit_encoder import VitEncoderConfig

    with pytest.raises(
        VitDSIError, match="^patch_size 5 does not divide the image size 32; choose a divisor"
    ):
        VitEncoderConfig(image_size=32, patch_size=5)
    for name in ("dsi-vit", "classifier", "dual-encoder"):
        with pytest.raises(
            VitDSIError, match=f"^{name}: patch_size 5 does not divide the image size 32; choose"
        ):
            create(name, patch_size=5).check_image_size(32)
    # a borrowed encoder resizes
    create("dsi-vit", patch_size=5, encoder="efficientnet-lite0").check_image_size(32)
