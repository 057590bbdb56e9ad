"""Latency studies (`latency:`): query latency against database size, beside the quality it is
measured with (docs/design.md, "Latency"). `config` holds the block and its rules, `measure`
the timing and the fits, `trial` what a trial measures beyond its quality and `report` (with
`report_quality`) the report's section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.kinds.kind import Settings, StudyKind
from bench.kinds.latency.config import LatencyConfig, check_latency, latency_trial
from bench.kinds.latency.trial import latency_record


class Latency(StudyKind):
    key = "latency"
    name = "latency study"
    config = LatencyConfig
    needs_validation = False  # the held-out images are train queries, images to add and timed queries
    paired = False  # its trials are not trained to be accurate
    report_heading = "Latency against database size"
    report_first = True

    def check(self, sf, methods, known, metrics, source) -> None:
        check_latency(sf, methods, known, metrics, source)

    def trial_settings(self, settings: Settings, method: str, data, params: dict[str, Any]):
        return latency_trial(settings, method, data, params)

    def measure(self, retriever, sets, settings: Settings, build_s: float, k: int,
                history: list[dict[str, Any]]) -> dict[str, float]:
        return latency_record(retriever, sets, settings, build_s, k, history)

    def report_section(self, record, fig_dir: Path, rel: str) -> str | None:
        # imported here: the report stack reaches the study file schema, which reads this registry
        from bench.kinds.latency.report import latency_section

        return latency_section(record, fig_dir, rel)
