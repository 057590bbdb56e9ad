"""The ViT-DSI model: a Vision Transformer encoder and an id decoder, in one module.

Follows "Vision Transformer Memory as a Differentiable Search Index for Image Retrieval"
(Di Stefano, section 3.2) and "Transformer Memory as a Differentiable Search Index"
(Tay et al. 2022): an image is cut into patches (a conv with stride = patch size), given
a position encoding per patch (2-D sinusoidal or learned: the seed code's broadcast gave
every patch the same one), and encoded; a decoder with causal self-attention and
cross-attention to the patches generates the digits of an image id, one per step, over a
vocabulary of digits 0-9 plus EOS and PAD (BOS is an input-only token).

The `atomic` variant (Tay et al.'s unstructured atomic ids) replaces the decoder by a
softmax head over the corpus on the mean-pooled encoding: one step per query.

Shapes: B queries, W hypotheses per query (beams; 1 in training), T id tokens,
P patches, D model width.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitdsi.errors import VitDSIError

N_DIGITS = 10
EOS = 10  # end of sequence: predicted after the last digit
PAD = 11  # padding: never a target (ignored in the loss), never generated
BOS = 12  # beginning of sequence: decoder input only
N_OUT = 12  # head outputs: digits, EOS, PAD
N_IN = 13  # decoder input tokens: digits, EOS, PAD, BOS


@dataclass
class VitDSIConfig:
    image_size: int = 32  # square input side in pixels
    channels: int = 3  # input channels (RGB)
    patch_size: int = 4  # square patch side; must divide image_size (paper: 16 at 160 px)
    dim: int = 128  # model width (paper 128)
    ff_dim: int = 256  # hidden width of the feed-forward blocks (paper 256)
    depth: int = 6  # encoder layers (paper 6)
    decoder_depth: int | None = None  # decoder layers; None = same as depth
    heads: int = 4  # attention heads; must divide dim (paper 4)
    dropout: float = 0.1  # dropout in attention, feed-forward and embeddings (paper 0.1)
    pos_encoding: str = "sinusoidal"  # 'sinusoidal' (fixed, 2-D for patches) or 'learned'
    id_length: int = 3  # digits per id (fixed length); the decoder sees BOS + id_length tokens
    atomic: bool = False  # True: encoder + softmax head over n_ids images, no decoder
    n_ids: int = 0  # corpus size, the atomic head's width (atomic only)
    image_bos: bool = True  # add a projection of the mean-pooled encoding to the BOS embedding

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise VitDSIError(
                f"patch_size {self.patch_size} does not divide image_size {self.image_size}; pick a divisor of "
                f"{self.image_size} (e.g. {', '.join(str(p) for p in _divisors(self.image_size))})"
            )
        if self.dim % self.heads:
            raise VitDSIError(f"heads {self.heads} must divide dim {self.dim}")
        if self.pos_encoding not in ("sinusoidal", "learned"):
            raise VitDSIError(f"pos_encoding must be 'sinusoidal' or 'learned', got '{self.pos_encoding}'")
        if self.pos_encoding == "sinusoidal" and self.dim % 4:
            raise VitDSIError(f"2-D sinusoidal positions need dim divisible by 4, got {self.dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise VitDSIError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.atomic and self.n_ids < 1:
            raise VitDSIError("an atomic model needs n_ids >= 1 (the corpus size)")
        if self.depth < 1 or (self.decoder_depth is not None and self.decoder_depth < 1):
            raise VitDSIError("depth and decoder_depth must be at least 1")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid**2

    def to_dict(self) -> dict:
        return asdict(self)


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0][:6]


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


# ---- building blocks ------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None."""

    def __init__(self, cfg: VitDSIConfig, cross: bool = False) -> None:
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
        self.resid_drop = nn.Dropout(cfg.dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [N, T, D] -> [N, h, T, D/h]
        n, t, d = x.shape
        return x.view(n, t, self.heads, d // self.heads).transpose(1, 2)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the patches, computed once per query and reused at every decoding step."""
        k, v = self.kv(context).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, causal: bool = False, kv: tuple | None = None) -> torch.Tensor:
        n, t, d = x.shape
        drop = self.dropout if self.training else 0.0
        if self.cross:
            q = self._split(self.q(x))
            k, v = kv
        else:
            q, k, v = (self._split(z) for z in self.qkv(x).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=causal)
        y = y.transpose(1, 2).reshape(n, t, d)
        return self.resid_drop(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, cfg: VitDSIConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ff_dim), nn.GELU(), nn.Linear(cfg.ff_dim, cfg.dim), nn.Dropout(cfg.dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: self-attention, feed-forward."""

    def __init__(self, cfg: VitDSIConfig) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.dim), Attention(cfg)
        self.ln2, self.ff = nn.LayerNorm(cfg.dim), FeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class DecoderLayer(nn.Module):
    """Pre-norm layer: causal self-attention over id tokens, cross-attention to patches, feed-forward."""

    def __init__(self, cfg: VitDSIConfig) -> None:
        super().__init__()
        self.ln1, self.self_attn = nn.LayerNorm(cfg.dim), Attention(cfg)
        self.ln2, self.cross_attn = nn.LayerNorm(cfg.dim), Attention(cfg, cross=True)
        self.ln3, self.ff = nn.LayerNorm(cfg.dim), FeedForward(cfg)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, w, t, d = x.shape
        # self-attention within each hypothesis: [B*W, T, D]
        x = x + self.self_attn(self.ln1(x).reshape(b * w, t, d), causal=True).view(b, w, t, d)
        # cross-attention has no mask, so all hypotheses of a query share one call: [B, W*T, D]
        x = x + self.cross_attn(self.ln2(x).reshape(b, w * t, d), kv=kv).view(b, w, t, d)
        return x + self.ff(self.ln3(x))


# ---- the model ------------------------------------------------------------------------
class VitDSI(nn.Module):
    """Image -> id tokens (seq2seq) or image -> corpus position (atomic)."""

    def __init__(self, cfg: VitDSIConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embed = nn.Conv2d(cfg.channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.patch_norm = nn.LayerNorm(d)
        if cfg.pos_encoding == "learned":
            self.patch_pos = nn.Parameter(torch.randn(cfg.n_patches, d) * 0.02)
        else:
            self.register_buffer("patch_pos", sinusoid_2d(cfg.grid, d), persistent=False)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.depth)])
        self.enc_norm = nn.LayerNorm(d)
        if cfg.atomic:
            self.head = nn.Linear(d, cfg.n_ids)
        else:
            n_tok = cfg.id_length + 1  # BOS + digits as input, digits + EOS as targets
            self.tok_embed = nn.Embedding(N_IN, d)
            if cfg.pos_encoding == "learned":
                self.tok_pos = nn.Parameter(torch.randn(n_tok, d) * 0.02)
            else:
                self.register_buffer("tok_pos", sinusoid_1d(n_tok, d), persistent=False)
            self.bos_proj = nn.Linear(d, d) if cfg.image_bos else None
            self.decoder = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.decoder_depth or cfg.depth)])
            self.dec_norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, N_OUT)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- encoder ----
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """float images [B, C, H, W] (normalised) -> patch encodings [B, P, D]."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, P, D], patches row-major
        x = self.embed_drop(self.patch_norm(x) + self.patch_pos)
        for layer in self.encoder:
            x = layer(x)
        return self.enc_norm(x)

    def atomic_logits(self, memory: torch.Tensor) -> torch.Tensor:
        """[B, P, D] -> [B, n_ids] scores over corpus positions (atomic variant)."""
        return self.head(memory.mean(1))

    # ---- decoder ----
    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per decoder layer, cross-attention keys/values of the patches (reused across steps)."""
        return [layer.cross_attn.context_kv(memory) for layer in self.decoder]

    def decode(
        self, tokens: torch.Tensor, memory: torch.Tensor, kv: list | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """tokens [B, W, T] (BOS first) and memory [B, P, D] -> logits [B, W, T, N_OUT]
        (or [B, W, N_OUT] for the last position when `last_only`)."""
        b, w, t = tokens.shape
        x = self.tok_embed(tokens) + self.tok_pos[:t]  # [B, W, T, D]
        if self.bos_proj is not None:
            # the BOS slot also carries the pooled image: a direct path for the first digit
            pooled = self.bos_proj(memory.mean(1))[:, None, None, :]  # [B, 1, 1, D]
            x = torch.cat([x[:, :, :1] + pooled, x[:, :, 1:]], dim=2)
        x = self.embed_drop(x)
        kv = kv if kv is not None else self.memory_kv(memory)
        for layer, layer_kv in zip(self.decoder, kv):
            x = layer(x, layer_kv)
        if last_only:
            x = x[:, :, -1]
        return self.head(self.dec_norm(x))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits: atomic [B, n_ids]; seq2seq [B, T, N_OUT] for input tokens [B, T]."""
        memory = self.encode(images)
        if self.cfg.atomic:
            return self.atomic_logits(memory)
        return self.decode(tokens[:, None, :], memory)[:, 0]


def id_inputs_targets(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits [B, L] -> decoder inputs [B, L+1] (BOS, d1..dL) and targets [B, L+1] (d1..dL, EOS)."""
    b = codes.shape[0]
    bos = torch.full((b, 1), BOS, dtype=codes.dtype, device=codes.device)
    eos = torch.full((b, 1), EOS, dtype=codes.dtype, device=codes.device)
    return torch.cat([bos, codes], 1), torch.cat([codes, eos], 1)


def sequence_logprob(model: VitDSI, images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Teacher-forced log P(id | image) for every (image, id) pair: images [B, C, H, W] and
    codes [M, L] -> [B, M]. The reference that beam search must reproduce."""
    memory = model.encode(images)
    if model.cfg.atomic:
        return F.log_softmax(model.atomic_logits(memory).float(), -1)[:, codes[:, 0]]
    inputs, targets = id_inputs_targets(codes)
    b, m = memory.shape[0], codes.shape[0]
    logits = model.decode(inputs[None].expand(b, m, -1), memory)  # [B, M, L+1, V]
    logp = F.log_softmax(logits.float(), -1)
    return logp.gather(-1, targets[None, :, :, None].expand(b, m, -1, 1))[..., 0].sum(-1)
