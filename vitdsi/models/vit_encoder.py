"""The Vision Transformer encoder shared by the ViT-DSI and its label-matched baselines.

Follows "An Image is Worth 16x16 Words" (Dosovitskiy et al. 2021) as the ViT-DSI paper
(Di Stefano, section 3.2) uses it; docs/design.md, "The DSI model and its training".
Shapes: B images, P patches, D model width.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitdsi.errors import VitDSIError
from vitdsi.models.dropout import Dropout, dropout


@dataclass
class VitEncoderConfig:
    image_size: int = 32  # square input side in pixels
    channels: int = 3  # input channels (RGB)
    patch_size: int = 16  # square patch side; must divide image_size (paper: 16 at 160 px)
    dim: int = 128  # model width (paper 128)
    ff_dim: int = 256  # hidden width of the feed-forward blocks (paper 256)
    depth: int = 6  # encoder layers (paper 6)
    heads: int = 4  # attention heads; must divide dim (paper 4)
    dropout: float = 0.1  # dropout in attention, feed-forward and embeddings (paper 0.1)
    pos_encoding: str = "sinusoidal"  # 'sinusoidal' (fixed, 2-D for patches) or 'learned'
    # 'vit': this ViT, trained from scratch (the paper's); or a borrowed pretrained CNN whose feature
    # map is the token sequence: 'efficientnet-lite0' | 'torchvision:NAME' (local weights)
    encoder: str = "vit"
    # borrowed encoder only: True = frozen, False = all of it trained, N = its last N blocks trained
    freeze_encoder: bool | int = True
    # borrowed encoder only: input side in px images are resized to; 0 = the size its weights were
    # trained at (224 for EfficientNet-Lite0); smaller is much cheaper on a CPU
    encoder_size: int = 0
    # borrowed encoder with freeze_encoder true only: average the fixed network's feature map to one
    # token before the projection, so a cached image costs C floats instead of C x cells
    encoder_pool: bool = False

    def __post_init__(self) -> None:
        check_encoder_fields(self)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid**2

    def to_dict(self) -> dict:
        return asdict(self)


ENCODER_FIELDS = tuple(VitEncoderConfig.__dataclass_fields__)  # the fields any encoder-holding config carries


def check_encoder_fields(cfg) -> None:
    """Validate the encoder fields of any config carrying them (VitEncoderConfig, VitDSIConfig)."""
    check_borrowed_fields(cfg.encoder, cfg.freeze_encoder, cfg.encoder_size, cfg.encoder_pool)
    if cfg.encoder == "vit":
        check_patch_size(cfg.patch_size, cfg.image_size)
    if cfg.dim % cfg.heads:
        raise VitDSIError(f"heads {cfg.heads} must divide dim {cfg.dim}")
    if cfg.pos_encoding not in ("sinusoidal", "learned"):
        raise VitDSIError(f"pos_encoding must be 'sinusoidal' or 'learned', got '{cfg.pos_encoding}'")
    if cfg.pos_encoding == "sinusoidal" and cfg.dim % 4:
        raise VitDSIError(f"2-D sinusoidal positions need dim divisible by 4, got {cfg.dim}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise VitDSIError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.depth < 1:
        raise VitDSIError(f"depth must be at least 1, got {cfg.depth}")


def check_borrowed_fields(
    encoder: str, freeze_encoder, encoder_size: int, encoder_pool: bool = False
) -> None:
    """Clear errors for `encoder` / `freeze_encoder` / `encoder_size` / `encoder_pool` values no
    image could fix."""
    if not isinstance(encoder, str) or not (
        encoder in ("vit", "efficientnet-lite0") or (encoder.startswith("torchvision:") and len(encoder) > 12)
    ):
        raise VitDSIError(
            f"encoder must be 'vit', 'efficientnet-lite0' or 'torchvision:NAME' (e.g. torchvision:resnet18), "
            f"got '{encoder}'"
        )
    if not isinstance(freeze_encoder, (bool, int)) or (
        not isinstance(freeze_encoder, bool) and freeze_encoder < 0
    ):
        raise VitDSIError(
            "freeze_encoder must be true (frozen), false (all trained) or a number >= 0 of trained last "
            f"blocks, got {freeze_encoder!r}"
        )
    if encoder_size < 0 or 0 < encoder_size < 32:
        raise VitDSIError(f"encoder_size must be 0 (the encoder's own) or at least 32 px, got {encoder_size}")
    if encoder_pool and (encoder == "vit" or freeze_encoder is not True):
        raise VitDSIError(
            "encoder_pool pools a fixed borrowed encoder's feature map to one token, so it needs a "
            f"borrowed encoder with freeze_encoder true, got encoder '{encoder}', freeze_encoder "
            f"{freeze_encoder!r}"
        )


def check_patch_size(patch_size: int, image_size: int) -> None:
    """The rule of ViT patches (every ViT config and retriever checks it here): square patches of
    `patch_size` tile an image of `image_size` pixels."""
    if patch_size < 1:
        raise VitDSIError(f"patch_size must be >= 1, got {patch_size}")
    if image_size % patch_size:
        divisors = [d for d in range(1, image_size + 1) if image_size % d == 0]
        raise VitDSIError(
            f"patch_size {patch_size} does not divide the image size {image_size}; "
            f"choose a divisor of {image_size} ({', '.join(map(str, divisors))}) or change dataset.size"
        )


def init_weights(m: nn.Module) -> None:
    """ViT / nanoGPT initialisation: truncated normal (std 0.02) weights, zero biases."""
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


# ---- position encodings ---------------------------------------------------------------
def sinusoid_1d(n: int, dim: int) -> torch.Tensor:
    """[n, dim] fixed encoding of positions 0..n-1 (Vaswani et al. 2017)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


