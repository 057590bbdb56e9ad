"""Study files: one YAML is one Optuna study, validated (`schema`), loaded with `--set` and
its per-scale block (`loading`), resolved at a scale preset (`resolution`, `checks`) into the
frozen `Study` and its `TrialConfig`s (`resolved`). docs/design.md, "Optuna and MLflow".

The names below are imported on first use, so that the small modules of this package
(`errors`, `names`, `block`, `scoring`) import alone: the study kinds' blocks (`bench.kinds`)
are built on them, and the schema is built on the study kinds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.config.checks import check_data
    from bench.config.errors import StudyConfigError
    from bench.config.loading import apply_overrides, load_study, read_yaml, resolve
    from bench.config.names import RESERVED_PARAMS
    from bench.config.resolved import DataConfig, Method, Study, TrialConfig
    from bench.config.schema import (
        DEFAULT_STUDY_METRICS,
        Categorical,
        DatasetConfig,
        Distribution,
        FloatRange,
        IntRange,
        MethodConfig,
        StudyFile,
        TuneConfig,
    )

_EXPORTS = {  # name -> the module that defines it
    "check_data": "checks",
    "StudyConfigError": "errors",
    "apply_overrides": "loading",
    "load_study": "loading",
    "read_yaml": "loading",
    "resolve": "loading",
    "RESERVED_PARAMS": "names",
    "DataConfig": "resolved",
    "Method": "resolved",
    "Study": "resolved",
    "TrialConfig": "resolved",
    "DEFAULT_STUDY_METRICS": "schema",
    "Categorical": "schema",
    "DatasetConfig": "schema",
    "Distribution": "schema",
    "FloatRange": "schema",
    "IntRange": "schema",
    "MethodConfig": "schema",
    "StudyFile": "schema",
    "TuneConfig": "schema",
}

__all__ = [
    "DEFAULT_STUDY_METRICS",
    "RESERVED_PARAMS",
    "Categorical",
    "DataConfig",
    "DatasetConfig",
    "Distribution",
    "FloatRange",
    "IntRange",
    "Method",
    "MethodConfig",
    "Study",
    "StudyConfigError",
    "StudyFile",
    "TrialConfig",
    "TuneConfig",
    "apply_overrides",
    "check_data",
    "load_study",
    "read_yaml",
    "resolve",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bench.config' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"bench.config.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
