"""Registered retrievers. Importing this package fills the registry in `base`.

Each module registers its class with `@register(name)`; modules keep heavy imports
(cv2, faiss, model code) inside methods so this import stays light.
"""

from vitdsi.retrievers import (  # noqa: F401
    bovw,
    classifier,
    dsi,
    dsi_text,
    dual_encoder,
    embedding,
    pixels_knn,
    random_baseline,
    text_dual_encoder,
    text_knn,
)
from vitdsi.retrievers.base import Ranking, Retriever, create, get, register, registered

__all__ = ["Ranking", "Retriever", "create", "get", "register", "registered"]
