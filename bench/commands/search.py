"""`bench search --run RUN_ID IMAGE... | --text CAPTION`: query a trained index with your own images
or captions.

RUN_ID is a whole MLflow run id or a prefix of exactly one (the 8 characters `bench run` prints).

Loads the index a trial stored in MLflow, prepares each image as the datasets are prepared
(RGB, centre square crop, resize to the index's size), or takes the captions as written for a
text retriever (`dsi-text`, `text-dual-encoder`, `text-embedding-knn`), answers top-k and
writes a grid PNG (query, or the caption above the row, then its results with class and
score), like the simple CBIR seeds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer
from rich.table import Table

from bench.commands.common import friendly_errors
from vitdsi.log import console


def command(
    images: list[Path] = typer.Argument(
        None, help="Query image files (any size; centre-cropped and resized)."
    ),
    texts: list[str] = typer.Option(
        None, "--text", help="A caption to query a text retriever with (repeat for several)."
    ),
    run_id: str = typer.Option(
        ...,
        "--run",
        help="MLflow run id of a finished trial, or its first characters (the 8 `bench run` prints), e.g. "
        "the study's best.run_id tag.",
    ),
    k: int = typer.Option(5, "--k", min=1, help="Results per query."),
    out: Path = typer.Option(Path("grid.png"), "--out", help="Where to write the result grid PNG."),
    tracking_uri: str = typer.Option(
        None, "--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."
    ),
    device: str = typer.Option(None, "--device", help="torch device (default: CUDA when present)."),
    overrides: list[str] = typer.Option(
        None,
        "--set",
        help="Where the run's data are now, when they moved: --set dataset.root=/data/imagenet.",
    ),
) -> None:
    """Answer top-k queries for image files or captions with a trial's trained index; write a grid PNG."""
    import torch

    from bench.runs import open_trial_run
    from vitdsi.data.prep import load_image_file
    from vitdsi.errors import VitDSIError

    with friendly_errors(), tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        if bool(images) == bool(texts):
            raise VitDSIError("bench search takes query image files or --text captions (one kind, not both)")
        trial = open_trial_run(run_id, tracking_uri, with_index=True, folder=tmp)
        run_id = trial.run_id  # the whole id when a prefix was given
        retriever = trial.load_index(device=device)
        kind = "text" if texts else "image"
        if retriever.query_kind != kind:
            other = "--text CAPTION" if retriever.query_kind == "text" else "image files"
            raise VitDSIError(
                f"run {run_id[:8]} holds a {trial.config.retriever} index, which answers "
                f"{retriever.query_kind} queries; give it {other}"
            )
        corpus = trial.corpus(root=_root_override(overrides or []))
        if texts:
            queries, names = list(texts), list(texts)
        else:
            queries = torch.stack([load_image_file(p, retriever.image_size) for p in images])
            names = [p.name for p in images]
            if _grayscale(corpus.images) and not _grayscale(queries):
                # a grey corpus (digits, Fashion-MNIST): compare like with like
                queries = (
                    queries.float()
                    .mean(1, keepdim=True)
                    .round()
                    .to(torch.uint8)
                    .expand(-1, 3, -1, -1)
                    .contiguous()
                )
                console.print("the index holds grey images: the queries were converted to grey")
        k = min(k, retriever.corpus_size)
        ranking = retriever.search(queries, k)
    titles = _print_table(trial, run_id, corpus, ranking, names, k)
    title = f"{trial.config.method} on {trial.config.dataset.name} (run {run_id[:8]})"
    query_images = None if texts else queries
    written = write_grid(query_images, names, corpus.images, ranking.ids.numpy(), titles, out, title=title)
    console.print(f"wrote {written}")


def _print_table(trial, run_id: str, corpus, ranking, names: list[str], k: int) -> list[list[str]]:
    """Print the top-k table; the grid's caption of each result, per query."""
    ids, scores = ranking.ids.numpy(), ranking.scores.numpy()
    labels = corpus.primary_labels()
    class_names = corpus.class_names

    def cls(pos: int) -> str:
        lab = int(labels[pos])
        return class_names[lab] if 0 <= lab < len(class_names) else "?"

    table = Table(
        title=f"top-{k} from run {run_id[:8]} ({trial.config.retriever}, {trial.config.dataset.name}, "
        f"{len(corpus)} indexed)"
    )
    for col in ("query", "rank", "corpus image", "class", "score"):
        table.add_column(col)
    titles = []
    for q, name in enumerate(names):
        row = []
        for j in range(k):
            pos = int(ids[q, j])
            if pos < 0:
                row.append("")
                continue
            table.add_row(
                name if j == 0 else "",
                str(j + 1),
                str(corpus.source_ids[pos]),
                cls(pos),
                f"{scores[q, j]:.3f}",
            )
            row.append(f"{cls(pos)} {scores[q, j]:.2f}")
        titles.append(row)
    console.print(table)
    return titles


def _root_override(overrides: list[str]) -> str | None:
    """The `--set dataset.root=PATH` value (the one field a search can change: where the data are)."""
    from vitdsi.errors import VitDSIError

    root = None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key.strip() != "dataset.root" or not value.strip():
            raise VitDSIError(
                f"--set {item!r}: bench search takes only --set dataset.root=PATH (where the run's data are "
                "now)"
            )
        root = value.strip()
    return root


def _grayscale(images) -> bool:
    return bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all())


def write_grid(queries, query_titles, corpus_images, ids, titles, out: Path, title: str) -> Path:
    """One row per query: the query image, then its top-k corpus images titled with class and
    score; for captions (`queries` None) the caption is printed above its row of results."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_q, k = ids.shape
    lead = 0 if queries is None else 1  # a column for the query image
    fig, axes = plt.subplots(
        n_q,
        k + lead,
        figsize=(1.6 * (k + lead), (2.1 if queries is None else 1.8) * n_q + 0.4),
        squeeze=False,
    )
    for q in range(n_q):
        row = ([(queries[q], query_titles[q])] if queries is not None else []) + [
            (corpus_images[int(ids[q, j])] if ids[q, j] >= 0 else None, titles[q][j]) for j in range(k)
        ]
        for ax, (image, text) in zip(axes[q], row, strict=True):
            ax.set_xticks([])
            ax.set_yticks([])
            if image is None:
                ax.axis("off")
                continue
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xlabel(text, fontsize=7) if queries is None else ax.set_title(text, fontsize=7)
        if queries is None:
            caption = textwrap.shorten(f"\u201c{query_titles[q]}\u201d", width=14 * k)
            axes[q][0].set_title(caption, loc="left", fontsize=8, fontstyle="italic")
        else:
            for spine in axes[q][0].spines.values():
                spine.set_edgecolor("#1f77b4")
                spine.set_linewidth(2.5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if not out.suffix:  # matplotlib would add .png itself: name the file it really writes
        out = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
