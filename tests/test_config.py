"""Study files: validation errors name the file, the field and what is allowed; resolution
follows scale preset < fixed < method params < sampled; every shipped study is valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bench.config import StudyConfigError, apply_overrides, load_study, resolve
from bench.scales import SCALES
from vitdsi.retrievers.registry import get, registered

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


def knn(**extra):
    return {"name": "t", "retriever": "pixels-knn", "scale": "smoke", **extra}


def error(data, **kw) -> str:
    with pytest.raises(StudyConfigError) as e:
        resolve(data, source="studies/x.yaml", **kw)
    return str(e.value)


def test_minimal_study_resolves_with_defaults():
    s = resolve(knn(space={"center": [True, False]}))
    assert s.sampler == "grid" and s.n_trials == 2
    assert s.grid() == [{"center": True}, {"center": False}]
    assert s.dataset.name == SCALES["smoke"].dataset and s.dataset.n_total == SCALES["smoke"].n_total
    assert s.metric == "MAP@10" and s.direction == "maximize" and "MAP@10" in s.metrics
    assert s.default_study_name == "t-smoke"


def test_continuous_space_defaults_to_tpe_and_log_shorthand():
    s = resolve(knn(space={"batch_size": {"type": "int", "low": 8, "high": 512, "log": True}}, n_trials=4))
    assert s.sampler == "tpe" and s.n_trials == 4
    s = resolve(
        {
            "name": "t",
            "retriever": "dsi-vit",
            "scale": "smoke",
            "space": {"lr": {"type": "log", "low": 1e-4, "high": 1e-2}},
        }
    )
    assert s.space["lr"].log and s.sampler == "tpe"


def test_precedence_scale_fixed_method_sampled():
    preset = SCALES["smoke"].params_for("dsi-vit")
    data = {
        "name": "t",
        "scale": "smoke",
        "methods": {"a": {"retriever": "dsi-vit", "params": {"depth": 3}}, "b": {"retriever": "dsi-vit"}},
        "fixed": {"dim": 48, "depth": 2, "dataset.n_total": 200},
        "space": {"method": ["a", "b"], "heads": [2, 4], "dataset.split_ratio": [0.5]},
    }
    s = resolve(data)
    a = s.trial_config({"method": "a", "heads": 4, "dataset.split_ratio": 0.5})
    assert a.params["ff_dim"] == preset["ff_dim"]  # from the scale preset
    assert a.params["dim"] == 48  # fixed beats the preset
    assert a.params["depth"] == 3  # the method beats fixed
    assert a.params["heads"] == 4  # sampled beats everything
    assert a.dataset.n_total == 200 and a.dataset.split_ratio == 0.5
    assert s.trial_config({"method": "b", "heads": 2, "dataset.split_ratio": 0.5}).params["depth"] == 2


def test_scale_overlay_is_merged_and_null_deletes():
    data = knn(
        scale="small",
        space={"center": [True, False]},
        fixed={"batch_size": 64},
        scales={"smoke": {"space": {"center": [True]}, "fixed": {"batch_size": None}}},
    )
    assert len(resolve(data).grid()) == 2  # small: the base
    smoke = resolve(data, scale="smoke")
    assert smoke.grid() == [{"center": True}] and "batch_size" not in smoke.methods["pixels-knn"].params


def test_dataset_fields_and_query_args_route_to_their_place():
    s = resolve(
        {
            "name": "t",
            "retriever": "dsi-vit",
            "scale": "smoke",
            "space": {"dataset.n_total": [128, 256], "query.beam_size": [5, 20]},
        }
    )
    t = s.trial_config({"dataset.n_total": 128, "query.beam_size": 20})
    assert t.dataset.n_total == 128 and t.query == {"beam_size": 20} and "beam_size" not in t.params


def test_unknown_field_names_file_field_and_allowed():
    msg = error(knn(datset={"name": "digits"}))
    assert (
        "studies/x.yaml" in msg
        and "`datset`" in msg
        and "did you mean 'dataset'" in msg
        and "allowed:" in msg
    )
    msg = error(knn(sampler={"type": "gird"}))
    assert "sampler.type" in msg and "'grid'" in msg and "'tpe'" in msg and "gird" in msg
    msg = error(knn(space={"batch_size": {"type": "int", "low": 1, "hgh": 3}}))
    assert "space.batch_size.hgh" in msg and "high" in msg


def test_wrong_type_names_field():
    assert "n_trials" in error(knn(n_trials="many"))
    msg = error(knn(fixed={"batch_size": "big"}))
    assert "fixed.batch_size" in msg and "int" in msg and "'big'" in msg


def test_unknown_retriever_lists_registered():
    msg = error(knn(retriever="pixel-knn"))
    assert "pixel-knn" in msg and all(name in msg for name in registered())


def test_unknown_parameter_lists_allowed():
    msg = error(knn(fixed={"centre": True}))
    assert "fixed.centre" in msg and "center" in msg and "batch_size" in msg
    msg = error(knn(space={"query.beam": [1, 2]}))
    assert "query argument 'beam'" in msg
    assert "set by the harness" in error(knn(fixed={"seed": 3}))


def test_bad_choice_rejected_before_any_work():
    msg = error(
        {
            "name": "t",
            "retriever": "dsi-vit",
            "scale": "smoke",
            "space": {"id_scheme": ["random", "clusterd"]},
        }
    )
    assert "clusterd" in msg and "clustered" in msg


def test_retriever_validation_names_every_bad_value_by_its_field():
    study = {
        "name": "t",
        "scale": "smoke",
        "fixed": {"dropout": 2.0},
        "methods": {"dsi": {"retriever": "dsi-vit", "params": {"retrieval_epochs": -1, "id_scheme": "foo"}}},
        "space": {"mode": ["zero-shot", "finetuned"]},
    }
    msg = error(study)
    assert msg.startswith("studies/x.yaml: ") and "\n" not in msg
    fields = re.findall(r"field `([^`]+)`", msg)
    assert sorted(fields) == [
        "fixed.dropout",
        "methods.dsi.params.id_scheme",
        "methods.dsi.params.retrieval_epochs",
        "space.mode",
    ]
    assert "got 'foo'" in msg and "got 2.0" in msg and "'finetuned'" in msg
    msg = error(knn(fixed={"batch_size": "big"}, space={"center": ["yes", True]}))
    assert "field `fixed.batch_size`" in msg and "field `space.center`" in msg  # type errors together too


def test_dataset_errors():
    msg = error(knn(dataset={"name": "mnist"}))
    assert "dataset.name" in msg and "fashion-mnist" in msg
    msg = error(knn(dataset={"options": {"fitt": "pad"}}))
    assert "dataset.options.fitt" in msg and "fit" in msg
    assert "dataset.root" in error(knn(dataset={"root": "/tmp"}))  # digits is not read from files
    assert "query_fractions" in error(knn(dataset={"query_fractions": [0.5, 0.5, 0.5]}))


def test_sampler_metric_scale_and_method_errors():
    assert "grid sampler" in error(
        knn(sampler={"type": "grid"}, space={"batch_size": {"type": "float", "low": 1, "high": 2}})
    )
    assert "MAP@10" in error(knn(metrics=["MAP"]))
    assert "objective.metric" in error(knn(objective={"metric": "mAP@10"}))
    msg = error(knn(scale="huge"))
    assert "huge" in msg and "smoke" in msg
    assert "scales.tiny" in error(knn(scales={"tiny": {}}))
    assert "method" in error(
        {
            "name": "t",
            "scale": "smoke",
            "methods": {"a": {"retriever": "random"}, "b": {"retriever": "pixels-knn"}},
        }
    )
    assert "both" in error(knn(methods={"a": {"retriever": "random"}}))


def test_yaml_floats_and_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\nretriever: dsi-vit\nscale: smoke\nfixed: {lr: 1e-3}\nspace:\n  depth: [1, 2]\n")
    s = load_study(path)
    assert s.methods["dsi-vit"].params["lr"] == 1e-3
    s = load_study(path, overrides=["space.depth=[3]", "repeats=2", "dataset.n_total=300"])
    assert s.grid() == [{"depth": 3}] and s.repeats == 2 and s.dataset.n_total == 300
    data = apply_overrides({"space": {}}, ["space.dataset.n_total=[1, 2]"])
    assert data == {"space": {"dataset.n_total": [1, 2]}}
    with pytest.raises(StudyConfigError, match="FIELD=VALUE"):
        load_study(path, overrides=["repeats"])
    with pytest.raises(StudyConfigError, match="not found"):
        load_study(tmp_path / "missing.yaml")


def test_report_block_flags_the_paper_table_and_rejects_typos():
    defaults = {
        "compare_with": [],
        "equivalence_margin": None,
        "paired_test": "bootstrap",
        "bootstrap_samples": 10_000,
    }
    assert resolve(knn(report={"paper_table": True})).report == {"paper_table": True, **defaults}
    assert resolve(knn()).report == {"paper_table": False, **defaults}
    margin = resolve(knn(report={"equivalence_margin": 0.02, "paired_test": "seed-t"})).report
    assert (margin["equivalence_margin"], margin["paired_test"]) == (0.02, "seed-t")
    assert "field `report.equivalence_margin`" in error(knn(report={"equivalence_margin": -0.1}))
    assert "field `report.paired_test`" in error(knn(report={"paired_test": "wilcoxon"}))
    msg = error(knn(report={"paper_tabel": True}))
    assert "field `report.paper_tabel`" in msg and "did you mean 'paper_table'" in msg
    assert "field `report.paper_table`" in error(knn(report={"paper_table": "yes please"}))


def test_fingerprint_ignores_budget_but_not_space():
    a = resolve(
        knn(space={"center": [True, False]}, n_trials=1, description="x", report={"paper_table": True})
    )
    b = resolve(knn(space={"center": [True, False]}, n_trials=2))
    c = resolve(knn(space={"center": [True]}))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_plugins_register_retrievers_from_files(tmp_path):
    plugin = Path(__file__).parent / "plugins" / "sleepy.py"
    study = tmp_path / "s.yaml"
    study.write_text(
        f"name: t\nretriever: test-sleepy-knn\nscale: smoke\nplugins: [{plugin}]\nspace: {{sleep: [0.0]}}\n"
    )
    s = load_study(study)
    assert s.methods["test-sleepy-knn"].retriever == "test-sleepy-knn"
    assert "cannot import" in error(knn(plugins=["no_such_module_xyz"]))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_studies_are_valid_at_every_scale(path):
    for scale in SCALES:
        s = load_study(path, scale=scale)
        assert s.name == path.stem
        for method in s.methods.values():
            assert get(method.retriever)
    smoke = load_study(path, scale="smoke")
    # smoke runs offline and fast: digits, or mosaics generated from digits
    offline = smoke.dataset.name == "digits" or (
        smoke.dataset.name == "coco-mosaic" and smoke.dataset.options.get("base") == "digits"
    )
    assert offline and smoke.n_trials <= 12


# studies that measure one seed on purpose: latency and memorisation figures, and the scale
# study's corpus sizes, whose reports make no paired claim
SINGLE_SEED = {"baselines", "dsi_retrieval", "latency_scaling", "memorisation", "scale", "scale_class"}


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_a_study_that_compares_methods_runs_five_seeds_and_states_its_margin(path):
    study = load_study(path)
    if path.stem in SINGLE_SEED:
        assert study.repeats == 1
        return
    assert study.repeats >= 5, "a finding needs at least 5 seeds"
    assert study.report["equivalence_margin"] is not None, "a tie needs a stated equivalence margin"


def test_shipped_study_set_is_complete():
    names = {p.stem for p in STUDIES}
    assert {
        "patch_size",
        "depth",
        "dropout",
        "split_ratio",
        "bovw_k",
        "zero_shot_vs_finetuned",
        "id_scheme",
        "table1",
        "latency_scaling",
    } <= names
    table1 = load_study(STUDIES[[p.stem for p in STUDIES].index("table1")])
    assert table1.space["dataset.n_total"].choices == [512, 1024, 2048]
    kinds = {(m.retriever, m.params.get("id_scheme"), m.params.get("mode")) for m in table1.methods.values()}
    assert {
        ("bovw", None, None),
        ("dsi-vit", "random", "zero-shot"),
        ("dsi-vit", "clustered", "fine-tuned"),
    } <= kinds
    # the studies whose numbers are quoted as findings run several seeds (headline, re-designed for the
    # seed-level tests, the five a finding needs) and put every label-using DSI beside the label-matched
    # baselines, built on the same encoder fields as the DSI
    for name, seeds in (("table1", 5), ("headline", 5)):
        study = load_study(STUDIES[[p.stem for p in STUDIES].index(name)])
        assert study.repeats == seeds, name
        retrievers = {m.retriever: m for m in study.methods.values()}
        assert {"classifier", "dual-encoder", "dsi-vit", "bovw"} <= set(retrievers), name
        dsi = next(
            m
            for m in study.methods.values()
            if m.retriever == "dsi-vit" and m.params.get("mode") != "zero-shot"
        )
        for baseline in ("classifier", "dual-encoder"):
            for field in (
                "patch_size",
                "dim",
                "ff_dim",
                "depth",
                "heads",
                "dropout",
                "lr",
                "batch_size",
                "views",
            ):
                assert retrievers[baseline].params.get(field) == dsi.params.get(field), (
                    name,
                    baseline,
                    field,
                )


def test_set_wins_over_the_scales_block(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "retriever": "dsi-vit",
                "scale": "small",
                "fixed": {"index_epochs": 300},
                "space": {"patch_size": [8, 16, 32]},
                "scales": {
                    "smoke": {
                        "fixed": {"index_epochs": 60},
                        "space": {"patch_size": [4, 8, 16]},
                        "repeats": 2,
                    }
                },
            }
        )
    )
    s = load_study(
        path, scale="smoke", overrides=["space.patch_size=[16]", "fixed.index_epochs=5", "repeats=1"]
    )
    assert s.grid() == [{"patch_size": 16}] and s.n_trials == 1
    assert s.methods["dsi-vit"].params["index_epochs"] == 5 and s.repeats == 1
    # without --set the scales block still applies, and an override of the block itself works
    s = load_study(path, scale="smoke")
    assert len(s.grid()) == 3 and s.methods["dsi-vit"].params["index_epochs"] == 60
    s = load_study(path, scale="smoke", overrides=["scales.smoke.fixed.index_epochs=7"])
    assert s.methods["dsi-vit"].params["index_epochs"] == 7
    s = load_study(path, overrides=["scale=smoke"])
    assert s.scale == "smoke" and s.methods["dsi-vit"].params["index_epochs"] == 60


def test_report_compare_with_names_methods_of_the_study():
    two = {
        "name": "t",
        "scale": "smoke",
        "space": {"method": ["knn", "rand"]},
        "methods": {"knn": {"retriever": "pixels-knn"}, "rand": {"retriever": "random"}},
    }
    assert resolve({**two, "report": {"compare_with": ["rand", "pixels-knn"]}}).report["compare_with"] == [
        "rand",
        "pixels-knn",
    ]
    msg = error({**two, "report": {"compare_with": ["knn", "rnad"]}})
    assert "field `report.compare_with[1]`" in msg and "'rnad'" in msg and "did you mean 'rand'" in msg
    # a study's report does not enter its fingerprint: adding references to a running study is safe
    assert resolve({**two, "report": {"compare_with": ["rand"]}}).fingerprint() == resolve(two).fingerprint()
