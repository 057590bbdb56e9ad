"""The label-matched baselines' models: the ViT-DSI's encoder (`VitEncoder`) with another head.

    VitClassifier   encoder -> mean-pooled embedding -> linear class head (logits over C
                    classes / categories); the `classifier` retriever
    VitDualEncoder  encoder -> mean-pooled embedding -> linear projection to E dims,
                    L2-normalised (the dual-encoder baseline of Tay et al. 2022);
                    the `dual-encoder` retriever

Both take a VitEncoderConfig, so the encoder is the same module with the same fields as
the DSI's (the ViT, or the borrowed pretrained CNN its `encoder` field names). Shapes: B images,
D model width, C classes, E embedding width.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitdsi.models.borrowed_encoder import init_model, make_encoder
from vitdsi.models.vit_encoder import VitEncoderConfig, init_weights


class VitClassifier(nn.Module):
    """Image -> class logits [B, C] and its pooled embedding [B, D]."""

    def __init__(self, cfg: VitEncoderConfig, n_classes: int) -> None:
        super().__init__()
        self.cfg, self.n_classes = cfg, int(n_classes)
        self.encoder = make_encoder(cfg)
        self.head = nn.Linear(cfg.dim, self.n_classes)
        init_model(self, init_weights)

    def forward(self, images: torch.Tensor, precomputed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """float images [B, C, H, W] (see `vitdsi.training.augment.to_input`; or a borrowed encoder's
        `precompute` output) -> logits [B, C], pooled [B, D]."""
        pooled = encode_pooled(self.encoder, images, precomputed)  # [B, D]
        return self.head(pooled), pooled


def encode_pooled(encoder: nn.Module, images: torch.Tensor, precomputed: bool) -> torch.Tensor:
    """Mean-pooled encoding [B, D] of model input (or of a borrowed encoder's `precompute` output)."""
    return encoder.pool(encoder(images, precomputed=True) if precomputed else encoder(images))


class VitDualEncoder(nn.Module):
    """Image -> unit-norm embedding [B, E]; queries and corpus images share the tower."""

    def __init__(self, cfg: VitEncoderConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg, self.embed_dim = cfg, int(embed_dim)
        self.encoder = make_encoder(cfg)
        self.proj = nn.Linear(cfg.dim, self.embed_dim)
        init_model(self, init_weights)

    def forward(self, images: torch.Tensor, precomputed: bool = False) -> torch.Tensor:
        """float images [B, C, H, W] (or a borrowed encoder's `precompute` output) -> L2-normalised
        embeddings [B, E] (float32)."""
        return F.normalize(self.proj(encode_pooled(self.encoder, images, precomputed)).float(), dim=-1)
