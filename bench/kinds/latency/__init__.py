"""Latency studies (`latency:`): query latency against database size, beside the quality it is
measured with (docs/design.md, "Latency"). `config` holds the block and its rules, `measure`
the timing and the fits, `trial` what a trial measures beyond its quality and `report` (with
`report_quality`) the report's section."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.kinds.kind import Settings, StudyKind
from bench.kinds.latency.config import LatencyConfig, check_latency, latency_trial
from bench.kinds.latency.trial import latency_record

if TYPE_CHECKING:
    from bench.config.resolved import DataConfig
    from bench.config.schema import MethodConfig, StudyFile
    from bench.report.data import StudyRecord
    from vitdsi.data import SplitSets
    from vitdsi.retrievers.base import Retriever


class Latency(StudyKind):
    key = "latency"
    name = "latency study"
    config = LatencyConfig
    # class protocol: the held-out images are train queries, images to add and timed queries, and the
    # validation part (the images to add) may be empty; instance: validation views are always made
    needs_validation = False
    paired = False  # its trials are not trained to be accurate
    report_heading = "Latency against database size"
    report_first = True

    def check(
        self,
        sf: StudyFile,
        methods: dict[str, MethodConfig],
        known: dict[str, type],
        metrics: list[str],
        source: str,
    ) -> None:
        check_latency(sf, methods, known, metrics, source)

    def trial_settings(
        self, settings: Settings, method: str, data: DataConfig, params: dict[str, Any]
    ) -> tuple[DataConfig, dict[str, Any], Settings]:
        return latency_trial(settings, method, data, params)

    def measure(
        self,
        retriever: Retriever,
        sets: SplitSets,
        settings: Settings,
        build_s: float,
        k: int,
        history: list[dict[str, Any]],
    ) -> dict[str, float]:
        return latency_record(retriever, sets, settings, build_s, k, history)

    def dataset_text(
        self, settings: Settings, where: str, n_total: str, dataset: dict[str, Any]
    ) -> str | None:
        # N images indexed, others of the source held out, never indexed (the trial config's split
        # ratio and query fractions only encode those counts); under instance the queries are views
        if dataset.get("protocol") == "instance":
            return (
                f"{where}; N = {n_total} indexed images per trial; queries are views of indexed images "
                f"(instance protocol): {settings.get('n_queries')} timed and scored test views and as many "
                f"validation views, of seeded samples of the indexed images, and "
                f"{settings.get('train_queries', 0)} train views, the same at every N; "
                f"{settings.get('add_images', 0)} held-out source images `add` is timed with; split seed "
                f"{dataset.get('seed')}"
            )
        return (
            f"{where}; N = {n_total} indexed images per trial, and images of the source never indexed: "
            f"{settings.get('train_queries', 0)} train queries, {settings.get('add_images', 0)} images `add` "
            f"is timed with, {settings.get('n_queries')} timed and scored queries; split seed "
            f"{dataset.get('seed')}"
        )

    def report_section(self, record: StudyRecord, fig_dir: Path, rel: str) -> str | None:
        # imported here: the report stack reaches the study file schema, which reads this registry
        from bench.kinds.latency.report import latency_section

        return latency_section(record, fig_dir, rel)
