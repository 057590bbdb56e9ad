"""Models that read captions: a DSI that also decodes ids from text, and a text-image dual encoder.

Seed 002 (a DSI for text queries): a pretrained text encoder and an image encoder trained
DSI-style to write the same image ids. `VitTextDSI` is the ViT-DSI (`vit_dsi`, its image
encoder a ViT or a borrowed CNN) whose id decoder can also cross-attend to a caption: the text
encoder's token states (`vitdsi.models.text_encoder`), projected to the decoder width and
layer-normed (`TextTower`), with their padding masked. `TextImageDualEncoder` is the contrastive
baseline (CLIP, Radford et al. 2021, at this project's scale): the same two encoders, each
pooled and projected to a shared space. Shapes: B texts or images, L tokens, P patches,
D model width, E embedding width.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitdsi.models.borrowed_encoder import init_model, make_encoder
from vitdsi.models.dropout import Dropout
from vitdsi.models.text_encoder import TextEncoder, TextEncoderConfig, make_text_encoder
from vitdsi.models.vit_dsi import VitDSI, VitDSIConfig
from vitdsi.models.vit_encoder import VitEncoderConfig, init_weights


class TextTower(nn.Module):
    """Token ids (or the text encoder's fixed states) and mask -> token memory [B, L, D]."""

    def __init__(self, text_cfg: TextEncoderConfig, dim: int, dropout: float) -> None:
        super().__init__()
        self.encoder: TextEncoder = make_text_encoder(text_cfg)  # pretrained weights as loaded
        self.proj = nn.Linear(self.encoder.dim, dim)  # text width (384 for MiniLM) -> decoder width
        self.norm = nn.LayerNorm(dim)
        self.drop = Dropout(dropout)
        init_weights(self.proj)

    def states(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The text encoder's token states [B, L, Dt], what `forward(..., precomputed=True)` takes."""
        return self.encoder.tokens(input_ids, mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, precomputed: bool = False) -> torch.Tensor:
        states = x if precomputed else self.states(x, mask)
        return self.drop(self.norm(self.proj(states)))


class VitTextDSI(VitDSI):
    """VitDSI whose id decoder reads images (indexing) or captions (text queries) alike."""

    def __init__(self, cfg: VitDSIConfig, text_cfg: TextEncoderConfig) -> None:
        super().__init__(cfg)  # the image encoder and decoder, initialised as a VitDSI is
        self.text_cfg = text_cfg
        self.text = TextTower(text_cfg, cfg.dim, cfg.dropout)

    def encode_text(self, x: torch.Tensor, mask: torch.Tensor, precomputed: bool = False) -> torch.Tensor:
        """Token ids [B, L] (or `text.states` output) and their mask -> memory [B, L, D]; pass the
        mask on to `decode` / `memory_kv` / `atomic_logits`, which leave padding out."""
        return self.text(x, mask, precomputed)


class TextImageDualEncoder(nn.Module):
    """Images and captions -> unit-norm embeddings [B, E] in one space, compared by cosine."""

    def __init__(self, cfg: VitEncoderConfig, text_cfg: TextEncoderConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg, self.text_cfg, self.embed_dim = cfg, text_cfg, int(embed_dim)
        self.encoder = make_encoder(cfg)  # the image tower: ViT or borrowed CNN
        self.image_proj = nn.Linear(cfg.dim, self.embed_dim)
        init_model(self, init_weights)  # before the text encoder joins: its weights stay as loaded
        self.text_encoder: TextEncoder = make_text_encoder(text_cfg)
        self.text_proj = nn.Linear(self.text_encoder.dim, self.embed_dim)
        init_weights(self.text_proj)

    def embed_images(self, images: torch.Tensor, precomputed: bool = False) -> torch.Tensor:
        """Model input [B, 3, H, W] (or a borrowed encoder's `precompute` output) -> [B, E] float32."""
        tokens = self.encoder(images, precomputed=True) if precomputed else self.encoder(images)
        return F.normalize(self.image_proj(self.encoder.pool(tokens)).float(), dim=-1)

    def sentence(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The text encoder's sentence embedding [B, Dt] (what `embed_texts(..., precomputed=True)` takes)."""
        return self.text_encoder.embed(input_ids, mask)

    def embed_texts(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, precomputed: bool = False
    ) -> torch.Tensor:
        """Token ids [B, L] and mask (or `sentence` output) -> [B, E] float32."""
        pooled = x if precomputed else self.sentence(x, mask)
        return F.normalize(self.text_proj(pooled).float(), dim=-1)
