"""The top-k answer of a batch of queries (`Ranking`) and deterministic top-k with ties to the
lower position, shared by the retrievers and the FAISS indexes under them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranking:
    """Top-k answer for a batch of queries."""

    ids: torch.Tensor  # int64 [n_queries, k]: corpus positions, -1 where fewer than k results
    scores: torch.Tensor  # float32 [n_queries, k]: non-increasing per row, -inf where ids == -1

    def __post_init__(self) -> None:
        if self.ids.dtype != torch.int64 or self.scores.dtype != torch.float32:
            raise TypeError(
                f"Ranking needs int64 ids and float32 scores, got {self.ids.dtype}, {self.scores.dtype}"
            )
        if self.ids.shape != self.scores.shape or self.ids.ndim != 2:
            raise ValueError(
                f"Ranking ids {tuple(self.ids.shape)} and scores {tuple(self.scores.shape)} must be equal 2-d"
            )

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def cpu(self) -> Ranking:
        return Ranking(self.ids.cpu(), self.scores.cpu())

    @staticmethod
    def from_scores(scores: torch.Tensor, k: int) -> Ranking:
        """Top-k of a dense [n_queries, n_corpus] score matrix; ties, also at the k-th place,
        go to the lower corpus position, so the result is deterministic."""
        ids, vals = topk_ties_to_lower(scores.float(), k)
        return Ranking(ids.long().contiguous(), vals.contiguous())


def topk_ties_to_lower(key: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k columns of a [n, N] key of any float dtype (a float64 key keeps a lexicographic
    order that float32 would round away), in descending order; ties, also at the k-th place,
    go to the lower column, so the result is deterministic. Returns (ids, values in key's dtype)."""
    kth = torch.topk(key, k, dim=1, sorted=True).values[:, -1:]  # [n, 1]
    above = key > kth
    need = k - above.sum(1, keepdim=True)  # how many of the ties at the k-th value to keep
    tied = key == kth
    chosen = above | (tied & (tied.cumsum(1) <= need))  # exactly k per row, lowest ids among ties
    ids = chosen.nonzero()[:, 1].view(-1, k)  # ascending column within each row
    vals = key.gather(1, ids)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices  # stable: ties stay in id order
    return ids.gather(1, order), vals.gather(1, order)
