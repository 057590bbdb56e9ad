"""The allowed values of the retrievers' categorical parameters, for `bench list retrievers NAME`.

The library checks each of these where it uses it; this table gathers them by parameter name,
from the library's own constants where it has one. An open set (any torchvision backbone)
lists its pattern.
"""

from __future__ import annotations

from vitdsi.features.faiss_index import INDEX_TYPES
from vitdsi.ids import ID_SCHEMES
from vitdsi.models.text_encoder import TEXT_ENCODERS
from vitdsi.retrievers.bovw import SEARCH_MODES, WEIGHTINGS
from vitdsi.retrievers.dsi import ADD_STRATEGIES
from vitdsi.training.config import MODES, PRECISIONS


def param_choices() -> dict[str, tuple[str, ...]]:
    """Allowed values by build-parameter or query-argument name (the same name means the same
    thing in every retriever that has it)."""

    return {
        "id_scheme": ID_SCHEMES,
        "mode": MODES,
        "precision": PRECISIONS,
        "add_strategy": ADD_STRATEGIES,
        "index_type": INDEX_TYPES,
        "text_encoder": TEXT_ENCODERS,
        "weighting": WEIGHTINGS,
        "search": SEARCH_MODES,
        "detector": ("sparse", "dense"),  # vitdsi.features.sift.SiftConfig
        "pos_encoding": ("sinusoidal", "learned"),  # vitdsi.models.vit_encoder
        "encoder": ("vit", "efficientnet-lite0", "torchvision:NAME"),  # open: any torchvision backbone
    }


OPEN = {"encoder"}  # sets with a pattern among their values, not checked value by value
