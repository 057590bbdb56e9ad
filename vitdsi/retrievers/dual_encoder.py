"""`dual-encoder`: the dual-encoder baseline of the DSI paper (Tay et al. 2022), on the ViT-DSI's encoder.

One ViT tower trained with symmetric in-batch InfoNCE on query pairs and view pairs; the
corpus embeddings are searched with FAISS by cosine. Details: docs/design.md,
"Label-matched baselines".
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.data.relevance import relevance_keys
from vitdsi.errors import VitDSIError
from vitdsi.features.faiss_index import (
    FAISS_PARAMS,
    QUERY_DEFAULTS,
    FaissConfig,
    FaissParams,
    add_vectors,
    build_index,
    check_index_type,
    deserialize_index,
    search_index,
    serialize_index,
)
from vitdsi.log import get_logger
from vitdsi.losses import symmetric_info_nce
from vitdsi.models.vit_encoder import VitEncoderConfig
from vitdsi.models.vit_heads import VitDualEncoder
from vitdsi.ranking import Ranking
from vitdsi.retrievers.base import Supervision
from vitdsi.retrievers.params import fields_of
from vitdsi.retrievers.registry import register
from vitdsi.retrievers.vit_baseline import TINY_VIT, VitBaseline
from vitdsi.training.optim import autocast
from vitdsi.training.sampler import RelevantSampler

log = get_logger(__name__)


@register("dual-encoder")
class DualEncoder(VitBaseline, FaissParams):
    """ViT tower trained with in-batch InfoNCE; cosine search through FAISS."""

    supervision: ClassVar[Supervision] = Supervision(query_pairs=True, pretrained=True)  # at most
    query_defaults: ClassVar[dict[str, Any]] = dict(QUERY_DEFAULTS)
    config_params = (
        *VitBaseline.config_params,
        *fields_of(FaissConfig, *FAISS_PARAMS),
    )  # + the FAISS index's
    smoke_params: ClassVar[dict[str, Any]] = {**TINY_VIT, "embed_dim": 16}

    def __init__(
        self,
        *,
        embed_dim: int | None = None,
        temperature: float = 0.05,
        **params: Any,
    ) -> None:
        super().__init__(**params)
        self.embed_dim = None if embed_dim is None else int(embed_dim)  # embedding width; None = dim
        self.temperature = float(temperature)  # InfoNCE softmax temperature
        check_index_type(self.index_type, "dual-encoder")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise VitDSIError(f"dual-encoder: embed_dim must be >= 1 or None (= dim), got {embed_dim}")
        if not self.temperature > 0:
            raise VitDSIError(f"dual-encoder: temperature must be > 0, got {temperature}")
        if self.hnsw_m < 2 or self.ef_construction < 1:
            raise VitDSIError(
                f"dual-encoder: need hnsw_m >= 2 and ef_construction >= 1, got {self.hnsw_m}, "
                f"{self.ef_construction}"
            )
        self._faiss = None  # the FAISS index over the corpus embeddings

    def supervision_used(self) -> Supervision:
        # view pairs alone use no label; a borrowed encoder carries its ImageNet training
        return Supervision(query_pairs=self.use_queries, pretrained=self.encoder != "vit")

    # ---- training ---------------------------------------------------------------------
    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        enc_cfg = self._encoder_config(corpus.image_size)
        n = len(corpus)
        images = corpus.images.to(self.device)
        parts, hosts, sampler = [images], [corpus.images], None
        if self.use_queries and train_queries is not None and len(train_queries):
            sampler = RelevantSampler(*relevance_keys(train_queries, corpus))  # labels, or a view's source
            if len(sampler):
                hosts.append(train_queries.images[sampler.has_relevant.to(train_queries.images.device)])
                parts.append(hosts[-1].to(self.device))
            else:
                log.warning(
                    "dual-encoder: no train query has a relevant corpus image; training on view pairs only"
                )
                sampler = None
        elif self.epochs:
            log.info(
                "dual-encoder: no train queries%s; training on corpus view pairs only (label-free)",
                "" if self.use_queries else " (use_queries=False)",
            )
        n_q = len(parts[1]) if sampler is not None else 0
        gen = torch.Generator().manual_seed(self.seed)
        self._model = VitDualEncoder(enc_cfg, self.embed_dim or self.dim).to(self.device)
        model = self._model
        parts = self._training_rows(parts, hosts=hosts)
        del hosts  # the kept queries' host copy: only the feature cache's key needed it
        n_batches = max(1, math.ceil((n + n_q) / self.batch_size))

        def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
            """(anchor rows of [corpus; queries], positive corpus positions) per batch; both streams
            (view pairs, query pairs) are split into the same number of batches, so every batch mixes them."""
            views = torch.randperm(n, generator=gen)
            if sampler is not None:
                q = torch.randperm(n_q, generator=gen)
                q_pos = sampler.sample(q, gen)  # one relevant corpus image per query, afresh each epoch
            else:
                q = q_pos = torch.empty(0, dtype=torch.int64)
            out = []
            for vb, qb, pb in zip(
                torch.tensor_split(views, n_batches),
                torch.tensor_split(q, n_batches),
                torch.tensor_split(q_pos, n_batches),
            ):
                out.append((torch.cat([vb, qb + n]), torch.cat([vb, pb])))
            return out

        def step(batch):
            anchor, positive = (t.to(self.device) for t in batch)
            b = len(anchor)
            # both sides are fresh views at `views` strength, so a view pair is two views of one image;
            # with views 'none' (or a frozen encoder's cached features) it is two dropout passes over
            # the same input (SimCSE, Gao et al. 2021)
            xa = self._rows(parts, anchor, gen)  # [B, 3, H, W]
            xp = self._rows(parts, positive, gen)  # corpus rows: the first part
            z = model(torch.cat([xa, xp]), self._precomputed).float()  # [2B, E], unit norm
            loss, right = symmetric_info_nce(z[:b], z[b:], positive, self.temperature)
            return loss, b, right

        def rank(queries: torch.Tensor, k: int) -> torch.Tensor:  # validation checkpoints: the real search
            self._build_index(self._embed_indexed(corpus.images))
            return self._search(queries, k).ids

        self._train("contrastive", batches, step, n_batches, rank)
        self._build_index(self._embed_indexed(corpus.images))

    def _build_index(self, x: np.ndarray) -> None:
        self._faiss = build_index(x, self.config(FaissConfig), seed=self.seed, owner="dual-encoder")

    def _add(self, images: ImageSet, train_queries: ImageSet | None) -> None:
        add_vectors(self._faiss, self.embed(images.images))  # the encoder stays as trained

    # ---- search -----------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> np.ndarray:
        """uint8 images [n, 3, H, W] -> float32 [n, E] unit-norm embeddings (what the index compares)."""
        parts = []
        for x, precomputed in self._batched(images):
            with autocast(self.device, self.precision):
                parts.append(self._model(x, precomputed).float().cpu())
        return np.ascontiguousarray(torch.cat(parts).numpy(), dtype=np.float32)

    def _embed_indexed(self, images: torch.Tensor) -> np.ndarray:
        """`embed` of the corpus (the index and its validation checkpoints): a frozen encoder part's
        output read from the feature cache, where training put it, not computed again."""
        with self._reading_indexed_images():
            return self.embed(images)

    def _search(self, images: torch.Tensor, k: int) -> Ranking:
        return search_index(
            self._faiss,
            self.embed(images),
            k,
            ef_search=self.query_args["ef_search"],
            nprobe=self.query_args["nprobe"],
        )

    # ---- persistence ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "encoder": self._model.cfg.to_dict(),
            "embed_dim": self._model.embed_dim,
            "model": {k: v.detach().cpu() for k, v in self._model.state_dict().items()},
            "faiss": serialize_index(self._faiss),  # uint8 tensor: loads with weights_only=True
            "history": self.history,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self._model = VitDualEncoder(VitEncoderConfig(**state["encoder"]), state["embed_dim"]).to(self.device)
        self._model.load_state_dict(state["model"])
        self._model.eval()
        self._faiss = deserialize_index(state["faiss"])
        self.history = list(state.get("history", []))
