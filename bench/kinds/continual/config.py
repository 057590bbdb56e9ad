"""A continual-indexing study's `continual:` block (`ContinualConfig`) and its check of each
trial's split: the first index and every add step need at least one image."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from bench.config.block import Block
from bench.config.errors import StudyConfigError


class ContinualConfig(Block):
    """Continual-indexing studies (DSI++): each trial indexes the first `initial` share of the
    indexed images, then adds the rest in `steps` equal batches with `Retriever.add`, and logs
    IA@1 of the original images and of every added batch, the ranked metrics and the wall time
    after each step."""

    initial: float = Field(0.5, gt=0, lt=1)  # share of the indexed images in the first index
    steps: int = Field(5, ge=1)  # add steps that bring in the rest, in equal batches


def check_steps(settings: dict[str, Any], sizes: dict[str, int], source: str, shown: Any) -> None:
    """The indexed images of one trial's split fill the first index and every add step."""
    first = int(round(settings["initial"] * sizes["idb"]))
    if first < 1 or sizes["idb"] - first < settings["steps"]:
        raise StudyConfigError(
            f"{source}: {shown}: continual indexing of {sizes['idb']} indexed images needs at least one in "
            f"the first index ({first}) and one per add step ({sizes['idb'] - first} left for "
            f"{settings['steps']} steps); change continual.initial / continual.steps or dataset.n_total"
        )
