"""Markdown pieces every report section uses: numbers as the report prints them (the tests
parse them back), mean ± CI cells, pipe tables and a trial's label."""

from __future__ import annotations

import math

from bench.report.data import StudyRecord, TrialRecord


def fmt(x: float | None, digits: int = 4) -> str:
    """A number as the report prints it (the tests parse these back)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def fmt_int(x: float | None) -> str:
    """A count logged as a float (MLflow metrics are floats), or n/a."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else str(int(x))


def fmt_p(p: float | None) -> str:
    """A p-value with two significant digits, or n/a."""
    return "n/a" if p is None or math.isnan(p) else f"{p:.2g}"


def fmt_ci(mean: float | None, ci: float | None, bounds: tuple[float, float] = (0.0, 1.0)) -> str:
    """mean ± half-width; an interval reaching past the metric's range (`bounds`, [0, 1] for
    every ranked metric) is printed clipped, as [low, high]."""
    if mean is None:
        return "n/a"
    if ci is None or math.isnan(ci):
        return fmt(mean)
    low, high = mean - ci, mean + ci
    if low < bounds[0] or high > bounds[1]:
        return f"{fmt(mean)} [{fmt(max(low, bounds[0]))}, {fmt(min(high, bounds[1]))}]"
    return f"{fmt(mean)} ± {fmt(ci)}"


CHANCE_MARK = "≈ chance"  # a result whose 95% CI reaches the chance level (see `near_chance`)


def near_chance(
    mean: float | None, ci: float | None, chance: float | None, higher_is_better: bool = True
) -> bool:
    """True when a result is not clear of chance by its CI: the lower end of its 95% CI is not
    above the chance level (for a lower-is-better metric, the upper end not below it). False
    when the chance level or the CI is unknown: there is nothing to compare."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (mean, ci, chance)):
        return False
    return mean - ci <= chance if higher_is_better else mean + ci >= chance


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def label(t: TrialRecord, record: StudyRecord) -> str:
    sampled = {k: v for k, v in t.sampled.items() if k != "method"}
    parts = [t.method] if len(record.resolved.get("methods", {})) > 1 else []
    parts += [f"{k}={v}" for k, v in sampled.items()]
    return " ".join(parts) or f"trial {t.number}"


def sort_value(v: str) -> tuple:
    """Order parameter values numerically when they are numbers, else by their text."""
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)
