"""Registered retrievers. Importing this package fills the registry (`registry`).

Each module registers its class with `@register(name)`; modules keep heavy optional
libraries (cv2, faiss, transformers) inside functions so this import stays light.
"""

from vitdsi.ranking import Ranking
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
from vitdsi.retrievers.base import Retriever
from vitdsi.retrievers.persistence import load_retriever, save_retriever
from vitdsi.retrievers.registry import create, get, register, registered

__all__ = [
    "Ranking",
    "Retriever",
    "create",
    "get",
    "load_retriever",
    "register",
    "registered",
    "save_retriever",
]
