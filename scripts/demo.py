"""Smallest end-to-end path: every registered retriever at smoke scale on one split,
index + search + metrics with 95% CI and chance level, printed as a rich table."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from vitdsi.data import Relevance, load_dataset, make_split
from vitdsi.metrics import DEFAULT_METRICS, evaluate, indexing_accuracy, max_cutoff
from vitdsi.retrievers import create, registered
from vitdsi.scales import SCALES


def main() -> None:
    scale = SCALES["smoke"]
    dataset = load_dataset(scale.dataset, **scale.dataset_params)
    sets = make_split(dataset, scale.n_total, scale.split_ratio, seed=0).apply(dataset)
    relevance = Relevance.between(sets.test, sets.corpus)
    k = max_cutoff(DEFAULT_METRICS)
    table = Table(title=f"smoke scale: {scale.description}; {len(sets.corpus)} indexed, {len(sets.test)} test queries")
    table.add_column("retriever")
    for name in [*DEFAULT_METRICS, "IA@1"]:
        table.add_column(name, justify="right")
    table.add_column("index s", justify="right")
    chance = None
    for name in registered():
        retriever = create(name, **scale.params_for(name))
        t = time.perf_counter()
        retriever.index(sets.corpus, train_queries=sets.train)
        build_s = time.perf_counter() - t
        res = evaluate(retriever.search(sets.test.images, min(k, len(sets.corpus))).ids, relevance, DEFAULT_METRICS)
        res.update(indexing_accuracy(retriever.search(sets.corpus.images, 1).ids, len(sets.corpus), ks=(1,)))
        chance = res
        table.add_row(name, *[f"{res[m].mean:.3f} ± {res[m].ci95:.3f}" for m in [*DEFAULT_METRICS, "IA@1"]], f"{build_s:.1f}")
    table.add_row("[dim]chance[/dim]", *[f"[dim]{chance[m].chance:.3f}[/dim]" for m in [*DEFAULT_METRICS, "IA@1"]], "")
    Console().print(table)


if __name__ == "__main__":
    main()
