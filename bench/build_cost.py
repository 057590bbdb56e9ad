"""What a trial's build would cost from cold, whatever the feature cache held when it ran.

A build that reads a frozen encoder's features from the cache (vitdsi.features.feature_cache)
skips their extraction, so its wall seconds depend on which trial built the entry first. Each
seed's retriever says what the extraction of every image set its build used costs from cold
(`extraction_s`: recorded when the cache entry was built, or measured now) and how much of it was
spent in this build (`extraction_spent_s`): a trained retriever in its training record, another
through `Retriever.build_info`. The trial logs their means over seeds and
`cold_build_s` = build wall seconds - `extraction_spent_s` + `extraction_s`. A seed that read a
cache entry without recorded seconds (`extraction_unknown`) leaves `cold_build_s` unlogged: it
is unknown, not the wall time. A retriever that reports neither logs none of these.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vitdsi.retrievers.base import Retriever

KEYS = ("extraction_s", "extraction_spent_s", "extraction_unknown")


def extraction_of(retriever: Retriever) -> dict[str, float]:
    """The extraction seconds of the retriever's last build (`KEYS`), or {} when it reports none."""
    record: dict[str, Any] = getattr(retriever, "training_record", None) or {}
    source = record if "extraction_s" in record else retriever.build_info()
    return {k: float(source[k]) for k in KEYS if k in source}


def cold_build_summary(extractions: list[dict[str, float]], seconds: list[float]) -> dict[str, float]:
    """Trial metrics from each seed's `extraction_of` and build wall seconds: the means of `KEYS`
    and, when every seed's extraction seconds are known, `cold_build_s`; {} unless every seed
    reported them."""
    if not extractions or any("extraction_s" not in e for e in extractions):
        return {}
    out = {k: float(np.mean([e.get(k, 0.0) for e in extractions])) for k in KEYS}
    if not out["extraction_unknown"]:
        pairs = zip(extractions, seconds, strict=True)
        cold = [s - e["extraction_spent_s"] + e["extraction_s"] for e, s in pairs]
        out["cold_build_s"] = float(np.mean(cold))
    return out
