"""What every retriever with a ViT-family image encoder shares (the DSIs, the classifier and the
dual encoders): the encoder's build parameters (`ENCODER_PARAMS`, declared as attributes of
`EncoderRetriever`), their checks and the image sizes they fit. Not registered itself."""

from __future__ import annotations

from typing import Any

import torch

from vitdsi.errors import VitDSIError
from vitdsi.models.vit_encoder import check_borrowed_fields, check_patch_size
from vitdsi.retrievers.base import Retriever
from vitdsi.training.cached_features import indexed_fixed_features

# the encoder fields every ViT retriever takes as build parameters (image_size comes from the data)
ENCODER_PARAMS = (
    "patch_size",
    "dim",
    "ff_dim",
    "depth",
    "heads",
    "dropout",
    "pos_encoding",
    "encoder",
    "freeze_encoder",
    "encoder_size",
    "encoder_pool",
)


class EncoderRetriever(Retriever):
    """A retriever whose image encoder is a ViT of this project or a borrowed one (abstract); its
    subclasses take `ENCODER_PARAMS` in their `config_params`."""

    patch_size: int
    dim: int
    ff_dim: int
    depth: int
    heads: int
    dropout: float
    pos_encoding: str
    encoder: str
    freeze_encoder: bool | int
    encoder_size: int
    encoder_pool: bool

    def check_image_size(self, image_size: int) -> None:
        """The patches must tile the image (called by `index` and by study checks before any trial);
        a borrowed encoder resizes images to its own input size."""
        if self.encoder == "vit":
            try:
                check_patch_size(self.patch_size, image_size)
            except VitDSIError as e:
                raise VitDSIError(f"{self.name or type(self).__name__}: {e}") from None

    def _indexed_fixed_features(self, encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor | None:
        """Within `search_indexed`, `encoder`'s fixed-part output for the indexed `images`, read from
        the feature cache; None elsewhere, or without a fixed part (the images are then encoded)."""
        return indexed_fixed_features(encoder, images, self.device) if self._indexed_inputs else None


def check_encoder_params(owner: str, r: Any) -> None:
    """Clear errors for encoder build parameters no image size could fix (every ViT retriever)."""
    try:
        check_borrowed_fields(r.encoder, r.freeze_encoder, r.encoder_size, r.encoder_pool)
    except VitDSIError as e:
        raise VitDSIError(f"{owner}: {e}") from None
    if r.patch_size < 1:
        raise VitDSIError(f"{owner}: patch_size must be >= 1, got {r.patch_size}")
    if r.heads < 1 or r.dim % r.heads:
        raise VitDSIError(f"{owner}: heads ({r.heads}) must divide dim ({r.dim})")
    if r.pos_encoding not in ("sinusoidal", "learned"):
        raise VitDSIError(f"{owner}: pos_encoding must be 'sinusoidal' or 'learned', got '{r.pos_encoding}'")
    if r.pos_encoding == "sinusoidal" and r.dim % 4:
        raise VitDSIError(f"{owner}: 2-D sinusoidal positions need dim divisible by 4, got dim={r.dim}")
    if r.depth < 1 or r.ff_dim < 1:
        raise VitDSIError(f"{owner}: depth and ff_dim must be >= 1, got depth={r.depth}, ff_dim={r.ff_dim}")
    if not 0.0 <= r.dropout < 1.0:
        raise VitDSIError(f"{owner}: dropout must be in [0, 1), got {r.dropout}")
