"""`embedding`: dense image features (raw pixels or a pretrained CNN) searched with FAISS.

The pretrained content-based retrieval baseline:
backbone features, optionally centred, L2-normalised, in a flat, HNSW or IVF inner-product
index (`vitdsi.features.faiss_index`). Details: docs/design.md, "Label-free baselines".

The features of the images it indexes (`index`, `add`) go through the on-disk feature cache
(`vitdsi.features.backbone_cache`; VITDSI_FEATURE_CACHE=0 turns it off), so the same images
under the same backbone are computed once across trials and studies. Queries never do: `search`
and `embed` run the backbone on every query, since a latency study times search and must
measure the encoder's real cost per query. `build_info` says what the indexed images'
extraction cost (vitdsi.features.extraction), read from the cache or measured.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.features import faiss_index
from vitdsi.features.backbone_cache import batch_features, index_features
from vitdsi.features.backbones import Backbone, load_backbone
from vitdsi.features.extraction import ExtractionTime
from vitdsi.features.faiss_index import FAISS_PARAMS, FaissParams
from vitdsi.features.feature_cache import default_cache
from vitdsi.log import get_logger
from vitdsi.ranking import Ranking
from vitdsi.retrievers.base import Retriever, Supervision
from vitdsi.retrievers.params import fields_of
from vitdsi.retrievers.registry import register

log = get_logger(__name__)

INDEX_TYPES = faiss_index.INDEX_TYPES


@register("embedding")
class Embedding(Retriever, FaissParams):
    """Backbone features, cosine similarity through a FAISS index."""

    query_defaults: ClassVar[dict[str, Any]] = dict(faiss_index.QUERY_DEFAULTS)
    supervision: ClassVar[Supervision] = Supervision(pretrained=True)
    config_params = fields_of(faiss_index.FaissConfig, *FAISS_PARAMS)  # the FAISS index's settings
    smoke_params: ClassVar[dict[str, Any]] = {
        "backbone": "pixels",
        "index_type": "flat",
    }  # no pretrained weights to load

    def __init__(
        self,
        *,
        backbone: str = "efficientnet-lite0",
        center: bool = True,
        input_size: int | None = None,
        batch_size: int = 64,
        seed: int = 0,
        device: str | None = None,
        **params: Any,
    ) -> None:
        super().__init__(seed=seed, device=device, **params)
        self.backbone = backbone  # "pixels", "efficientnet-lite0" or a torchvision model name
        self.center = bool(center)  # subtract the corpus mean feature before normalising
        # px the backbone's input is resized to (None: its weights' own, 224 for EfficientNet-Lite0);
        # a smaller one matches a borrowed encoder's `encoder_size` and costs far less on a CPU
        self.input_size = None if input_size is None else int(input_size)
        self.batch_size = int(batch_size)  # images per forward pass
        faiss_index.check_index_type(self.index_type, "embedding")
        self._net: Backbone | None = None  # loaded on first use
        self._mean: torch.Tensor | None = None  # float32 [D] corpus mean feature (zeros without centring)
        self._faiss = None  # the FAISS index
        self._extraction = ExtractionTime()  # of the indexed images' features, since the last index call

    # ---- features -------------------------------------------------------------------
    def _backbone(self) -> Backbone:
        if self._net is None:
            self._net = load_backbone(self.backbone, self.device, input_size=self.input_size)
        return self._net

    @property
    def model(self) -> torch.nn.Module | None:
        """The pretrained network a query is embedded with (None for pixels, or before first use)."""
        return self._net.model if self._net is not None else None

    def _raw_features(self, images: torch.Tensor, what: str) -> torch.Tensor:
        """Features of queries, computed by the backbone every time (never the cache)."""
        return torch.cat(list(batch_features(self._backbone(), images, self.batch_size, what)))

    def _indexed_features(self, images: torch.Tensor, what: str) -> torch.Tensor:
        """Features of images to index, through the feature cache (on the CPU when read from it)."""
        return index_features(
            self._backbone(), images, self.batch_size, what, default_cache(), self._extraction
        )

    def _normalise(self, feats: torch.Tensor) -> np.ndarray:
        feats = torch.nn.functional.normalize(feats - self._mean.to(feats.device), dim=1)
        return np.ascontiguousarray(feats.cpu().numpy(), dtype=np.float32)

    def embed(self, images: torch.Tensor) -> np.ndarray:
        """float32 [n, D]: the normalised features the index compares (after `index`), computed
        by the backbone as a query's are (no cache)."""
        if self._mean is None:
            raise VitDSIError(
                "embedding: embed() needs the corpus statistics; index a corpus or load() one first"
            )
        return self._normalise(self._raw_features(images, "images"))

    # ---- retriever hooks ------------------------------------------------------------
    def supervision_used(self) -> Supervision:
        return Supervision(pretrained=self.backbone != "pixels")  # pretrained backbones saw ImageNet labels

    def build_info(self) -> dict[str, float]:
        return self._extraction.record()

    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        self._extraction = ExtractionTime()
        raw = self._indexed_features(corpus.images, "corpus")
        mean = raw.mean(0) if self.center else torch.zeros(raw.shape[1], device=raw.device)
        self._mean = mean.to(self.device)  # where queries' features are
        x = self._normalise(raw)
        self._faiss = faiss_index.build_index(
            x, self.config(faiss_index.FaissConfig), seed=self.seed, owner="embedding"
        )
        n, d = x.shape
        log.info(
            "embedding: %d images, %s features of %d dims, %s index", n, self.backbone, d, self.index_type
        )

    def _add(self, images: ImageSet, train_queries: ImageSet | None) -> None:
        # centred on the first corpus's mean, so the vectors already in the index stay valid
        faiss_index.add_vectors(
            self._faiss, self._normalise(self._indexed_features(images.images, "added images"))
        )

    def _search(self, images: torch.Tensor, k: int) -> Ranking:
        if self._indexed_inputs:  # indexed images (`search_indexed`): their features from the cache
            raw = index_features(
                self._backbone(), images, self.batch_size, "indexed images", default_cache(), ExtractionTime()
            )
        else:
            raw = self._raw_features(images, "queries")
        q = self._normalise(raw)
        return faiss_index.search_index(
            self._faiss, q, k, ef_search=self.query_args["ef_search"], nprobe=self.query_args["nprobe"]
        )

    # ---- persistence ----------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        # the FAISS index as a uint8 tensor, so that `load_retriever` can read it with weights_only=True
        return {"mean": self._mean.cpu(), "faiss": faiss_index.serialize_index(self._faiss)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._mean = state["mean"].to(self.device)
        self._faiss = faiss_index.deserialize_index(state["faiss"])
