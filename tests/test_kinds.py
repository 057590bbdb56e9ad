"""The study kinds' registry (bench.kinds): each kind's block is a field of the study file typed
by its model, the resolved study and its trials carry its settings, and the config, a trial and
the report find a study's kind through `kind_of` alone."""

from __future__ import annotations

import pytest

from bench.config import StudyConfigError, StudyFile, TrialConfig, resolve
from bench.kinds import KINDS, StudyKind, kind_of

_BASE = {"name": "k", "scale": "smoke", "retriever": "pixels-knn", "metrics": ["MAP@10"]}


def test_every_kind_is_a_study_file_block_typed_by_its_model():
    assert list(KINDS) == ["latency", "continual"]
    for key, kind in KINDS.items():
        assert isinstance(kind, StudyKind) and kind.key == key
        sf = StudyFile.model_validate({**_BASE, key: {}})
        assert isinstance(getattr(sf, key), kind.config)
        assert kind_of(sf) == (kind, getattr(sf, key))
        assert key in TrialConfig.model_fields


def test_an_ordinary_study_has_no_kind():
    study = resolve(dict(_BASE))
    assert kind_of(study) is None and kind_of(study.trial_config({})) is None
    assert kind_of({"name": "k"}) is None  # a logged study, as a report reads it


def test_a_kind_block_resolves_into_the_study_and_its_trials():
    study = resolve({**_BASE, "continual": {"steps": 2}})
    kind, settings = kind_of(study)
    assert kind is KINDS["continual"] and settings == {"initial": 0.5, "steps": 2}
    assert kind_of(study.trial_config({}))[1] == settings
    assert kind_of(study.model_dump(mode="json"))[0] is kind  # the logged layout keeps the block's key


def test_a_bad_kind_block_names_its_field():
    with pytest.raises(StudyConfigError, match=r"field `continual.steps`"):
        resolve({**_BASE, "continual": {"steps": 0}}, source="k.yaml")
    with pytest.raises(StudyConfigError, match=r"field `latency.n_querie`: unknown field.*n_queries"):
        resolve({**_BASE, "latency": {"n_querie": 4}}, source="k.yaml")


def test_a_study_is_of_one_kind():
    with pytest.raises(
        StudyConfigError,
        match=r"field `continual`: a study is a latency study or a "
        r"continual-indexing study, not both",
    ):
        resolve({**_BASE, "latency": {"n_queries": 8}, "continual": {}}, source="k.yaml")


def test_build_settings_change_the_build_fingerprint_and_measure_settings_only_the_result():
    continual = [resolve({**_BASE, "continual": {"steps": s}}).trial_config({}) for s in (2, 3)]
    assert continual[0].fingerprint() != continual[1].fingerprint()  # steps change what is built
    latency = [resolve({**_BASE, "latency": {"n_queries": 8, "calls": c}}).trial_config({}) for c in (3, 4)]
    assert latency[0].fingerprint() == latency[1].fingerprint()  # timing settings build the same index
    assert latency[0].result_fingerprint() != latency[1].result_fingerprint()