def sinusoid_2d(grid: int, dim: int) -> torch.Tensor:
    """[grid*grid, dim]: half the channels encode the patch row, half the column (row-major)."""
    rows = sinusoid_1d(grid, dim // 2)  # [grid, dim/2]
    return torch.cat(
        [rows[:, None, :].expand(grid, grid, -1), rows[None, :, :].expand(grid, grid, -1)], dim=-1
    ).reshape(grid * grid, dim)


# ---- building blocks (also used by the ViT-DSI decoder) -------------------------------
def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    causal: bool = False,
    fused: bool | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention of q [N, h, Tq, d] over k, v [N, h, Tk, d]; `attn_mask` is
    bool (True = attend) and broadcasts to [N, h, Tq, Tk]; `causal` masks key j > query i (the
    top-left alignment of F.scaled_dot_product_attention); `dropout_p` drops attention weights.

    `fused` None: F.scaled_dot_product_attention, except on the CPU under bf16 autocast or with
    dropout, where attention is written out (scores, softmax, `dropout`, weighted sum). There the
    fused op trains 1.5x (dropout 0.1) to 6x (no dropout) slower in bf16, and with dropout it
    falls back to an unfused path that draws its mask with `bernoulli_` (64 and 100 patches,
    one thread; scripts/bench_training.py). In float32 without dropout the two are level."""
    if fused is None:
        fused = not (
            q.device.type == "cpu"
            and (
                dropout_p > 0.0
                or (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
            )
        )
    if fused:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=causal
        )
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # [N, h, Tq, Tk]
    if causal:
        scores = scores.masked_fill(
            torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1), float("-inf")
        )
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return dropout(torch.softmax(scores, dim=-1), dropout_p) @ v


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None."""

    def __init__(self, cfg, cross: bool = False) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.cross = cross
        if cross:
            self.q = nn.Linear(cfg.dim, cfg.dim)
            self.kv = nn.Linear(cfg.dim, 2 * cfg.dim)
        else:
            self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.dropout = cfg.dropout
        self.resid_drop = Dropout(cfg.dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [N, T, D] -> [N, h, T, D/h]
        n, t, d = x.shape
        return x.view(n, t, self.heads, d // self.heads).transpose(1, 2)

    def context_kv(self, context: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Keys and values of the context (patches, or caption tokens), computed once per query and
        reused at every decoding step; with `mask` (bool [N, L], True = a real token) also the
        attention mask that keeps padding out."""
        k, v = self.kv(context).chunk(2, dim=-1)
        if mask is None:
            return self._split(k), self._split(v)
        return self._split(k), self._split(v), mask[:, None, None, :].bool()

    def forward(self, x: torch.Tensor, causal: bool = False, kv: tuple | None = None) -> torch.Tensor:
        n, t, d = x.shape
        drop = self.dropout if self.training else 0.0
        attn_mask = None
        if self.cross:
            q = self._split(self.q(x))
            k, v, *masks = kv
            attn_mask = masks[0] if masks else None
        else:
            q, k, v = (self._split(z) for z in self.qkv(x).chunk(3, dim=-1))
        y = attend(q, k, v, attn_mask, drop, causal)
        y = y.transpose(1, 2).reshape(n, t, d)
        return self.resid_drop(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ff_dim), nn.GELU(), nn.Linear(cfg.ff_dim, cfg.dim), Dropout(cfg.dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: self-attention, feed-forward."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.dim), Attention(cfg)
        self.ln2, self.ff = nn.LayerNorm(cfg.dim), FeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


# ---- the encoder ----------------------------------------------------------------------
class VitEncoder(nn.Module):
    """Images -> patch encodings [B, P, D]; `pool` / `embed` give one vector per image."""

    def __init__(self, cfg) -> None:
        """`cfg`: a VitEncoderConfig or any config with its fields (e.g. VitDSIConfig)."""
        super().__init__()
        check_encoder_fields(cfg)
        d = cfg.dim
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.patch_norm = nn.LayerNorm(d)
        if cfg.pos_encoding == "learned":
            self.patch_pos = nn.Parameter(torch.randn(grid * grid, d) * 0.02)  # [P, D]
        else:
            self.register_buffer("patch_pos", sinusoid_2d(grid, d), persistent=False)  # [P, D]
        self.embed_drop = Dropout(cfg.dropout)
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.depth)])
        self.enc_norm = nn.LayerNorm(d)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """float images [B, C, H, W] (normalised, see `vitdsi.training.augment.to_input`) -> [B, P, D]."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, P, D], patches row-major
        x = self.embed_drop(self.patch_norm(x) + self.patch_pos)
        for layer in self.layers:
            x = layer(x)
        return self.enc_norm(x)

    @staticmethod
    def pool(memory: torch.Tensor) -> torch.Tensor:
        """Patch encodings [B, P, D] -> image embedding [B, D] (mean over patches)."""
        return memory.mean(1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """float images [B, C, H, W] -> pooled embedding [B, D]."""
        return self.pool(self(images))

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """Weights that random initialisation must not overwrite: none, it is trained from scratch."""
        return {}


def encoder_config(cfg) -> VitEncoderConfig:
    """The VitEncoderConfig of any config carrying the encoder fields."""
    return VitEncoderConfig(**{f: getattr(cfg, f) for f in ENCODER_FIELDS})
