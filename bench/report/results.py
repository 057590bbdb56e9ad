"""The tables of a report (bench.report): the set-up header, one row per trial (the chosen
ones marked, bench.report.choice), failed trials and, for studies with
`report: {paper_table: true}`, the paper's Table 1 beside ours (bench/paper.py); parameter
importances are in bench.report.importances. Tables whose rows are trials are built from the
study's run DataFrame (`StudyRecord.runs`)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pandas as pd

from bench.kinds import kind_of
from bench.paper import METHOD_NOTE, paper_row
from bench.report.choice import chosen_trials
from bench.report.compute import convergence_cell
from bench.report.data import StudyRecord
from bench.report.markdown import CHANCE_MARK, fmt, fmt_ci, label, md_table, near_chance
from bench.report.methods import overrides_text
from bench.report.views import views_text
from vitdsi.data.protocols import get_protocol
from vitdsi.metrics import parse_metric


def header_section(record: StudyRecord) -> str:
    tags, ds = record.tags, record.resolved.get("dataset", {})
    searched = {k[len("dataset.") :] for t in record.trials for k in t.sampled if k.startswith("dataset.")}

    def _ds(field: str) -> str:  # a dataset field the study searches varies per trial: say so
        return "per trial (see the results)" if field in searched else str(ds.get(field))

    versions = ", ".join(
        f"{k[len('version.') :]} {v}" for k, v in sorted(tags.items()) if k.startswith("version.")
    )
    device = tags.get("device", "?")
    if tags.get("device.name"):
        device += f" ({tags['device.name']})"
    rows = [
        ["report written", dt.datetime.now().strftime("%Y-%m-%d %H:%M")],
        [
            "study run",
            f"`{record.run_id}` (experiment {record.experiment_id}), Optuna study "
            f"`{tags.get('optuna.study_name', '?')}`",
        ],
        [
            "git",
            f"`{tags.get('git.sha', '?')[:12]}`"
            + (
                f" (dirty tree: {tags.get('git.changed', 'files not recorded')})"
                if tags.get("git.dirty") == "true"
                else ""
            ),
        ],
        ["device", device],
        ["packages", versions or "?"],
        ["scale", record.scale],
        ["dataset", _dataset_row(ds, kind_of(record.resolved), _ds)],
        ["protocol", "per trial (see the results)" if "protocol" in searched else protocol_description(ds)],
        [
            "objective",
            f"{record.objective} ({record.direction}), sampler {record.params.get('sampler')}, "
            f"repeats {record.params.get('repeats')} seed(s) per trial",
        ],
        ["trials", f"{len(record.trials)} finished"],
        ["training views", views_text(record)],
        ["overrides", overrides_text(record)],
    ]
    return md_table(["", ""], rows)


def _dataset_row(ds: dict, kind: tuple | None, field) -> str:
    """The Set-up's dataset line, as the study's kind describes its data if it does."""
    where = f"{ds.get('name')} at {ds.get('size')} px"
    described = kind[0].dataset_text(kind[1], where, field("n_total"), ds) if kind is not None else None
    if described is not None:
        return described
    return (
        f"{where}, n_total {field('n_total')}, split_ratio {field('split_ratio')}, "
        f"queries train/val/test {ds.get('query_fractions')}, split seed {ds.get('seed')}"
    )


def protocol_description(ds: dict) -> str:
    """The evaluation protocol in words (vitdsi.data.protocols), from a resolved `dataset` block."""
    protocol = get_protocol(ds.get("protocol") or "class")
    given = (ds.get("protocol_args") or {}).get(protocol.block or "", ds.get(protocol.block or "") or {})
    return protocol.describe(protocol.make_options(given))


HEADLINE_METRIC = {
    "instance": "R@1",
    "graded": "nDCG@10",
    "text": "R@1",
}  # per protocol; others: the objective


def across_protocols_section(record: StudyRecord) -> str:
    """One row per method, one column per protocol: the headline metric of that protocol (R@1
    for instance, the objective otherwise) of the method's trial under it, mean ± CI across
    seeds, the protocol's chance in the header; a trial is picked per method and protocol by
    the validation objective, as everywhere."""
    names = record.metric_names()
    protocols = record.protocols()
    columns, rows = [], {}
    for p in protocols:
        sub = record.for_protocol(p)
        metric = HEADLINE_METRIC.get(p, record.objective)
        metric = metric if metric in names else record.objective
        chance = sub.shared_chance(metric)
        columns.append(f"{p}: {metric}" + (f" (chance {fmt(chance)})" if chance is not None else ""))
        sign = 1 if record.direction == "maximize" else -1
        for t in sub.trials:
            v = t.choice_value(record.objective)
            row = rows.setdefault(t.method, {"learns from": t.supervision, "cells": {}, "pick": {}})
            if v is None or (p in row["pick"] and sign * v <= sign * row["pick"][p]):
                continue
            m = t.metrics.get(metric)
            row["pick"][p] = v
            row["cells"][p] = (
                "n/a"
                if m is None
                else fmt_ci(m.mean, m.ci95)
                + (
                    f" {CHANCE_MARK}"
                    if near_chance(m.mean, m.ci95, m.chance, _higher_is_better(metric))
                    else ""
                )
            )
    body = [
        [method, r["learns from"], *(r["cells"].get(p, "—") for p in protocols)] for method, r in rows.items()
    ]
    return (
        "The headline metric of each protocol per method (test, mean over seeds ± the 95% CI across seeds): "
        "R@1 under `instance`, where each query has one relevant image, the objective otherwise. Each "
        "protocol has its own relevance and chance, so compare within a column; the per-protocol sections "
        "below have every metric, paired tests and the label-matched baselines beside each DSI.\n\n"
        + md_table(["method", "learns from", *columns], body)
    )


def results_section(record: StudyRecord) -> str:
    names = record.metric_names()
    objective = record.objective
    seeds = int(pd.to_numeric(record.column("params.repeats", 1)).fillna(1).max()) if len(record.runs) else 1
    tables = {m: record.metric_table(m) for m in names}
    shared_chance = {m: record.shared_chance(m) for m in names}
    val = record.metric_table(objective, "val")
    has_val = bool(val["mean"].notna().any())
    chosen = chosen_trials(record)
    cols: dict[str, Any] = {
        "#": record.runs["number"].astype(str),
        "trial": [label(t, record) + (" **(chosen)**" if t.number in chosen else "") for t in record.trials],
        "learns from": record.column("tags.supervision", "not recorded").fillna("not recorded"),
    }
    ia = next((tables[m]["n"] for m in names if m.startswith("IA@")), None)
    indexed = (
        record.column("metrics.n_indexed")
        if ia is None
        else ia.where(ia > 0, record.column("metrics.n_indexed"))
    )
    test = next((tables[m]["n"] for m in names if not m.startswith("IA@")), None)
    cols["indexed"] = _counts(indexed)
    cols["test queries"] = _counts(test if test is not None else record.column("metrics.none"))
    if has_val:
        cols[f"{objective} validation (model choice)"] = _ci_cells(val["mean"], val["ci95"])
    for m in names:
        t = tables[m]
        cells = _ci_cells(t["mean"], t["ci95"])
        if shared_chance[m] is None or not _no_information(m, shared_chance[m]):
            cells = cells + _chance_marks(m, t)
        if shared_chance[m] is None:
            chance = t["chance"].where(t["mean"].notna())
            cells = cells + chance.map(lambda c: "" if pd.isna(c) else f" (chance {fmt(c)})")
        cols[_metric_header(m, shared_chance[m])] = cells
    if seeds > 1:
        cols[f"{objective} ± CI over queries"] = _ci_cells(
            tables[objective]["mean"], tables[objective]["ci95_queries"]
        )
    cols["training"] = [convergence_cell(t) for t in record.trials]
    cols["index s"] = record.column("metrics.index_seconds").map(lambda v: fmt(v, 1))
    cols["ms / query"] = record.column("metrics.query_ms").map(lambda v: fmt(v, 2))
    table = pd.DataFrame(cols, index=record.runs.index)
    note = (
        "Metric columns are test numbers: the mean over all test queries (IA@K: over all indexed images) ± "
        "the half-width of its 95% Student-t confidence interval; with several seeds (each with its own "
        "split and training seed), the mean over seeds ± the CI across seeds"
        + (
            f", and the last {objective} column gives the CI over the pooled queries of all seeds"
            if seeds > 1
            else ""
        )
        + ". Chance is the exact expectation under a uniformly random ranking of the same split; "
        f"*{CHANCE_MARK}* marks a result whose 95% CI reaches it (for higher-is-better metrics: mean − CI ≤ "
        "chance), which is not clear of chance. "
        + (
            f"Model choice (Optuna's objective, the chosen trial) reads only the {objective} of the "
            "validation queries; test queries are never used to choose. "
            if has_val
            else "These runs logged no validation metrics, so model choice read test numbers. "
        )
        + "*Training* says whether every seed's training converged (a validation plateau before the epoch "
        "cap and, for a DSI, IA@1 at its target) and names what failed otherwise. "
        + "*Learns from* says what reached training besides the corpus pixels: with class-identity relevance "
        "a method that learns from labels is rewarded for classifying, so compare it with a label-matched "
        "baseline (`classifier`, `dual-encoder`), not only with label-free ones."
    )
    warnings = _results_warnings(record, names, tables, shared_chance)
    return "\n\n".join([md_table(list(table.columns), table.values.tolist()), note, *warnings])


def _results_warnings(record: StudyRecord, names: list[str], tables: dict, shared_chance: dict) -> list[str]:
    """The warnings under the results table: few test queries, metrics at chance 1, IA@K after
    fine-tuning."""
    warnings = []
    few = sorted(
        {int(n) for m in names if not m.startswith("IA@") for n in tables[m]["n"].dropna() if n < 30}
    )
    if few:
        warnings.append(
            f"**Warning:** some splits have only {', '.join(map(str, few))} test queries (fewer than 30): "
            "their intervals are wide and a Student-t CI is only approximate at that size."
        )
    useless = [m for m in names if shared_chance[m] is not None and _no_information(m, shared_chance[m])]
    if useless:
        warnings.append(
            f"{', '.join(useless)}: chance is {fmt(1.0)}, so every ranking scores it (e.g. R@100 with at "
            "most 100 indexed images): the column carries no information."
        )
    if (record.column("params.mode") == "fine-tuned").any() and any(m.startswith("IA@") for m in names):
        warnings.append(
            "IA@K of fine-tuned DSIs: fine-tuning trains each train query to the id of a random relevant "
            "(same-class) image, with no indexing examples left in the batches, so the model stops mapping "
            "an indexed image to its own id and IA@1 falls towards the share of its class (catastrophic "
            "forgetting of the index). The multitask mode keeps indexing examples in every batch to avoid it."
        )
    return warnings


def _ci_cells(mean: pd.Series, ci: pd.Series) -> pd.Series:
    """mean ± CI per trial ("n/a" where the trial did not log the metric)."""
    return pd.Series([fmt_ci(m, c) if pd.notna(m) else "n/a" for m, c in zip(mean, ci)], index=mean.index)


def _chance_marks(metric: str, table: pd.DataFrame) -> pd.Series:
    """ " ≈ chance" after each cell whose result is not clear of chance by its CI (`near_chance`)."""
    higher = _higher_is_better(metric)
    return pd.Series(
        [
            f" {CHANCE_MARK}" if near_chance(m, c, ch, higher) else ""
            for m, c, ch in zip(table["mean"], table["ci95"], table["chance"])
        ],
        index=table.index,
    )


def _counts(n: pd.Series) -> pd.Series:
    """Whole numbers per trial ("?" where unknown or zero)."""
    return n.map(lambda v: str(int(v)) if pd.notna(v) and v else "?")


def _higher_is_better(metric: str) -> bool:

    return parse_metric(metric).family.higher_is_better


def _no_information(metric: str, chance: float) -> bool:
    """True when a random ranking already scores the metric's best value (chance 1 for a
    higher-is-better metric, 0 for FPR)."""

    best = 1.0 if parse_metric(metric).family.higher_is_better else 0.0
    return abs(chance - best) < 1e-9


def _metric_header(metric: str, chance: float | None) -> str:

    parts = [] if chance is None else [f"chance {fmt(chance)}"]
    if not parse_metric(metric).family.higher_is_better:
        parts.append("lower is better")
    if chance is not None and _no_information(metric, chance):
        parts.append("no information")
    return f"{metric} ({'; '.join(parts)})" if parts else metric


def failed_section(record: StudyRecord) -> str | None:
    """Trial runs that failed or were interrupted, and whether their point was completed later."""
    if not record.failed:
        return None
    done = {json.dumps(t.sampled, sort_keys=True, default=str): t.number for t in record.trials}
    rows = []
    for f in record.failed:
        later = done.get(json.dumps(f.sampled, sort_keys=True, default=str))
        label = ", ".join(f"{k}={v}" for k, v in f.sampled.items()) or f"trial {f.number}"
        rows.append(
            [
                str(f.number),
                label,
                f.status,
                f.error[:200] or "—",
                f"yes, by #{later}" if later is not None else "**no**",
            ]
        )
    return (
        "Trial runs that did not finish (FAILED: an error; KILLED: Ctrl-C or SIGTERM). `bench run` retries a "
        "failed grid point before any new one.\n\n"
        + md_table(["#", "trial", "status", "error", "point completed later"], rows)
    )


def table1_section(record: StudyRecord) -> str | None:
    """The paper's Table 1 beside ours, per DB size and method, with a chance row per size."""
    if not record.paper_table:
        return None
    # (our metric, the paper's column beside it): the paper's "MAP@10" is Precision@10 (bench.paper)
    cols = [
        ("IA@1", "IA@1"),
        ("IA@5", "IA@5"),
        ("P@10", 'paper "MAP@10" (= P@10)'),
        ("MAP@10", None),
        ("R@100", "R@100"),
    ]
    header = ["DB size", "method", "learns from"]
    for ours, theirs in cols:
        header += [f"{ours} ours"] + ([f"{theirs} paper" if theirs == ours else theirs] if theirs else [])
    runs = record.runs.assign(
        size=pd.to_numeric(record.column("params.dataset.n_total", 0)).fillna(0).astype(int),
        method=record.column("tags.method", "").fillna(""),
    )
    tables = {ours: record.metric_table(ours) for ours, _ in cols}
    cells = {ours: _ci_cells(t["mean"], t["ci95"]) for ours, t in tables.items()}

    def _opt(v: Any) -> Any:
        return None if pd.isna(v) else v

    rows = []
    for number, run in runs.sort_values(["size", "method"], kind="stable").iterrows():
        paper = (
            paper_row(
                _opt(run.get("tags.retriever")),
                _opt(run.get("params.mode")),
                _opt(run.get("params.id_scheme")),
                run["size"],
            )
            or {}
        )
        row = [str(run["size"]), run["method"], _opt(run.get("tags.supervision")) or "not recorded"]
        for ours, theirs in cols:
            row.append(cells[ours][number])
            if theirs:
                row.append(fmt(paper.get(ours), 3) if paper.get(ours) is not None else "—")
        rows.append(row)
    for number, run in runs.drop_duplicates("size").sort_values("size").iterrows():  # each size's first trial
        row = [str(run["size"]), "*chance*", ""]
        for ours, theirs in cols:
            chance = tables[ours].loc[number]
            row.append(
                fmt(chance["chance"]) if pd.notna(chance["mean"]) and pd.notna(chance["chance"]) else "n/a"
            )
            if theirs:
                row.append("")
        rows.append(row)
    return md_table(header, rows) + "\n\n" + METHOD_NOTE
