"""Study kinds: a block of the study file (`latency:`, `continual:`) that makes a study of that
kind, each in a package of its own (its block, checks, trial hook and report section) behind
the `StudyKind` interface. `KINDS` registers them; the config, a trial and the report go
through it and never name a kind. A new kind is one package and one entry in `KINDS`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.kinds.continual import Continual
from bench.kinds.kind import Settings, StudyKind
from bench.kinds.latency import Latency

__all__ = ["KINDS", "Settings", "StudyKind", "kind_of"]

# by block key, in the order the study file lists the blocks; a study has at most one
KINDS: dict[str, StudyKind] = {kind.key: kind for kind in (Latency(), Continual())}


def kind_of(obj: Any) -> tuple[StudyKind, Any] | None:
    """The kind of a study file, `Study`, `TrialConfig` or logged study (a mapping, as a report
    reads it) with its block (the block's model in a study file, its settings after resolution);
    None for an ordinary study."""
    for kind in KINDS.values():
        block = obj.get(kind.key) if isinstance(obj, Mapping) else getattr(obj, kind.key, None)
        if block is not None:
            return kind, block
    return None
