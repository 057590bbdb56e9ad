"""`pixels-knn`: exact cosine k-nearest neighbours on raw, mean-centred pixels.

The simplest index-then-retrieve baseline (an O(N) scan per query), in the spirit of the
simple CBIR seeds: a feature vector per image and cosine similarity between them.
"""

from __future__ import annotations

import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.ranking import Ranking
from vitdsi.retrievers.base import Retriever, images_to_float
from vitdsi.retrievers.registry import register


@register("pixels-knn")
class PixelsKNN(Retriever):
    """Cosine similarity between flattened pixel vectors, exact, batched on the device."""

    def __init__(
        self, *, center: bool = True, batch_size: int = 1024, seed: int = 0, device: str | None = None
    ) -> None:
        super().__init__(seed=seed, device=device)
        self.center = bool(center)  # subtract the corpus mean image before normalising
        self.batch_size = int(batch_size)  # queries scored per matrix product
        self._features: torch.Tensor | None = None  # float32 [N, D], L2-normalised
        self._mean: torch.Tensor | None = None  # float32 [D]

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        x = images_to_float(images, self.device).flatten(1)
        if self.center:
            x = x - self._mean
        return torch.nn.functional.normalize(x, dim=1)

    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        flat = images_to_float(corpus.images, self.device).flatten(1)
        self._mean = flat.mean(0) if self.center else torch.zeros(flat.shape[1], device=self.device)
        self._features = self._embed(corpus.images)

    def _add(self, images: ImageSet, train_queries: ImageSet | None) -> None:
        # centred on the mean of the first corpus, so the vectors already indexed stay as they are
        self._features = torch.cat([self._features, self._embed(images.images)])

    def _search(self, images: torch.Tensor, k: int) -> Ranking:
        parts = [
            Ranking.from_scores(self._embed(images[s : s + self.batch_size]) @ self._features.T, k)
            for s in range(0, images.shape[0], self.batch_size)
        ]
        return Ranking(torch.cat([p.ids for p in parts]), torch.cat([p.scores for p in parts]))

    def _state(self) -> dict:
        return {"features": self._features.cpu(), "mean": self._mean.cpu()}

    def _load_state(self, state: dict) -> None:
        self._features = state["features"].to(self.device)
        self._mean = state["mean"].to(self.device)
