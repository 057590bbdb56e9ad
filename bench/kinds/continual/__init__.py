"""Continual-indexing studies (`continual:`, DSI++): each trial indexes the first share of its
images, then adds the rest in steps and measures what the index still finds after each.
`config` holds the block and its check of the split, `indexing` the stepwise indexing a trial
runs instead of the ordinary one and `report` the report's section."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.kinds.continual.config import ContinualConfig, check_steps
from bench.kinds.continual.indexing import index_continually
from bench.kinds.kind import Settings, StudyKind

if TYPE_CHECKING:
    from bench.report.data import StudyRecord
    from vitdsi.data import SplitSets
    from vitdsi.retrievers.base import Retriever
    from vitdsi.training.monitor import ValidationSet


class Continual(StudyKind):
    key = "continual"
    name = "continual-indexing study"
    config = ContinualConfig
    builds = True
    indexes = True
    text_refusal = (
        "continual indexing adds images with their image queries; the text protocol has none "
        "(text retrievers do not add); remove one of them"
    )
    report_heading = "Continual indexing"

    def check_split(self, settings: Settings, sizes: dict[str, int], source: str, shown: Any) -> None:
        check_steps(settings, sizes, source, shown)

    def index(
        self,
        retriever: Retriever,
        sets: SplitSets,
        settings: Settings,
        metrics: list[str],
        k: int,
        validation: ValidationSet | None = None,
    ) -> list[dict[str, float]]:
        return index_continually(retriever, sets, settings, metrics, k, validation)

    def report_section(self, record: StudyRecord, fig_dir: Path, rel: str) -> str | None:
        # imported here: the report stack reaches the study file schema, which reads this registry
        from bench.kinds.continual.report import continual_section

        return continual_section(record, fig_dir, rel)
