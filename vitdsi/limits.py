"""Upper bounds on sizes, seeds and integer build parameters, checked when a retriever is built
or loaded and by `bench run --check`: a negative width or a typo of a few extra zeros is a
one-line error naming the value, not a traceback from deep inside torch or a MemoryError."""

from __future__ import annotations

from typing import Any

from vitdsi.errors import VitDSIError

MAX_IMAGE_SIDE = 4096  # pixels; the paper's images are 160 px
MAX_IMAGES = 100_000_000  # images in a dataset or an index (ImageNet-1k has 1.3 million)
MAX_SEED = 2**32 - 1  # numpy's seeds are 0..2**32-1
MAX_COUNT = 100_000_000  # epochs, samples, keypoints, cells, ...: 0 often means "automatic"
MAX_WIDTH = 16_384  # model widths, heads and depths
WIDTHS = {
    "dim",
    "ff_dim",
    "heads",
    "depth",
    "decoder_depth",
    "embed_dim",
    "text_dim",
    "text_ff_dim",
    "text_heads",
    "text_depth",
}
POSITIVE = {"dim", "ff_dim", "heads", "text_dim", "text_ff_dim", "text_heads", "batch_size", "patch_size"}


def check_param(retriever: str, name: str, value: Any) -> None:
    """A `VitDSIError` when integer build parameter `name` of `retriever` is out of its bounds."""
    if not isinstance(value, int) or isinstance(value, bool) or name == "seed":
        return
    low = 1 if name in POSITIVE else 0
    high = MAX_WIDTH if name in WIDTHS else MAX_COUNT
    if not low <= value <= high:
        raise VitDSIError(f"{retriever}: parameter '{name}' must be in {low}..{high:,}, got {value:,}")
