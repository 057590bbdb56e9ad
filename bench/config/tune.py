"""The `tune:` block of a study: its checks against the file's methods and their retrievers
(`check_tune`), its budget at a scale (`resolve_tune`), the one-method study each method is tuned
with (`tuning_study`) and the study whose methods carry the chosen recipes (`with_recipes`).
Running the tuning is bench.study.tuning's job."""

from __future__ import annotations

from typing import Any

from bench.config.errors import StudyConfigError, suggest
from bench.config.names import RESERVED_PARAMS, check_name, route
from bench.config.resolved import Method, Study, digest
from bench.config.schema import Categorical, FloatRange, StudyFile, TuneConfig
from vitdsi.limits import check_param
from vitdsi.retrievers.params import retriever_params

OPTUNA_STARTUP_CAP = 10  # Optuna's own default number of random trials before TPE models


def compared_methods(sf: StudyFile, methods: dict[str, Method]) -> list[str]:
    """The methods a study's trials run: the choices of `space.method`, else its one method."""
    dist = sf.space.get("method")
    return [str(c) for c in dist.choices] if isinstance(dist, Categorical) else list(methods)[:1]


def check_tune(sf: StudyFile, methods: dict[str, Method], known: dict[str, type], source: str) -> None:
    """Every tuned method is one of the file's methods and is compared by the study, and every
    knob is a build parameter of that method's retriever, not searched in `space`, with values
    the retriever accepts."""
    tune = sf.tune
    if tune is None:
        return
    compared = compared_methods(sf, methods)
    problems: list[str] = []
    for mname, knobs in tune.methods.items():
        if mname not in methods:
            raise StudyConfigError(
                f"{source}: field `tune.methods.{mname}`: unknown method '{mname}'"
                f"{suggest(mname, methods)}; methods in this file: {', '.join(methods)}"
            )
        if mname not in compared:
            raise StudyConfigError(
                f"{source}: field `tune.methods.{mname}`: method '{mname}' is tuned but the study "
                f"never runs it; add it to `space.method` ({', '.join(compared)})"
            )
        if not knobs:
            raise StudyConfigError(
                f"{source}: field `tune.methods.{mname}`: no knobs; name the build parameters "
                "to tune with their ranges, or leave the method out"
            )
        cls = known[methods[mname].retriever]
        for key, dist in knobs.items():
            where = f"tune.methods.{mname}.{key}"
            if route(key)[0] != "param" or key == "method":
                raise StudyConfigError(
                    f"{source}: field `{where}`: tuning sets build parameters only, "
                    "not dataset fields, query arguments or the method"
                )
            if key in RESERVED_PARAMS:
                raise StudyConfigError(f"{source}: field `{where}`: '{key}' is set by the harness")
            check_name(cls, "param", key, where, source, method=mname)
            if key in sf.space:
                raise StudyConfigError(
                    f"{source}: field `{where}`: '{key}' is also searched in `space`; a "
                    "parameter is either tuned per method or searched, not both"
                )
            problems += _value_problems(cls, methods[mname].params, key, dist, where)
    if problems:
        raise StudyConfigError(f"{source}: " + "; ".join(problems))


def _value_problems(cls, params: dict[str, Any], key: str, dist, where: str) -> list[str]:
    """Why the ends of a knob's range (or its choices) would not build the method's retriever."""

    info = {p.name: p for p in retriever_params(cls)}[key]
    if isinstance(info.default, int) and not isinstance(info.default, bool) and isinstance(dist, FloatRange):
        return [
            f"field `{where}`: parameter '{key}' of retriever '{cls.name}' takes int values "
            f"(default {info.default!r}); use `type: int`"
        ]
    values = dist.choices if isinstance(dist, Categorical) else [dist.low, dist.high]
    out = []
    for value in values:
        try:
            check_param(cls.name, key, value)
            cls(**{**params, key: value}, device="cpu")
        except Exception as e:  # the retriever's own validation, whatever its type
            out.append(f"field `{where}`: retriever '{cls.name}' rejects {key}={value!r}: {e}")
            break
    return out


def resolve_tune(
    sf: StudyFile, methods: dict[str, Method], known: dict[str, type], scale_cap: int | None, source: str
) -> TuneConfig | None:
    """The file's block, checked (`check_tune`), at a scale: a preset that caps tuning
    (`ScalePreset.tune_trials`, smoke) lowers `trials_per_method`; `n_startup_trials` unset becomes
    half the budget (at least 1, at most Optuna's default 10), so a small budget is not spent on
    random draws alone."""
    check_tune(sf, methods, known, source)
    tune = sf.tune
    if tune is None:
        return None
    budget = min(tune.trials_per_method, scale_cap) if scale_cap else tune.trials_per_method
    startup = tune.n_startup_trials
    if startup is None:
        startup = min(OPTUNA_STARTUP_CAP, max(1, budget // 2))
    return tune.model_copy(update={"trials_per_method": budget, "n_startup_trials": startup})


def tuning_name(study_name: str, method: str) -> str:
    """The Optuna study of one method's tuning, in the storage of the study itself."""
    return f"{study_name}-tune-{method}"


def tuning_study(study: Study, method: str) -> Study:
    """The study one method is tuned with: that method alone, its knobs as the search space,
    one seed, the tune block's sampler and budget, and no index artifacts."""
    tune = study.tune
    return study.replace(
        methods={method: study.methods[method]},
        space=tune.methods[method],
        sampler=tune.sampler,
        sampler_seed=tune.seed,
        n_startup_trials=tune.n_startup_trials,
        n_trials=tune.trials_per_method,
        repeats=1,
        log_index=False,
        tune=None,
    )


def tuning_fingerprint(study: Study, method: str) -> str:
    """What makes one method's tuning trials comparable: the study's fingerprint (its tune block
    included) and the method."""
    return digest({"study": study.fingerprint(), "method": method})


def with_recipes(study: Study, recipes: dict[str, dict[str, Any]]) -> Study:
    """The study whose methods carry their chosen recipes over their own parameters."""
    methods = {
        name: m.replace(params={**m.params, **recipes.get(name, {})}) for name, m in study.methods.items()
    }
    return study.replace(methods=methods)
