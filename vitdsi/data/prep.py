"""Image preparation as in the paper (section 2.1): keep near-square images only
(aspect ratio in [0.9, 1.1]), centre-crop to a square, resize to the configured size,
three RGB channels, uint8.

Array sources (digits, Fashion-MNIST) are prepared as one batched tensor operation;
file sources go through `prepare_pil` image by image, since decoding is per file anyway.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vitdsi.errors import VitDSIError

ASPECT_RANGE = (0.9, 1.1)  # width / height accepted as "square", paper section 2.1


def is_square_enough(width: int, height: int, aspect_range: tuple[float, float] = ASPECT_RANGE) -> bool:
    ratio = width / height
    return aspect_range[0] <= ratio <= aspect_range[1]


def prepare_batch(images: np.ndarray | torch.Tensor, size: int, fit: str = "resize") -> torch.Tensor:
    """uint8 [N, H, W] or [N, C, H, W] square images -> uint8 [N, 3, size, size].

    fit="resize": bilinear resize with antialiasing; fit="pad": zero-pad to `size`
    (centred; keeps the original pixels exactly, e.g. 28 px Fashion-MNIST in 32 px).
    """
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise VitDSIError(f"expected images [N, H, W] or [N, 1|3, H, W], got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top : top + side, left : left + side]
    src = x.shape[-1]
    if fit == "pad":
        if size < src:
            raise VitDSIError(f"fit='pad' needs size >= the source size {src}, got {size}; use fit='resize'")
        before = (size - src) // 2
        x = F.pad(x, (before, size - src - before, before, size - src - before))
    elif fit == "resize":
        if src != size:
            chunks = [
                F.interpolate(
                    c.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
                )
                .round_()
                .clamp_(0, 255)
                .to(torch.uint8)
                for c in x.split(8192)
            ]
            x = torch.cat(chunks)
    else:
        raise VitDSIError(f"unknown fit '{fit}'; use 'resize' or 'pad'")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.to(torch.uint8).contiguous()


def to_8bit(image: Image.Image) -> Image.Image:
    """High-bit-depth grey images (16-bit PNG / TIFF: PIL modes I;16*, I, F) scaled to 8 bits by
    their bit depth. PIL's own convert("RGB") clips them instead (a mid-grey 16-bit image,
    32768, would become white). 16-bit colour PNGs are already reduced to 8 bits by PIL."""
    mode = image.mode
    if not (mode.startswith("I;16") or mode in ("I", "F")):
        return image
    a = np.asarray(image).astype(np.float64)
    if mode.startswith("I;16"):
        full = 65535.0
    elif mode == "I":  # 32-bit container; 16-bit data (the usual case) keeps the 16-bit scale
        full = 65535.0 if a.size == 0 or (a.min() >= 0 and a.max() <= 65535) else float(2**31 - 1)
        a = np.clip(a, 0, None)
    else:  # float: [0, 1] data as is, otherwise by its maximum
        peak = float(np.nanmax(a)) if a.size else 1.0
        full = 1.0 if peak <= 1.0 else peak
        a = np.clip(np.nan_to_num(a), 0, None)
    return Image.fromarray(np.clip(np.rint(a * (255.0 / full)), 0, 255).astype(np.uint8), mode="L")


def prepare_pil(image: Image.Image, size: int) -> torch.Tensor:
    """One PIL image -> uint8 [3, size, size]: RGB (16-bit grey scaled by its bit depth, see
    `to_8bit`), centre square crop, resize."""
    image = to_8bit(image).convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_image_file(path, size: int) -> torch.Tensor:
    """Read an image file and prepare it (used for user queries too, whatever their aspect)."""
    try:
        with Image.open(path) as im:
            return prepare_pil(im, size)
    except FileNotFoundError:
        raise VitDSIError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as e:
        raise too_large(path, e) from None
    except OSError as e:
        raise VitDSIError(f"cannot read image {path}: {e}") from None


def too_large(path, e: Image.DecompressionBombError) -> VitDSIError:
    """The error for an image PIL refuses to open as a likely decompression bomb."""
    return VitDSIError(
        f"image {path} is too large to decode: {e.args[0] if e.args else e} "
        "(PIL.Image.MAX_IMAGE_PIXELS); shrink or remove it"
    )
