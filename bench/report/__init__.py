"""`bench report STUDY`: a markdown report with PNG figures from what a study logged.

Reads the study's parent run and trial runs from MLflow (`bench.report.data`) and their
artifacts (splits, rankings); it retrains nothing. Plain markdown with relative image
links, so it renders anywhere without network; docs/design.md ("Reports") lists the sections.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from pathlib import Path

from bench.kinds import kind_of
from bench.report.choice import chosen_section
from bench.report.compute import compute_section
from bench.report.data import load_study_record
from bench.report.figures import curves_section, precision_and_grid_section
from bench.report.importances import importance_section
from bench.report.methods import methods_section
from bench.report.paired import paired_family, paired_section
from bench.report.rankings import seen_in_training_section
from bench.report.results import (
    across_protocols_section,
    failed_section,
    header_section,
    protocol_description,
    results_section,
    table1_section,
)
from bench.report.tuning import tuning_section

__all__ = ["write_report"]


def write_report(
    study: str,
    *,
    tracking_uri: str | None = None,
    scale: str | None = None,
    out_dir: str | Path = "reports",
    compare_with: list[str] | None = None,
    study_name: str | None = None,
) -> Path:
    """Write out_dir/STUDY.md and out_dir/STUDY/*.png; returns the markdown path. `compare_with`
    replaces the study file's `report.compare_with` (methods every trial is also compared with);
    `study_name` picks the run of that Optuna study (`bench run --study-name`)."""
    record = load_study_record(study, tracking_uri, scale, study_name=study_name)
    if compare_with:
        record = record.with_compare_with(compare_with)
    out_dir = Path(out_dir)
    fig_dir = out_dir / study
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.rglob("*.png"):
        old.unlink()
    rel = study
    desc = (record.resolved.get("description") or "").strip()
    sections = [
        f"# Study `{study}`",
        desc,
        "## Set-up",
        header_section(record) + "\n\n" + methods_section(record),
    ]
    scored = any(t.metrics for t in record.trials)
    rankings: dict = {}  # trial rankings and splits, read once for the sections that re-score them
    protocols = record.protocols() if scored else []
    if len(protocols) > 1:  # relevance and chance differ by protocol: one block of scored sections each
        parts = [(p, record.for_protocol(p), fig_dir / p) for p in protocols]
        # Holm over every protocol's comparisons
        family = functools.cache(lambda: paired_family(parts, rankings))
        results = [("## Across protocols", lambda: across_protocols_section(record))]
        for p, sub, sub_dir in parts:
            sub_dir.mkdir(exist_ok=True)
            results += [
                (f"## Protocol `{p}`", lambda d=sub.resolved["dataset"]: protocol_description(d)),
                *_scored_sections(sub, sub_dir, f"{rel}/{p}", rankings, "###", family, p),
            ]
        later = []
    else:
        protocol = record.protocol_of(record.trials[0]) if record.trials else "class"
        family = functools.cache(lambda: paired_family([(protocol, record, fig_dir)], rankings))
        scored_sections = (
            _scored_sections(record, fig_dir, rel, rankings, "##", family, protocol) if scored else []
        )
        results, later = scored_sections[:1], scored_sections[1:]
    kind = kind_of(record.resolved)
    kind_section = (
        [(f"## {kind[0].report_heading}", lambda: kind[0].report_section(record, fig_dir, rel))]
        if kind
        else []
    )
    first, after_importances = (kind_section, []) if kind and kind[0].report_first else ([], kind_section)
    for heading, section in (
        *first,
        ("## Tuning", lambda: tuning_section(record)),
        *results,
        ("## Failed trials", lambda: failed_section(record)),
        ("## Table 1 beside the paper", lambda: table1_section(record)),
        ("## Parameter importances", lambda: importance_section(record)),
        *after_importances,
        ("## Training curves", lambda: curves_section(record, fig_dir, rel)),
        *later,
    ):
        body = section()  # in this order: the ranking sections share `rankings`
        if body:
            sections += [heading, body]
    # artifacts, not part of the report
    for downloaded in [fig_dir / ".artifacts", *fig_dir.glob("*/.artifacts")]:
        shutil.rmtree(downloaded, ignore_errors=True)
    md = "\n\n".join(s for s in sections if s) + "\n"
    path = out_dir / f"{study}.md"
    path.write_text(md)
    return path


def _scored_sections(
    record, fig_dir: Path, rel: str, rankings: dict, level: str, family: Callable, protocol: str
) -> list[tuple[str, Callable]]:
    """The sections that read trial scores and rankings, at heading `level`."""
    return [
        (f"{level} Results", lambda: results_section(record) + "\n\n" + chosen_section(record)),
        (f"{level} Paired comparisons", lambda: paired_section(family(), record, protocol)),
        (f"{level} Training compute", lambda: compute_section(record, fig_dir, rel)),
        (f"{level} Seen and unseen in training", lambda: seen_in_training_section(record, fig_dir, rankings)),
        (
            f"{level} Precision@K and example queries",
            lambda: precision_and_grid_section(record, fig_dir, rel, rankings),
        ),
    ]
