"""The study-level `views:` block: it reaches every method's build parameters and the report's Set-up."""

from __future__ import annotations

import pytest

from bench.config import StudyConfigError, resolve
from bench.report.data import StudyRecord
from bench.report.results import header_section
from bench.report.views import views_text

METHODS = {
    "dsi": {"retriever": "dsi-vit"},
    "dsi-own": {"retriever": "dsi-vit", "params": {"views": "light", "index_views": 0}},
    "classifier": {"retriever": "classifier"},
    "dual-encoder": {"retriever": "dual-encoder"},
    "bovw": {"retriever": "bovw"},
}


def _study(views=None, methods=None, **extra) -> dict:
    methods = methods or METHODS
    data = {"name": "t", "scale": "smoke", "methods": methods, "space": {"method": list(methods)}, **extra}
    if views is not None:
        data["views"] = views
    return data


def _record(study) -> StudyRecord:
    return StudyRecord(
        name="t",
        run_id="r",
        experiment_id="0",
        tracking_uri="",
        params={},
        tags={},
        resolved=study.model_dump(mode="json"),
    )


def test_views_block_sets_every_method_that_has_views_unless_the_method_does():
    study = resolve(_study({"strength": "strong", "index_views": 3}))
    params = {name: m.params for name, m in study.methods.items()}
    assert params["dsi"]["views"] == "strong" and params["dsi"]["index_views"] == 3
    assert (params["dsi-own"]["views"], params["dsi-own"]["index_views"]) == (
        "light",
        0,
    )  # its own params win
    for name in ("classifier", "dual-encoder"):
        assert params[name]["views"] == "strong" and "index_views" not in params[name]  # no DSI indexing
    assert "views" not in params["bovw"] and "index_views" not in params["bovw"]
    # without a block each method keeps its scale preset's or retriever's default
    plain = resolve(_study()).methods
    assert plain["dsi"].params["views"] == "none" and "views" not in plain["classifier"].params


def test_views_block_wins_over_the_scale_preset_and_a_scales_block_can_set_it():
    study = resolve(
        _study(methods={"dsi": {"retriever": "dsi-vit"}}, scales={"smoke": {"views": {"strength": "light"}}})
    )
    assert study.methods["dsi"].params["views"] == "light"  # the smoke preset says none


@pytest.mark.parametrize(
    "views, field, message",
    [
        ({"strength": "heavy"}, "views.strength", "'none', 'light', 'medium' or 'strong'"),
        ({"strength": "none", "index_views": 2}, "views", "index_views 2 needs views to draw"),
        ({"strength": "light", "index_views": -1}, "views.index_views", "greater than or equal to 0"),
        ({"index_views": 1}, "views.strength", "required"),
    ],
)
def test_bad_views_block_is_a_config_error_naming_the_field(views, field, message):
    with pytest.raises(StudyConfigError) as e:
        resolve(_study(views))
    assert f"`{field}`" in str(e.value) and message in str(e.value)


def test_views_in_fixed_and_in_the_block_is_an_error():
    with pytest.raises(
        StudyConfigError, match=r"field `fixed.views`: the study's `views:` block sets 'views'"
    ):
        resolve(
            _study({"strength": "light"}, methods={"dsi": {"retriever": "dsi-vit"}}, fixed={"views": "none"})
        )


def test_setup_declares_the_view_family_and_strength():
    text = views_text(
        _record(
            resolve(
                _study(
                    {"strength": "medium", "index_views": 4},
                    methods={k: v for k, v in METHODS.items() if k != "dsi-own"},
                )
            )
        )
    )
    assert "`vitdsi.training.train_views`, medium (shift <= 1/8 side, flip, brightness/contrast 0.3)" in text
    assert "for every trained method (dsi, classifier, dual-encoder)" in text and "dsi K=4" in text
    # strengths that differ are declared as such, per method
    text = views_text(_record(resolve(_study())))
    assert "not one strength (no augmentation parity)" in text
    assert "dsi none" in text and "dual-encoder none" in text and "dsi-own light" in text and "K=" not in text
    only_bovw = _record(resolve(_study(methods={"bovw": {"retriever": "bovw"}})))
    assert views_text(only_bovw) == "no method trains with the view family"
    assert "| training views | no method trains with the view family |" in header_section(only_bovw)
