"""Seeded new views of images: the queries of an instance-retrieval protocol.

A DSI's own task is "which indexed image is this?"; an instance protocol asks it of new
views of the indexed images (the copy-detection / instance-retrieval setting, e.g. the
DISC21 and INSTRE benchmarks, where queries are edited copies of database images). A view
is a random resized crop with a small rotation (one affine warp, `grid_sample`),
brightness / contrast jitter, Gaussian noise, JPEG re-encoding at a random quality and,
where the data allow it, a horizontal flip. Strength presets name how far a view may
drift from its source:

    light   crops of 80-100% of the area, up to 5 degrees, +-10% brightness / contrast,
            noise 1%, JPEG quality 75-95
    medium  crops of 50-100%, up to 15 degrees, +-25%, noise 3%, JPEG 40-90
    strong  crops of 25-100%, up to 30 degrees, +-40%, noise 6%, JPEG 15-75

Everything is drawn from one `torch.Generator` seeded by the caller and every step is
vectorised over the batch (JPEG re-encoding runs one batched call per quality level), so
the same seed gives the same views on any machine; train, validation and test views are
made with different seeds (`view_seed`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitdsi.errors import VitDSIError


@dataclass(frozen=True)
class ViewStrength:
    name: str  # preset name, for logs and reports
    crop_area: tuple[float, float]  # range of the crop's share of the image area
    crop_ratio: tuple[float, float]  # range of the crop's aspect ratio (width / height)
    rotation: float  # largest rotation in degrees, either way
    brightness: float  # largest relative brightness change, either way
    contrast: float  # largest relative contrast change, either way
    noise: float  # standard deviation of added Gaussian noise, in [0, 1] pixel units
    jpeg_quality: tuple[int, int] | None  # range of JPEG re-encoding quality; None = no re-encoding

    def __post_init__(self) -> None:
        lo, hi = self.crop_area
        if not 0 < lo <= hi <= 1:
            raise VitDSIError(
                f"view strength '{self.name}': crop_area must satisfy 0 < low <= high <= 1, got "
                f"{self.crop_area}"
            )
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise VitDSIError(
                f"view strength '{self.name}': jpeg_quality must be within 1..100, got {self.jpeg_quality}"
            )


PRESETS: dict[str, ViewStrength] = {
    p.name: p
    for p in (
        ViewStrength("light", (0.8, 1.0), (0.9, 1.1), 5.0, 0.10, 0.10, 0.01, (75, 95)),
        ViewStrength("medium", (0.5, 1.0), (0.8, 1.25), 15.0, 0.25, 0.25, 0.03, (40, 90)),
        ViewStrength("strong", (0.25, 1.0), (0.67, 1.5), 30.0, 0.40, 0.40, 0.06, (15, 75)),
    )
}


def get_strength(strength: str | ViewStrength) -> ViewStrength:
    if isinstance(strength, ViewStrength):
        return strength
    if strength not in PRESETS:
        raise VitDSIError(f"unknown view strength '{strength}'; presets: {', '.join(PRESETS)}")
    return PRESETS[strength]


def view_seed(seed: int, role: str, round_: int = 0) -> int:
    """A seed for the views of one role ('train', 'val', 'test') and round, disjoint across roles:
    the same source image gets unrelated views in each role."""
    digest = hashlib.sha256(f"{seed}:{role}:{round_}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def make_views(
    images: torch.Tensor, strength: str | ViewStrength, seed: int, *, hflip: bool = True
) -> torch.Tensor:
    """One new view of each uint8 image [N, 3, H, W] -> uint8 [N, 3, H, W] (same size).

    `hflip=False` for data whose meaning a mirror changes (digits, text)."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise VitDSIError(f"views need uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    s = get_strength(strength)
    n = images.shape[0]
    if n == 0:
        return images.clone()
    gen = torch.Generator().manual_seed(int(seed))
    grey = (images[:, :1] == images[:, 1:]).flatten(1).all(1)  # [N]: grey images stay grey
    x = images.float().div(255.0)
    x = _crop_rotate_flip(x, s, gen, hflip)
    x = _jitter(x, s, gen)
    if s.noise > 0:
        noise = s.noise * torch.randn(x.shape, generator=gen)
        noise = torch.where(grey[:, None, None, None], noise[:, :1].expand_as(noise), noise)
        x = x + noise
    out = x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    if s.jpeg_quality is not None:
        out = _jpeg(out, s.jpeg_quality, gen)
    return out


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _crop_rotate_flip(x: torch.Tensor, s: ViewStrength, gen: torch.Generator, hflip: bool) -> torch.Tensor:
    """Random resized crop, rotation and flip as one affine warp per image (bilinear, edges
    replicated), back to the input size."""
    n = x.shape[0]
    area = _uniform(gen, n, *s.crop_area)
    log_ratio = _uniform(gen, n, math.log(s.crop_ratio[0]), math.log(s.crop_ratio[1]))
    ratio = log_ratio.exp()
    # crop width / height as fractions of the image side, kept inside the image
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = _uniform(gen, n, 0.0, 1.0) * (1 - w) * 2 - (1 - w)  # centre in [-1 + w, 1 - w] (normalised coords)
    cy = _uniform(gen, n, 0.0, 1.0) * (1 - h) * 2 - (1 - h)
    angle = _uniform(gen, n, -s.rotation, s.rotation) * (math.pi / 180.0)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [
            torch.stack([w * cos * flip, -h * sin, cx], dim=1),
            torch.stack([w * sin * flip, h * cos, cy], dim=1),
        ],
        dim=1,
    )  # [N, 2, 3]: output grid -> input coordinates
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _jitter(x: torch.Tensor, s: ViewStrength, gen: torch.Generator) -> torch.Tensor:
    """Brightness (scale) and contrast (distance from each image's mean), per image."""
    n = x.shape[0]
    bright = _uniform(gen, n, 1 - s.brightness, 1 + s.brightness)[:, None, None, None]
    contrast = _uniform(gen, n, 1 - s.contrast, 1 + s.contrast)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean) * bright


def _jpeg(images: torch.Tensor, quality: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Re-encode each image as JPEG at its own random quality (one batched call per level)."""
    from torchvision.io import decode_jpeg, encode_jpeg  # heavy; only for JPEG views

    q = torch.randint(quality[0], quality[1] + 1, (images.shape[0],), generator=gen)
    out = images.clone()
    for level in torch.unique(q).tolist():
        rows = (q == level).nonzero()[:, 0]
        encoded = encode_jpeg(list(images[rows]), quality=int(level))
        out[rows] = torch.stack(decode_jpeg(encoded))
    return out
