"""The output layer of an atomic-id DSI, timed alone: the O(N) scan inside an "O(1)" model.

An atomic DSI answers with one softmax over its N ids (`VitDSI.atomic_logits`: pooling, then a
linear layer of N x D weights), then top-k: a dense N x D matrix-vector product per query, the
same work as a flat index's scan of N D-dimensional vectors. `atomic_head_timing` times that step
at batch 1 on the encoded memory of one real query, with the machinery that times searches
(`bench.kinds.latency.measure.timed_calls`)."""

from __future__ import annotations

import numpy as np
import torch

from bench.kinds.latency.measure import SearchTiming, timed_calls
from vitdsi.models.decoding import atomic_topk_memory
from vitdsi.models.vit_dsi import VitDSI
from vitdsi.retrievers.base import Retriever
from vitdsi.training.augment import to_input
from vitdsi.training.optim import autocast


def atomic_head_timing(
    retriever: Retriever, queries: torch.Tensor, *, k: int, calls: int, warmup: int, threads: int
) -> SearchTiming | None:
    """Per-query time of the atomic head (pool, N x D layer, log-softmax, top-k) at batch 1; None
    for a retriever whose model is not an atomic DSI, or for caption queries."""
    model = getattr(retriever, "model", None)
    if not isinstance(model, VitDSI) or not model.cfg.atomic or not isinstance(queries, torch.Tensor):
        return None
    device = retriever.device
    with torch.inference_mode(), autocast(device):  # as the search runs it
        memory = model.encode(to_input(queries[:1].to(device)))

    def head(_: int) -> None:
        with autocast(device):
            atomic_topk_memory(model, memory, k)

    return timed_calls(
        head,
        np.zeros(calls + warmup, dtype=np.int64),
        batch_size=1,
        warmup=warmup,
        threads=threads,
        device=device,
    )
