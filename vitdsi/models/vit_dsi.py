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

The encoder (patches, positions, encoder layers) is `vitdsi.models.vit_encoder.VitEncoder`,
shared with the label-matched baselines (`classifier`, `dual-encoder`), or a borrowed
pretrained CNN (`vitdsi.models.borrowed_encoder`) when `encoder` names one.

Shapes: B queries, W hypotheses per query (beams; 1 in training), T id tokens,
P patches, D model width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitdsi.errors import VitDSIError
from vitdsi.models.borrowed_encoder import init_model, make_encoder
from vitdsi.models.dropout import Dropout
from vitdsi.models.vit_encoder import (  # noqa: F401  (sinusoid_2d, EncoderLayer: re-exported)
    Attention,
    EncoderLayer,
    FeedForward,
    VitEncoder,
    VitEncoderConfig,
    check_encoder_fields,
    encoder_config,
    init_weights,
    sinusoid_1d,
    sinusoid_2d,
)

N_DIGITS = 10
EOS = 10  # end of sequence: predicted after the last digit
PAD = 11  # padding: never a target (ignored in the loss), never generated
BOS = 12  # beginning of sequence: decoder input only
N_OUT = 12  # head outputs: digits, EOS, PAD
N_IN = 13  # decoder input tokens: digits, EOS, PAD, BOS


@dataclass
class VitDSIConfig(VitEncoderConfig):
    """The encoder's fields (VitEncoderConfig: image_size, channels, patch_size, dim, ff_dim,
    depth, heads, dropout, pos_encoding, declared once there) plus the id decoder's."""

    decoder_depth: int | None = None  # decoder layers; None = same as depth
    id_length: int = 3  # digits per id (fixed length); the decoder sees BOS + id_length tokens
    atomic: bool = False  # True: encoder + softmax head over n_ids images, no decoder
    n_ids: int = 0  # corpus size, the atomic head's width (atomic only)
    image_bos: bool = True  # add a projection of the mean-pooled encoding to the BOS embedding

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.atomic and self.n_ids < 1:
            raise VitDSIError("an atomic model needs n_ids >= 1 (the corpus size)")
        if self.depth < 1 or (self.decoder_depth is not None and self.decoder_depth < 1):
            raise VitDSIError("depth and decoder_depth must be at least 1")

    def encoder_config(self) -> VitEncoderConfig:
        """The encoder's part of this config."""
        return encoder_config(self)


# ---- the decoder layer (Attention, FeedForward: vit_encoder) ---------------------------
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
        # the ViT (patches + positions + encoder layers) or a borrowed CNN: [B, C, H, W] -> [B, P, D]
        self.encoder = make_encoder(cfg)
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
            self.tok_drop = Dropout(cfg.dropout)
            self.decoder = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.decoder_depth or cfg.depth)])
            self.dec_norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, N_OUT)
        init_model(self, init_weights)  # after all parts are built: the same random stream as ever
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- encoder ----
    @property
    def patch_pos(self) -> torch.Tensor:
        """[P, D] the encoder's patch position encoding."""
        return self.encoder.patch_pos

    def encode(self, images: torch.Tensor, precomputed: bool = False) -> torch.Tensor:
        """float images [B, C, H, W] (normalised; or a borrowed encoder's `precompute` output)
        -> patch encodings [B, P, D]."""
        return self.encoder(images, precomputed=True) if precomputed else self.encoder(images)

    def atomic_logits(self, memory: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, P, D] -> [B, n_ids] scores over corpus positions (atomic variant); `mask` (bool [B, P],
        True = a real token) leaves padding out of the pooling (caption memories)."""
        return self.head(self.encoder.pool(memory) if mask is None else masked_mean(memory, mask))

    # ---- decoder ----
    def memory_kv(
        self, memory: torch.Tensor, mask: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, ...]]:
        """Per decoder layer, cross-attention keys/values of the memory (reused across steps)."""
        return [layer.cross_attn.context_kv(memory, mask) for layer in self.decoder]

    def decode(
        self,
        tokens: torch.Tensor,
        memory: torch.Tensor,
        kv: list | None = None,
        last_only: bool = False,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens [B, W, T] (BOS first) and memory [B, P, D] -> logits [B, W, T, N_OUT]
        (or [B, W, N_OUT] for the last position when `last_only`). `mask` (bool [B, P], True = a
        real token): a memory with padding, such as caption tokens (`kv` must then carry it too)."""
        b, w, t = tokens.shape
        x = self.tok_embed(tokens) + self.tok_pos[:t]  # [B, W, T, D]
        if self.bos_proj is not None:
            # the BOS slot also carries the pooled memory: a direct path for the first digit
            pooled = self.bos_proj(memory.mean(1) if mask is None else masked_mean(memory, mask))[
                :, None, None, :
            ]
            x = torch.cat([x[:, :, :1] + pooled, x[:, :, 1:]], dim=2)
        x = self.tok_drop(x)
        kv = kv if kv is not None else self.memory_kv(memory, mask)
        for layer, layer_kv in zip(self.decoder, kv):
            x = layer(x, layer_kv)
        if last_only:
            x = x[:, :, -1]
        return self.head(self.dec_norm(x))

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor | None = None, precomputed: bool = False
    ) -> torch.Tensor:
        """Teacher-forced logits: atomic [B, n_ids]; seq2seq [B, T, N_OUT] for input tokens [B, T]."""
        memory = self.encode(images, precomputed)
        if self.cfg.atomic:
            return self.atomic_logits(memory)
        return self.decode(tokens[:, None, :], memory)[:, 0]


def masked_mean(memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of memory [B, P, D] over the positions where mask [B, P] is True -> [B, D]."""
    m = mask.to(memory.dtype).unsqueeze(-1)
    return (memory * m).sum(1) / m.sum(1).clamp(min=1.0)


_LEGACY_ENCODER = ("patch_embed.", "patch_norm.", "patch_pos", "enc_norm.")


def _rename_legacy_keys(state_dict: dict, prefix: str, *args) -> None:
    """Load indexes saved before the encoder was a module of its own: `patch_embed.*`,
    `patch_norm.*`, `patch_pos`, `enc_norm.*` -> `encoder.*` and `encoder.N.*` -> `encoder.layers.N.*`."""
    for key in list(state_dict):
        rest = key[len(prefix) :] if key.startswith(prefix) else None
        if rest is None:
            continue
        if rest.startswith(_LEGACY_ENCODER):
            state_dict[f"{prefix}encoder.{rest}"] = state_dict.pop(key)
        elif rest.startswith("encoder.") and rest.split(".")[1].isdigit():
            state_dict[f"{prefix}encoder.layers.{rest[len('encoder.') :]}"] = state_dict.pop(key)


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
