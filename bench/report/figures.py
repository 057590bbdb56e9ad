"""The figures of a report: training curves of the chosen trial of each method (from the
per-epoch MLflow metrics), Precision@K for K = 1..100 with chance, and a query -> top-5
image grid with class names, or with the caption above each row for caption queries (from
the stored test rankings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import plots
from bench.report.choice import best_per_method
from bench.report.data import StudyRecord, metric_history
from bench.report.markdown import label
from bench.report.rankings import test_ranking
from vitdsi.metrics import chance_levels, per_query

# Panels of the training-curve figure, in order: one loss per phase (in a pure phase the
# phase loss and its index/retrieval part are the same series), memorisation (greedy IA@1
# on the corpus, exact ids in the training pass) and both halves of a multitask loss.
CURVE_KEYS = {
    "index/loss": "indexing loss",
    "index/ia1": "indexing: IA@1 (greedy, corpus)",
    "index/train_exact": "indexing: exact ids in training",
    "retrieval/loss": "fine-tuning loss",
    "multitask/index_loss": "multitask: indexing loss",
    "multitask/retrieval_loss": "multitask: retrieval loss",
    "multitask/ia1": "multitask: IA@1 (greedy, corpus)",
    "classify/loss": "classifier: cross-entropy",
    "contrastive/loss": "dual-encoder: InfoNCE",
}
MAX_TRAINED_CURVES = 6  # methods drawn in the training-curve figure
GRID_QUERIES, GRID_K = 6, 5


def curves_section(record: StudyRecord, out: Path, rel: str) -> str | None:
    histories = {}
    for t in best_per_method(record):
        h = metric_history(t.run_id, record.tracking_uri)
        # with several seeds the curves are logged per seed ("seed0/index/loss"): draw the first seed's
        h = {k[len("seed0/") :]: v for k, v in h.items() if k.startswith("seed0/")} or h
        keep = [k for k in CURVE_KEYS if len(h.get(k, ())) > 1]
        if keep:
            histories[label(t, record)] = {CURVE_KEYS[k]: h[k] for k in keep}
        if len(histories) == MAX_TRAINED_CURVES:
            break
    if not histories:
        return None
    fig = plots.training_curves(
        histories, out / "training_curves.png", f"{record.name}: training curves of the chosen trials"
    )
    return (
        "Per-epoch training logs of the chosen trial of each trained method (the first seed when there are "
        "several; x: epochs over all phases). Training is seeded and deterministic, so trials that share "
        "their indexing settings draw the same indexing curve and hide each other.\n\n![training "
        f"curves]({rel}/{fig.name})"
    )


def _class_names(images, positions: np.ndarray) -> list[str]:
    """Class name of each image position ('' for -1); several categories joined by '+'."""
    names = images.class_names
    out = []
    for p in np.asarray(positions).tolist():
        if p < 0:
            out.append("")
        elif images.labels.ndim == 1:
            cls = int(images.labels[p])
            out.append(names[cls] if 0 <= cls < len(names) else str(cls))
        else:
            out.append("+".join(names[c] for c in images.labels[p].nonzero().flatten().tolist()[:3]))
    return out


def _caption_grid(ids: np.ndarray, sets, relevance, out: Path, rel: str, t, name: str) -> str:
    """The query grid of caption queries (the text protocol): one test caption of each of the first
    images, printed above its row, the caption's own image, then its top results."""
    queries = sets.text["test"]
    first = np.unique(queries.image, return_index=True)[1][:GRID_QUERIES]  # one caption per image
    k = min(GRID_K, ids.shape[1])
    top = ids[first, :k]
    imgs = sets.corpus.images.numpy()
    results = np.where((top >= 0)[..., None, None, None], imgs[np.maximum(top, 0)], 0).astype(np.uint8)
    own = queries.image[first]
    fig = plots.caption_grid(
        queries.texts[first].tolist(),
        imgs[own],
        results,
        relevance.gather(ids)[first, :k],
        top == own[:, None],
        out / "query_grid.png",
        f"chosen trial #{t.number} {name}: test captions -> top {k}",
        result_labels=[_class_names(sets.corpus, row) for row in top],
    )
    return (
        f"Caption → top-{k} for the chosen trial (#{t.number}, {name}): each test caption (phrased as no "
        "training caption is) above its row, then the image it describes (blue) and the results with their "
        "categories; green frames share a category with the caption's own image, '(own)' marks the image "
        f"itself:\n\n![query grid]({rel}/{fig.name})"
    )


def precision_and_grid_section(record: StudyRecord, out: Path, rel: str, cache: dict) -> str | None:

    chosen = best_per_method(record)
    if not chosen:
        return None
    curves, chance, parts, grid_done = {}, {}, [], False
    for t in chosen:
        loaded = test_ranking(t, record, out, cache)
        if loaded is None:
            continue
        ids, sets, relevance = loaded
        kmax = min(100, ids.shape[1])
        names = [f"P@{k}" for k in range(1, kmax + 1)]
        values = per_query(ids, relevance, names)
        name = label(t, record)
        curves[name] = np.array([np.nanmean(values[n]) for n in names])
        ch = chance_levels(relevance, names, ids.shape[1])
        chance[name] = np.array([ch[n] for n in names])
        if not grid_done and sets.text is not None:
            parts.append(_caption_grid(ids, sets, relevance, out, rel, t, name))
            grid_done = True
        if not grid_done:
            n_q = min(GRID_QUERIES, len(sets.test))
            k = min(GRID_K, ids.shape[1])
            top = ids[:n_q, :k]
            imgs = sets.corpus.images.numpy()
            results = np.where((top >= 0)[..., None, None, None], imgs[np.maximum(top, 0)], 0).astype(
                np.uint8
            )
            fig = plots.retrieval_grid(
                sets.test.images[:n_q].numpy(),
                results,
                relevance.gather(ids)[:n_q, :k],
                out / "query_grid.png",
                f"chosen trial #{t.number} {name}: test queries -> top {k}",
                query_labels=_class_names(sets.test, np.arange(n_q)),
                result_labels=[_class_names(sets.corpus, row) for row in top],
            )
            parts.append(
                f"Query → top-{k} for the chosen trial (#{t.number}, {name}), class names under each image; "
                "green frames are relevant results:\n\n"
                f"![query grid]({rel}/{fig.name})"
            )
            grid_done = True
    if curves:
        fig = plots.precision_curve(curves, chance, out / "precision_at_k.png", f"{record.name}: Precision@K")
        parts.insert(
            0,
            f"Precision@K for K = 1..100, best trial per method, test queries (dotted: chance):\n\n"
            f"![precision at K]({rel}/{fig.name})",
        )
    return "\n\n".join(parts) if parts else None
