"""Relevant corpus images for train queries, drawn afresh each epoch (retrieval fine-tuning)."""

from __future__ import annotations

import torch


class RelevantSampler:
    """Draws, for each train query, one corpus image relevant to it, uniformly at random.

    Single-label data: per-class lists of corpus positions (no [Q, N] matrix, so large
    corpora are fine). Multi-hot data: a dense relevance matrix (shared category).
    """

    def __init__(self, query_labels: torch.Tensor, corpus_labels: torch.Tensor) -> None:
        query_labels, corpus_labels = query_labels.cpu(), corpus_labels.cpu()
        self.multilabel = query_labels.ndim == 2
        if self.multilabel:
            self.relevance = (query_labels.float() @ corpus_labels.float().T) > 0  # [Q, N]
            self.has_relevant = self.relevance.any(1)
            self.relevance = self.relevance[self.has_relevant].float()
        else:
            n_classes = int(max(query_labels.max(), corpus_labels.max())) + 1
            self.order = torch.argsort(corpus_labels, stable=True)  # corpus positions grouped by class
            counts = torch.bincount(corpus_labels[corpus_labels >= 0], minlength=n_classes)
            # unlabelled sort first
            starts = torch.cumsum(counts, 0) - counts + int((corpus_labels < 0).sum())
            self.has_relevant = (query_labels >= 0) & (counts[query_labels.clamp(min=0)] > 0)
            kept = query_labels[self.has_relevant]
            self.start, self.count = starts[kept], counts[kept]

    def __len__(self) -> int:
        return int(self.has_relevant.sum())

    def sample(self, queries: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Corpus positions, one per query index in `queries` (indices among the kept queries)."""
        if self.multilabel:
            return torch.multinomial(self.relevance[queries], 1, generator=gen)[:, 0]
        u = torch.rand(len(queries), generator=gen, dtype=torch.float64)
        offset = (u * self.count[queries]).long().clamp(max=self.count[queries] - 1)
        return self.order[self.start[queries] + offset]
