"""A borrowed pretrained encoder for the ViT-DSI and its label-matched baselines.

Instead of a ViT trained from scratch, a pretrained CNN reads the image, and its last spatial
feature map, one token per cell, projected to the decoder width and given a 2-D position
encoding, is what the id decoder cross-attends to. Images are resized and
normalised as the CNN's weights were trained (or to `encoder_size`, cheaper on a CPU).
`freeze_encoder` keeps all of it (True), none of it (False) or all but its last N blocks fixed;
the fixed part runs in eval mode without gradients, so its output for an image never changes and a
trainer may compute it once (`precompute`, then `forward(..., precomputed=True)`) instead of every
epoch. `encoder_pool` (with the whole network fixed) averages that output over the cells, so the
decoder reads one token and a cached image costs C floats (1,280 for EfficientNet-Lite0), not C x cells.

`make_encoder` picks the encoder a config names (`vit` or a borrowed one). Shapes: B images,
P tokens (cells of the feature map), D model width.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitdsi.features.feature_blocks import load_feature_blocks
from vitdsi.models.dropout import Dropout
from vitdsi.models.vit_encoder import VitEncoder, sinusoid_2d


def trained_blocks(freeze_encoder: bool | int, n_blocks: int) -> int:
    """How many of the last blocks train: True -> 0, False -> all, N -> min(N, all)."""
    if isinstance(freeze_encoder, bool):
        return 0 if freeze_encoder else n_blocks
    return min(int(freeze_encoder), n_blocks)


class BorrowedEncoder(nn.Module):
    """Images -> feature-map tokens [B, P, D] of a pretrained CNN; `pool` / `embed` as VitEncoder."""

    def __init__(self, cfg) -> None:
        """`cfg`: any config with the encoder fields (VitEncoderConfig, VitDSIConfig)."""
        super().__init__()
        spec = load_feature_blocks(cfg.encoder)
        n_trained = trained_blocks(cfg.freeze_encoder, len(spec.blocks))
        cut = len(spec.blocks) - n_trained
        self.input_size = cfg.encoder_size or spec.input_size
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.frozen = nn.Sequential(*spec.blocks[:cut])  # fixed weights, eval mode, no gradients
        self.tuned = nn.Sequential(*spec.blocks[cut:])  # trained with the rest of the model
        self.frozen.requires_grad_(False)
        self.frozen.eval()
        # channels-last convolutions: about 1.5x the NCHW images/s of the fixed part on a CPU
        # (oneDNN), the same numbers to float rounding
        self.frozen.to(memory_format=torch.channels_last)
        self.pooled = bool(getattr(cfg, "encoder_pool", False))  # the fixed output averaged to one cell
        with torch.no_grad():
            probe = self.tuned.eval()(self._fixed(torch.zeros(1, 3, self.input_size, self.input_size)))
        channels, grid = probe.shape[1], probe.shape[-1]
        self.proj = nn.Linear(channels, cfg.dim)  # feature-map channels -> decoder width
        self.norm = nn.LayerNorm(cfg.dim)
        self.register_buffer("pos", sinusoid_2d(grid, cfg.dim), persistent=False)  # [P, D]
        self.embed_drop = Dropout(cfg.dropout)
        self.n_blocks, self.n_trained = len(spec.blocks), n_trained
        self.encoder_name = cfg.encoder

    @property
    def cacheable(self) -> bool:
        """True when part of the network is fixed, so its output per image can be computed once."""
        return len(self.frozen) > 0

    def cache_spec(self) -> tuple[str, str]:
        """(encoder, preprocessing) as a feature cache keys the fixed part's output: the encoder's
        name, how many blocks are fixed and a hash of their weights; the input size and
        normalisation (vitdsi.features.feature_cache)."""
        h = hashlib.blake2b(digest_size=8)
        for name, tensor in sorted(self.frozen.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        encoder = (
            f"{self.encoder_name} fixed blocks[:{len(self.frozen)}] of {self.n_blocks}, "
            f"weights {h.hexdigest()}" + (", feature map average-pooled to one cell" if self.pooled else "")
        )
        preprocessing = (
            f"[-1, 1] -> [0, 1], bilinear antialiased resize to {self.input_size} px, "
            f"mean {self.mean.flatten().tolist()}, std {self.std.flatten().tolist()}; channels-last"
        )
        return encoder, preprocessing

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """The borrowed weights (and batch-norm statistics), which initialisation must not overwrite."""
        return {
            k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith(("frozen.", "tuned."))
        }

    def train(self, mode: bool = True) -> BorrowedEncoder:
        super().train(mode)
        self.frozen.eval()  # fixed batch-norm statistics and no drop-connect, whatever the model's mode
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Model input in [-1, 1] (`vitdsi.training.augment.to_input`) -> the CNN's input: resized,
        normalised."""
        x = (images.float() + 1.0) * 0.5
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return (x - self.mean) / self.std

    def precompute(self, images: torch.Tensor) -> torch.Tensor:
        """Model input [B, 3, H, W] -> the fixed part's output, which `forward(..., precomputed=True)`
        takes."""
        with torch.no_grad():
            return self._fixed(self.preprocess(images))

    def _fixed(self, x: torch.Tensor) -> torch.Tensor:
        """The CNN's input -> the fixed part's feature map [B, C, h, w] ([B, C, 1, 1] when pooled)."""
        fmap = self.frozen(x.contiguous(memory_format=torch.channels_last))
        return fmap.mean(dim=(2, 3), keepdim=True) if self.pooled else fmap.contiguous()

    def forward(self, images: torch.Tensor, precomputed: bool = False) -> torch.Tensor:
        """Model input [B, 3, H, W] (or `precompute`'s output) -> tokens [B, P, D]."""
        x = images if precomputed else self.precompute(images)
        fmap = self.tuned(x)  # [B, C, h, w]
        tokens = fmap.flatten(2).transpose(1, 2)  # [B, P, C], cells row-major
        return self.embed_drop(self.norm(self.proj(tokens)) + self.pos)

    pool = staticmethod(VitEncoder.pool)

    def embed(self, images: torch.Tensor, precomputed: bool = False) -> torch.Tensor:
        """Model input -> pooled embedding [B, D]."""
        return self.pool(self(images, precomputed))


def make_encoder(cfg) -> nn.Module:
    """The encoder `cfg.encoder` names: this project's ViT, or a borrowed pretrained CNN."""
    return VitEncoder(cfg) if cfg.encoder == "vit" else BorrowedEncoder(cfg)


def init_model(model: nn.Module, init) -> None:
    """Initialise `model` with `init` (applied to every module) but keep its encoder's borrowed weights."""
    keep = model.encoder.pretrained_state()
    model.apply(init)
    if keep:
        model.encoder.load_state_dict(keep, strict=False)
