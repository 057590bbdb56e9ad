"""How deep a trial ranks: the k its ranked metrics are scored at (`scored_k`), which latency
studies also time searches at."""

from __future__ import annotations

from vitdsi.metrics import parse_metric

MRR_DEPTH = 100  # MRR has no cutoff: a trial returns this many results for it


def scored_k(metrics: list[str] | tuple[str, ...]) -> int:
    """The k a trial ranks its queries to and scores quality at: the largest cutoff of the ranked
    metrics (IA@K queries the indexed images apart), at least MRR_DEPTH when MRR is among them."""
    ranked = [parse_metric(m) for m in metrics if not parse_metric(m).is_indexing]
    k = max((m.k or 1 for m in ranked), default=1)
    return max(k, MRR_DEPTH) if any(m.k is None for m in ranked) else k
