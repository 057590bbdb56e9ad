"""The one family of training views every trained image retriever draws from.

A training view is a random variant of a training image: a zoom-in crop resized back, a
shift, a left-right mirror and brightness / contrast jitter, each image of a batch with its
own draw, vectorised, from the trainer's seeded `torch.Generator`. The build parameter
`views` names a strength; `dsi-vit` (and `dsi-text`'s images) index, `classifier` trains and
`dual-encoder` makes its pairs from the same family, so a study that gives every method one
strength trains them at augmentation parity. The query views of the instance protocol are
another thing (`vitdsi.data.views`: what a query is, not how a method trains).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitdsi.errors import VitDSIError
from vitdsi.training.augment import random_flip, random_jitter, random_shift


@dataclass(frozen=True)
class ViewSpec:
    """What one strength draws."""

    shift: float  # largest shift in each direction, a fraction of the image side (at least 1 px when > 0)
    flip: bool  # mirror left-right with probability 1/2
    jitter: float  # brightness / contrast jitter strength (`vitdsi.training.augment.random_jitter`)
    crop: float  # smallest side a zoom-in crop keeps, a fraction of the image side (1 = no crop)


# each strength at least as strong as the one before in every part, so views drift further from the
# image from none to strong
VIEWS: dict[str, ViewSpec] = {
    "none": ViewSpec(shift=0.0, flip=False, jitter=0.0, crop=1.0),
    "light": ViewSpec(shift=1 / 16, flip=True, jitter=0.0, crop=1.0),
    "medium": ViewSpec(shift=1 / 8, flip=True, jitter=0.3, crop=1.0),
    "strong": ViewSpec(shift=1 / 8, flip=True, jitter=0.5, crop=0.75),
}
VIEW_STRENGTHS = tuple(VIEWS)


def view_spec(strength: str) -> ViewSpec:
    """The spec of a strength name, or a clear error naming the allowed ones."""
    if strength not in VIEWS:
        raise VitDSIError(f"views must be one of {', '.join(VIEW_STRENGTHS)}, got '{strength}'")
    return VIEWS[strength]


def describe_views(strength: str) -> str:
    """A strength in words, for reports: 'medium (shift <= 1/8 side, flip, brightness/contrast 0.3)'."""
    s = view_spec(strength)
    parts = []
    if s.crop < 1:
        parts.append(f"zoom-in crop >= {s.crop:g} side")
    if s.shift:
        parts.append(f"shift <= 1/{round(1 / s.shift)} side")
    if s.flip:
        parts.append("flip")
    if s.jitter:
        parts.append(f"brightness/contrast {s.jitter:g}")
    return f"{strength} ({', '.join(parts) or 'the image as is'})"


def random_crop(x: torch.Tensor, gen: torch.Generator, smallest: float) -> torch.Tensor:
    """Zoom each image of a float batch into its own random square crop, side in [smallest, 1]
    of the image's, anywhere inside it, resized back bilinearly (one affine grid for the batch)."""
    if smallest >= 1:
        return x
    b = x.shape[0]
    u = torch.rand(3, b, generator=gen).to(x.device, x.dtype)
    side = smallest + (1 - smallest) * u[0]
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, 0, 2] = (1 - side) * (2 * u[1] - 1)  # the crop's centre, in [-1, 1] grid units
    theta[:, 1, 2] = (1 - side) * (2 * u[2] - 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def apply_views(x: torch.Tensor, gen: torch.Generator, strength: str) -> torch.Tensor:
    """A fresh view of each image of a float model-input batch [B, C, H, W] at `strength`
    (`none` returns the batch itself and draws nothing from `gen`)."""
    s = view_spec(strength)
    if not len(x):
        return x
    x = random_crop(x, gen, s.crop)
    if s.shift > 0:
        x = random_shift(x, gen, max(1, int(x.shape[-1] * s.shift)))
    if s.flip:
        x = random_flip(x, gen)
    return random_jitter(x, gen, s.jitter)


def check_views(strength: str, index_views: int = 0) -> None:
    """Clear errors for a `views` strength and an `index_views` count (K pseudo-query views)."""
    view_spec(strength)
    if index_views < 0:
        raise VitDSIError(f"index_views must be >= 0 (0 = no pseudo-query views), got {index_views}")
    if index_views and strength == "none":
        raise VitDSIError(
            f"index_views={index_views} presents every indexed image as {index_views} more views, "
            "but views is 'none' (they would be copies); set views to light, medium or strong"
        )


def check_view_bank(view_bank: int, views: str, encoder: str | None = None, freeze_encoder=True) -> None:
    """Clear errors for a `view_bank` size V (vitdsi.training.view_bank): V views of each image
    need a strength to draw them at and, when `encoder` is given, a borrowed encoder with a fixed
    part to compute them through once."""
    if not isinstance(view_bank, int) or isinstance(view_bank, bool) or view_bank < 0:
        raise VitDSIError(f"view_bank must be an int >= 0 (0 = fresh views every batch), got {view_bank!r}")
    if view_bank and views == "none":
        raise VitDSIError(
            f"view_bank={view_bank} keeps {view_bank} training views of every image, but views is 'none'; "
            "set views to light, medium or strong, or view_bank to 0"
        )
    if view_bank and encoder is not None and (encoder == "vit" or freeze_encoder is False):
        raise VitDSIError(
            f"view_bank={view_bank} caches views through a borrowed encoder's fixed part, but encoder "
            f"'{encoder}' with freeze_encoder {freeze_encoder!r} has none; use a borrowed encoder with "
            "a fixed part (freeze_encoder true or N) or set view_bank to 0"
        )
