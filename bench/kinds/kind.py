"""The interface of a study kind (`StudyKind`): what a study with the kind's block in its file
checks, resolves, runs in each trial beyond the ordinary one and adds to its report. The base
class is the ordinary study: each hook does nothing, and a kind overrides the ones it needs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from bench.config.resolved import DataConfig
    from bench.config.schema import MethodConfig, StudyFile
    from bench.report.data import StudyRecord
    from vitdsi.data import SplitSets
    from vitdsi.retrievers.base import Retriever
    from vitdsi.training.monitor import ValidationSet

Settings = dict[str, Any]  # the kind's block as resolved into a Study / TrialConfig (its model's dump)


class StudyKind:
    """One kind of study, made by a block of the study file (`latency:`, `continual:`)."""

    key: ClassVar[str]  # the study file's key of the block; also of its settings in Study and TrialConfig
    name: ClassVar[str]  # what a study with the block is, for messages: "latency study"
    config: ClassVar[type[BaseModel]]  # the block's pydantic model
    # True: the settings change what a trial builds (TrialConfig.fingerprint); False: only what it
    # measures of the index (TrialConfig.result_fingerprint)
    builds: ClassVar[bool] = False
    # True: `index` builds a trial's index itself, in steps, so the index is never kept for another trial
    indexes: ClassVar[bool] = False
    needs_validation: ClassVar[bool] = True  # False: a split without validation queries is fine
    text_refusal: ClassVar[str | None] = None  # why the text protocol does not fit, when it does not
    paired: ClassVar[bool] = True  # False: the report makes no paired comparisons of its trials
    report_heading: ClassVar[str | None] = None  # the heading of the kind's report section
    # True: the section opens the report (before tuning and results); False: after the importances
    report_first: ClassVar[bool] = False

    # ---- study checks --------------------------------------------------------------------
    def check(
        self,
        sf: StudyFile,
        methods: dict[str, MethodConfig],
        known: dict[str, type],
        metrics: list[str],
        source: str,
    ) -> None:
        """The block against the rest of the file (its methods, search space and metrics), before
        any trial runs; a problem is a StudyConfigError naming the field."""

    def check_split(self, settings: Settings, sizes: dict[str, int], source: str, shown: Any) -> None:
        """One trial's split sizes (`vitdsi.data.split.split_sizes`) against the settings."""

    # ---- a trial -------------------------------------------------------------------------
    def trial_settings(
        self, settings: Settings, method: str, data: DataConfig, params: dict[str, Any]
    ) -> tuple[DataConfig, dict[str, Any], Settings]:
        """A trial's dataset, build parameters and settings as the kind makes them (in
        `Study.trial_config`, so a trial's logged parameters and fingerprint carry them)."""
        return data, params, settings

    def index(
        self,
        retriever: Retriever,
        sets: SplitSets,
        settings: Settings,
        metrics: list[str],
        k: int,
        validation: ValidationSet | None = None,
    ) -> list[dict[str, float]]:
        """For a kind that `indexes`: build the index over `sets.corpus` itself, training on the
        `validation` queries' checkpoints as an ordinary index call does; one record per step,
        logged under `<key>/` and as `<key>.json`."""
        raise NotImplementedError(f"the {self.name} builds its index the ordinary way")

    def measure(
        self,
        retriever: Retriever,
        sets: SplitSets,
        settings: Settings,
        build_s: float,
        k: int,
        history: list[dict[str, Any]],
    ) -> dict[str, float]:
        """More metrics of the first seed's index, after its quality is scored at `k`."""
        return {}

    # ---- the report ----------------------------------------------------------------------
    def dataset_text(
        self, settings: Settings, where: str, n_total: str, dataset: dict[str, Any]
    ) -> str | None:
        """The report's Set-up line on the data (`where`: the dataset and image size; `n_total` as
        printed), when the kind splits its data its own way; None: the ordinary line."""
        return None

    def report_section(self, record: StudyRecord, fig_dir: Path, rel: str) -> str | None:
        """The kind's section of the report (figures under `fig_dir`, linked as `rel`/...)."""
        return None
