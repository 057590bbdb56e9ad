"""`random`: a seeded uniformly random ranking of the corpus, the empirical chance level.

Its metrics should match the analytic chance levels in `vitdsi.metrics` within their
confidence intervals; the tests check that.
"""

from __future__ import annotations

import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.ranking import Ranking
from vitdsi.retrievers.base import Retriever
from vitdsi.retrievers.registry import register


@register("random")
class RandomRetriever(Retriever):
    """Ranks k corpus images drawn uniformly without replacement; scores are 1/rank."""

    def __init__(self, *, seed: int = 0, device: str | None = None) -> None:
        super().__init__(seed=seed, device=device)

    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        pass  # nothing to learn: only the corpus size matters

    def _add(self, images: ImageSet, train_queries: ImageSet | None) -> None:
        pass  # the base class counts the added images

    def _search(self, images: torch.Tensor, k: int) -> Ranking:
        # One generator per call, seeded from the retriever seed: the same batch gives the
        # same answer; rows are drawn in chunks to bound memory at n x corpus_size floats.
        n = images.shape[0]
        gen = torch.Generator().manual_seed(self.seed)
        chunk = max(1, 2**24 // self.corpus_size)
        ids = torch.cat(
            [
                torch.topk(torch.rand(min(chunk, n - s), self.corpus_size, generator=gen), k, dim=1).indices
                for s in range(0, n, chunk)
            ]
        )
        scores = (1.0 / torch.arange(1, k + 1, dtype=torch.float32)).expand(n, k).contiguous()
        return Ranking(ids.long(), scores)
