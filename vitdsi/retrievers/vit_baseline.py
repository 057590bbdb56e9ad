"""What the label-matched baselines of the ViT-DSI (`classifier`, `dual-encoder`) share.

Under class-identity relevance a method that learns from labels is rewarded for
classifying, so the DSI is compared with baselines that learn from the same signal with
the same encoder (`vitdsi.models.vit_encoder.VitEncoder`). This base class holds the
encoder and training build parameters under dsi-vit's names and meanings (patch_size,
dim, ff_dim, depth, heads, dropout, pos_encoding, lr, batch_size, weight_decay, augment)
plus `epochs` and `use_queries`, validates them, and provides the pieces both retrievers
use: the training images (corpus and train queries, on the device as uint8, gathered by
index), augmentation from one seeded generator, the epoch loop (`vitdsi.train_loop`),
batched inference, and the `history` / `on_epoch` the harness reads, as in `dsi-vit`.
It is not registered itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from vitdsi.errors import VitDSIError
from vitdsi.retrievers.base import Retriever

SEARCH_BATCH = 256  # images encoded together at index and query time


class VitBaseline(Retriever):
    """A ViT encoder with a retrieval head other than the DSI's id decoder (abstract)."""

    reports_epochs = True

    def __init__(
        self,
        *,
        patch_size: int,
        dim: int,
        ff_dim: int,
        depth: int,
        heads: int,
        dropout: float,
        pos_encoding: str,
        epochs: int,
        lr: float,
        batch_size: int,
        weight_decay: float,
        augment: bool,
        use_queries: bool,
        seed: int,
        device: str | None,
    ) -> None:
        super().__init__(seed=seed, device=device)
        self.patch_size = int(patch_size)  # side of a square patch; must divide the corpus image size
        self.dim = int(dim)  # model width
        self.ff_dim = int(ff_dim)  # feed-forward hidden width
        self.depth = int(depth)  # encoder layers
        self.heads = int(heads)  # attention heads
        self.dropout = float(dropout)  # dropout rate in every block
        self.pos_encoding = str(pos_encoding)  # 'sinusoidal' or 'learned'
        self.epochs = int(epochs)  # training epochs (0 = the randomly initialised encoder)
        self.lr = float(lr)  # peak AdamW learning rate (warm-up, then cosine decay)
        self.batch_size = int(batch_size)  # training batch size
        self.weight_decay = float(weight_decay)  # AdamW weight decay
        self.augment = bool(augment)  # random shifts and left-right flips of training images
        self.use_queries = bool(use_queries)  # also learn from the train queries given to index()
        self._check_params()
        self.history: list[dict[str, Any]] = []  # per-epoch training log (dicts), as in dsi-vit
        self._model: torch.nn.Module | None = None

    # ---- parameters -------------------------------------------------------------------
    def _check_params(self) -> None:
        name = self.name or type(self).__name__
        if self.patch_size < 1:
            raise VitDSIError(f"{name}: patch_size must be >= 1, got {self.patch_size}")
        if self.heads < 1 or self.dim % self.heads:
            raise VitDSIError(f"{name}: heads ({self.heads}) must divide dim ({self.dim})")
        if self.pos_encoding not in ("sinusoidal", "learned"):
            raise VitDSIError(f"{name}: pos_encoding must be 'sinusoidal' or 'learned', got '{self.pos_encoding}'")
        if self.pos_encoding == "sinusoidal" and self.dim % 4:
            raise VitDSIError(f"{name}: 2-D sinusoidal positions need dim divisible by 4, got dim={self.dim}")
        if self.depth < 1 or self.ff_dim < 1:
            raise VitDSIError(f"{name}: depth and ff_dim must be >= 1, got depth={self.depth}, ff_dim={self.ff_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise VitDSIError(f"{name}: dropout must be in [0, 1), got {self.dropout}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise VitDSIError(
                f"{name}: need epochs >= 0, batch_size >= 1 and lr > 0, got epochs={self.epochs}, "
                f"batch_size={self.batch_size}, lr={self.lr}"
            )

    def check_image_size(self, image_size: int) -> None:
        """The patches must tile the image (called by `index` and by study checks before any trial)."""
        check_patch_size(self.name, self.patch_size, image_size)

    def _encoder_config(self, image_size: int):
        """The VitEncoderConfig for `image_size` px images."""
        from vitdsi.models.vit_encoder import VitEncoderConfig

        self.check_image_size(image_size)
        return VitEncoderConfig(
            image_size=image_size, channels=3, patch_size=self.patch_size, dim=self.dim, ff_dim=self.ff_dim,
            depth=self.depth, heads=self.heads, dropout=self.dropout, pos_encoding=self.pos_encoding,
        )

    # ---- training ---------------------------------------------------------------------
    def _train(self, phase: str, batches: Callable[[], list[Any]], step, steps_per_epoch: int) -> None:
        """Run the epoch loop on `self._model`; fills `self.history`."""
        from vitdsi.train_loop import LoopConfig, train_epochs

        cfg = LoopConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay)
        self.history = train_epochs(
            self._model, cfg, phase, batches, step, steps_per_epoch=steps_per_epoch, device=self.device,
            callback=self.on_epoch,
        )

    def _train_input(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """uint8 training images -> model input, randomly shifted (up to size/16 px) and
        mirrored when `augment` is on (as dsi-vit's augmentation)."""
        from vitdsi.train import random_flip, random_shift, to_input

        x = to_input(images)
        if self.augment and len(x):
            x = random_flip(random_shift(x, gen, max(1, x.shape[-1] // 16)), gen)
        return x

    # ---- inference --------------------------------------------------------------------
    def _batched(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """Model inputs of uint8 images, SEARCH_BATCH at a time, on the device."""
        from vitdsi.train import to_input

        for s in range(0, images.shape[0], SEARCH_BATCH):
            yield to_input(images[s : s + SEARCH_BATCH].to(self.device))

    # ---- extras for the harness -------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module | None:
        """The trained model (None before indexing)."""
        return self._model


def gather_rows(parts: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """Rows `index` of the concatenation of `parts` without building it: one masked copy per
    part (corpus, then train queries), no per-image loop."""
    if len(parts) == 1:
        return parts[0][index]
    out = torch.empty((len(index), *parts[0].shape[1:]), dtype=parts[0].dtype, device=parts[0].device)
    start = 0
    for part in parts:
        mask = (index >= start) & (index < start + len(part))
        out[mask] = part[index[mask] - start]
        start += len(part)
    return out


def check_patch_size(owner: str, patch_size: int, image_size: int) -> None:
    """A clear error when square patches of `patch_size` do not tile `image_size` (every ViT retriever)."""
    if image_size % patch_size:
        divisors = [d for d in range(1, image_size + 1) if image_size % d == 0]
        raise VitDSIError(
            f"{owner}: patch_size {patch_size} does not divide the image size {image_size}; "
            f"choose a divisor of {image_size} ({', '.join(map(str, divisors))}) or change dataset.size"
        )
