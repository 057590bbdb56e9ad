"""`text-embedding-knn`: caption queries against the captions of the indexed images (no training).

The label-free floor beside `dsi-text`: what text alone gives. Every caption the
indexed images carry and every query is a sentence embedding of all-MiniLM-L6-v2 (Reimers &
Gurevych 2019; `vitdsi.models.text_encoder`); an image scores the best cosine between the
query and its captions, and images without captions rank last, in corpus order. No pixel is
read. docs/design.md, "Text queries".
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.models.text_encoder import TextEncoderConfig, make_text_encoder
from vitdsi.ranking import Ranking
from vitdsi.retrievers.base import Retriever, Supervision
from vitdsi.retrievers.params import fields_of
from vitdsi.retrievers.registry import register

SCORE_BATCH = 1024  # queries scored together (bounds the [queries, captions] similarity matrix)
NO_CAPTION = -2.0  # score of an image without captions: below every cosine


@register("text-embedding-knn")
class TextEmbeddingKNN(Retriever):
    """Ranks indexed images by the MiniLM cosine of their best caption to the query caption."""

    query_kind: ClassVar[str] = "text"
    supervision: ClassVar[Supervision] = Supervision(captions=True, pretrained=True)
    config_params = fields_of(TextEncoderConfig, "text_max_length", "text_cache_dir")
    text_max_length: int  # config_params, declared for type checkers (Retriever.__init__ sets them)
    text_cache_dir: str | None

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._encoder = None  # MiniLM, loaded on first use
        self._vectors: torch.Tensor | None = None  # float32 [M, 384]: the indexed captions' embeddings
        self._image: torch.Tensor | None = None  # int64 [M]: the corpus position each caption describes

    def _text_encoder(self):
        if self._encoder is None:
            self._encoder = make_text_encoder(self.config(TextEncoderConfig, text_encoder="minilm")).to(
                self.device
            )
        return self._encoder

    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        captions = corpus.captions
        if captions is None or not len(captions):
            raise VitDSIError(
                "text-embedding-knn: ranks indexed images by their captions, but the corpus has none; "
                "use a captioned dataset (coco, coco-mosaic) under the text protocol"
            )
        # not an inference tensor
        self._vectors = self._text_encoder().encode(captions.texts.tolist()).clone()
        self._image = torch.as_tensor(captions.image, dtype=torch.int64, device=self._vectors.device)

    def _search(self, texts: list[str], k: int) -> Ranking:
        queries = self._text_encoder().encode(texts)
        n = self.corpus_size
        parts = []
        for s in range(0, len(queries), SCORE_BATCH):
            sims = queries[s : s + SCORE_BATCH] @ self._vectors.T  # [b, M] cosines
            best = torch.full((len(sims), n), NO_CAPTION, device=sims.device)
            # per image, its best caption
            best.scatter_reduce_(1, self._image.expand(len(sims), -1), sims, reduce="amax")
            parts.append(Ranking.from_scores(best.cpu(), k))
        return Ranking(torch.cat([p.ids for p in parts]), torch.cat([p.scores for p in parts]))

    def _state(self) -> dict[str, Any]:
        return {"vectors": self._vectors.cpu(), "image": self._image.cpu()}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._vectors = state["vectors"].float().to(self.device)
        self._image = state["image"].long().to(self.device)
