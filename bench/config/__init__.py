"""Study files: one YAML is one Optuna study, validated (`schema`), loaded with `--set` and
its per-scale block (`loading`), resolved at a scale preset (`resolution`, `checks`) into the
frozen `Study` and its `TrialConfig`s (`resolved`). docs/design.md, "Optuna and MLflow"."""

from bench.config.checks import check_data
from bench.config.errors import StudyConfigError
from bench.config.loading import apply_overrides, load_study, read_yaml, resolve
from bench.config.resolved import DataConfig, Method, Study, TrialConfig
from bench.config.schema import (
    DEFAULT_STUDY_METRICS,
    RESERVED_PARAMS,
    Categorical,
    ContinualConfig,
    DatasetConfig,
    Distribution,
    FloatRange,
    IntRange,
    LatencyConfig,
    MethodConfig,
    StudyFile,
    TuneConfig,
)

__all__ = [
    "DEFAULT_STUDY_METRICS", "RESERVED_PARAMS", "Categorical", "ContinualConfig", "DataConfig", "DatasetConfig",
    "Distribution", "FloatRange", "IntRange", "LatencyConfig", "Method", "MethodConfig", "Study", "StudyConfigError",
    "StudyFile", "TrialConfig", "TuneConfig", "apply_overrides", "check_data", "load_study", "read_yaml", "resolve",
]
