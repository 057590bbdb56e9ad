"""The label-matched baselines' models: the ViT-DSI's encoder (`VitEncoder`) with another head.

    VitClassifier   encoder -> mean-pooled embedding -> linear class head (logits over C
                    classes / categories); the `classifier` retriever
    VitDualEncoder  encoder -> mean-pooled embedding -> linear projection to E dims,
                    L2-normalised (the dual-encoder baseline of Tay et al. 2022);
                    the `dual-encoder` retriever

Both take a VitEncoderConfig, so the encoder is the same module with the same fields as
the DSI's. Shapes: B images, D model width, C classes, E embedding width.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitdsi.models.vit_encoder import VitEncoder, VitEncoderConfig, init_weights


class VitClassifier(nn.Module):
    """Image -> class logits [B, C] and its pooled embedding [B, D]."""

    def __init__(self, cfg: VitEncoderConfig, n_classes: int) -> None:
        super().__init__()
        self.cfg, self.n_classes = cfg, int(n_classes)
        self.encoder = VitEncoder(cfg)
        self.head = nn.Linear(cfg.dim, self.n_classes)
        self.apply(init_weights)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float images [B, C, H, W] (see `vitdsi.train.to_input`) -> logits [B, C], pooled [B, D]."""
        pooled = self.encoder.embed(images)  # [B, D]
        return self.head(pooled), pooled


class VitDualEncoder(nn.Module):
    """Image -> unit-norm embedding [B, E]; queries and corpus images share the tower."""

    def __init__(self, cfg: VitEncoderConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg, self.embed_dim = cfg, int(embed_dim)
        self.encoder = VitEncoder(cfg)
        self.proj = nn.Linear(cfg.dim, self.embed_dim)
        self.apply(init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """float images [B, C, H, W] -> L2-normalised embeddings [B, E] (float32)."""
        return F.normalize(self.proj(self.encoder.embed(images)).float(), dim=-1)
