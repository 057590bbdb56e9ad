"""`text-dual-encoder`: caption queries against image embeddings, a CLIP-style dual encoder
(Radford et al. 2021).

The baseline beside `dsi-text` with the same two encoders: the image tower is the
DSI's encoder (the ViT or a borrowed CNN), the text tower a pretrained MiniLM (or a small text
transformer), each pooled and projected to `embed_dim`, L2-normalised. It trains with symmetric
in-batch InfoNCE on the captions the indexed images carry, each paired with its own image; the
corpus embeddings are searched with FAISS by cosine. docs/design.md, "Text queries".
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.features.faiss_index import (
    FAISS_PARAMS,
    QUERY_DEFAULTS,
    FaissConfig,
    FaissParams,
    build_index,
    check_index_type,
    deserialize_index,
    search_index,
    serialize_index,
)
from vitdsi.losses import symmetric_info_nce
from vitdsi.models.text_encoder import (
    TEXT_ENCODER_PARAMS,
    TextEncoderConfig,
    TextEncoderParams,
    load_saved_state,
    saved_state,
)
from vitdsi.models.text_models import TextImageDualEncoder
from vitdsi.models.vit_encoder import VitEncoderConfig
from vitdsi.ranking import Ranking
from vitdsi.retrievers.base import Supervision
from vitdsi.retrievers.params import fields_of
from vitdsi.retrievers.registry import register
from vitdsi.retrievers.vit_baseline import SEARCH_BATCH, TINY_VIT, VitModelRetriever
from vitdsi.training.optim import autocast


@register("text-dual-encoder")
class TextDualEncoder(VitModelRetriever, TextEncoderParams, FaissParams):
    """Image tower + text tower trained with in-batch InfoNCE on caption-image pairs; cosine search through
    FAISS."""

    query_kind: ClassVar[str] = "text"
    supervision: ClassVar[Supervision] = Supervision(captions=True, pretrained=True)  # at most
    query_defaults: ClassVar[dict[str, Any]] = dict(QUERY_DEFAULTS)
    config_params = (
        *VitModelRetriever.config_params,
        *fields_of(TextEncoderConfig, *TEXT_ENCODER_PARAMS),
        *fields_of(FaissConfig, *FAISS_PARAMS),
    )
    smoke_params: ClassVar[dict[str, Any]] = {**TINY_VIT, "epochs": 10, "embed_dim": 32}

    def __init__(self, *, embed_dim: int = 64, temperature: float = 0.05, **params: Any) -> None:
        super().__init__(**params)
        self.embed_dim = int(embed_dim)  # width of the shared embedding space
        self.temperature = float(temperature)  # InfoNCE softmax temperature
        check_index_type(self.index_type, "text-dual-encoder")
        if self.embed_dim < 1:
            raise VitDSIError(f"text-dual-encoder: embed_dim must be >= 1, got {embed_dim}")
        if not self.temperature > 0:
            raise VitDSIError(f"text-dual-encoder: temperature must be > 0, got {temperature}")
        try:
            self.config(TextEncoderConfig)
        except VitDSIError as e:
            raise VitDSIError(f"text-dual-encoder: {e}") from None
        self._faiss = None  # the FAISS index over the corpus image embeddings

    def supervision_used(self) -> Supervision:
        return Supervision(captions=True, pretrained=self.encoder != "vit" or self.text_encoder == "minilm")

    # ---- training ---------------------------------------------------------------------
    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        captions = corpus.captions
        if captions is None or not len(captions):
            raise VitDSIError(
                "text-dual-encoder: learns from the captions the indexed images carry, but the corpus "
                "has none; use a captioned dataset (coco, coco-mosaic) under the text protocol"
            )
        self._model = TextImageDualEncoder(
            self._encoder_config(corpus.image_size), self.config(TextEncoderConfig), self.embed_dim
        ).to(self.device)
        model = self._model
        images = self._training_rows([corpus.images.to(self.device)], hosts=[corpus.images])[0]
        own = torch.as_tensor(captions.image, dtype=torch.int64)
        text, text_fixed = self._caption_rows(captions.texts.tolist())
        gen = torch.Generator().manual_seed(self.seed)
        m = len(own)
        n_batches = max(1, math.ceil(m / self.batch_size))

        def batches() -> list[torch.Tensor]:
            # caption rows per batch
            return list(torch.tensor_split(torch.randperm(m, generator=gen), n_batches))

        def step(rows: torch.Tensor):
            positive = own[rows].to(self.device)  # each caption's own image
            b = len(rows)
            rows = rows.to(self.device)
            if text_fixed:
                zt = model.embed_texts(text[0][rows], precomputed=True)
            else:
                ids, mask = text[0][rows], text[1][rows]
                width = int(mask.sum(1).max())
                zt = model.embed_texts(ids[:, :width], mask[:, :width])
            zi = model.embed_images(self._rows([images], positive, gen), self._precomputed)
            # another caption of the same image is no negative
            loss, right = symmetric_info_nce(zt, zi, positive, self.temperature)
            return loss, b, right

        def rank(queries: list[str], k: int) -> torch.Tensor:  # validation checkpoints: the real search
            self._build_index(self._embed_indexed(corpus.images))
            return self._search(queries, k).ids

        self._train("contrastive", batches, step, n_batches, rank)
        self._build_index(self._embed_indexed(corpus.images))

    def _caption_rows(self, texts: list[str]) -> tuple[tuple[torch.Tensor, ...], bool]:
        """Training rows of the captions: (sentence embeddings,) of a fixed text encoder, computed once,
        or (token ids, mask) for one that trains; and whether they are the former."""
        encoder = self._model.text_encoder
        if encoder.fixed:
            return (
                encoder.encode(texts).clone(),
            ), True  # clone: a tensor autograd may save, not an inference one
        batch = encoder.tokenize(texts)
        return (batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)), False

    def _build_index(self, x: np.ndarray) -> None:
        self._faiss = build_index(x, self.config(FaissConfig), seed=self.seed, owner="text-dual-encoder")

    # ---- search -----------------------------------------------------------------------
    @torch.inference_mode()
    def embed_images(self, images: torch.Tensor) -> np.ndarray:
        """uint8 images [n, 3, H, W] -> float32 [n, E] unit-norm embeddings (what the index holds)."""
        parts = []
        for x, precomputed in self._batched(images):
            with autocast(self.device, self.precision):
                parts.append(self._model.embed_images(x, precomputed).float().cpu())
        return np.ascontiguousarray(torch.cat(parts).numpy(), dtype=np.float32)

    def _embed_indexed(self, images: torch.Tensor) -> np.ndarray:
        """`embed_images` of the corpus (the index and its validation checkpoints): a frozen encoder
        part's output read from the feature cache, where training put it, not computed again."""
        with self._reading_indexed_images():
            return self.embed_images(images)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Captions -> float32 [n, E] unit-norm embeddings (what queries the index)."""
        self._model.eval()
        sentences = self._model.text_encoder.encode(texts, batch_size=SEARCH_BATCH)  # batched by length
        with autocast(self.device, self.precision):
            z = self._model.embed_texts(sentences, precomputed=True)
        return np.ascontiguousarray(z.float().cpu().numpy(), dtype=np.float32)

    def _search(self, texts: list[str], k: int) -> Ranking:
        return search_index(
            self._faiss,
            self.embed_texts(texts),
            k,
            ef_search=self.query_args["ef_search"],
            nprobe=self.query_args["nprobe"],
        )

    # ---- persistence ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "encoder": self._model.cfg.to_dict(),
            "text_encoder": asdict(self._model.text_cfg),
            "embed_dim": self._model.embed_dim,
            "model": saved_state(self._model),  # without the weights MiniLM's package ships
            "faiss": serialize_index(self._faiss),  # uint8 tensor: loads with weights_only=True
            "history": self.history,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self._model = TextImageDualEncoder(
            VitEncoderConfig(**state["encoder"]),
            TextEncoderConfig(**state["text_encoder"]),
            state["embed_dim"],
        )
        load_saved_state(self._model, state["model"])
        self._model.to(self.device).eval()
        self._faiss = deserialize_index(state["faiss"])
        self.history = list(state.get("history", []))
