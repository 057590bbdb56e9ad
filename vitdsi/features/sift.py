"""SIFT descriptors for the Bag of Visual Words baseline (paper section 3.1).

Grey-scale images are upscaled by an integer factor (SIFT finds few keypoints on 28-64 px
images), then described either at the keypoints SIFT detects (`sparse`) or on a regular
grid of fixed-size keypoints (`dense`, as in dense-SIFT / PHOW). RootSIFT (Arandjelovic &
Zisserman, 2012) maps each descriptor to the square root of its L1-normalised self, so
that Euclidean distance between RootSIFT vectors compares the originals with the
Hellinger kernel.

Extraction runs over chunks of images in a thread pool: OpenCV releases the GIL inside
`detectAndCompute` / `compute`, so threads scale over cores without pickling images to
worker processes. OpenCV's own thread pool is set to one thread while ours runs, so the
two do not oversubscribe the cores.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from vitdsi.errors import VitDSIError
from vitdsi.log import progress

DESCRIPTOR_DIM = 128  # SIFT: 4x4 cells x 8 orientation bins


@dataclass(frozen=True)
class SiftConfig:
    detector: str = "dense"  # "sparse": SIFT keypoints; "dense": a regular grid of keypoints
    upscale: int = 2  # integer upscaling before extraction (32 px -> 64 px at 2)
    step: int = 6  # dense grid spacing, in pixels of the upscaled image
    size: int = 8  # dense keypoint diameter (OpenCV's size: the descriptor spans about 6x it)
    contrast_threshold: float = 0.04  # sparse detector: OpenCV's contrastThreshold (lower = more keypoints)
    max_keypoints: int = 0  # sparse detector: keep the strongest n keypoints per image (0 = all)
    rootsift: bool = True  # map descriptors to RootSIFT

    def __post_init__(self) -> None:
        if self.detector not in ("sparse", "dense"):
            raise VitDSIError(f"SIFT detector must be 'sparse' or 'dense', got {self.detector!r}")
        if self.upscale < 1:
            raise VitDSIError(f"SIFT upscale must be an integer >= 1, got {self.upscale}")
        if self.step < 1 or self.size < 1:
            raise VitDSIError(
                f"dense SIFT step and size must be >= 1, got step={self.step}, size={self.size}"
            )


def to_gray(images: torch.Tensor) -> np.ndarray:
    """uint8 [N, 3, H, W] RGB -> uint8 [N, H, W] grey (ITU-R BT.601 luma, as OpenCV)."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32)
    gray = torch.einsum("nchw,c->nhw", images.cpu().float(), weights)
    return gray.round_().clamp_(0, 255).to(torch.uint8).numpy()


def rootsift(desc: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """RootSIFT: sqrt of the L1-normalised descriptor; rows have unit L2 norm (zero rows stay zero)."""
    desc = np.asarray(desc, dtype=np.float32)
    l1 = np.abs(desc).sum(axis=1, keepdims=True)
    return np.sqrt(desc / np.maximum(l1, eps))


def dense_grid(height: int, width: int, step: int, size: int) -> np.ndarray:
    """float32 [P, 2] (x, y) keypoint centres of a grid with `step` spacing, centred in the image."""
    xs = np.arange(step / 2, width, step, dtype=np.float32)
    ys = np.arange(step / 2, height, step, dtype=np.float32)
    if len(xs) == 0 or len(ys) == 0:
        raise VitDSIError(
            f"dense SIFT step {step} is larger than the {width}x{height} (upscaled) image; use a smaller step"
        )
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def _describe_chunk(gray: np.ndarray, cfg: SiftConfig) -> list[np.ndarray]:
    """Descriptors of each image of one chunk (float32 [n_i, 128], possibly n_i = 0)."""
    import cv2  # heavy; only for SIFT

    sift = cv2.SIFT_create(nfeatures=cfg.max_keypoints, contrastThreshold=cfg.contrast_threshold)
    h, w = gray.shape[1] * cfg.upscale, gray.shape[2] * cfg.upscale
    grid = None
    if cfg.detector == "dense":
        grid = [
            cv2.KeyPoint(float(x), float(y), float(cfg.size)) for x, y in dense_grid(h, w, cfg.step, cfg.size)
        ]
    out = []
    for img in gray:
        if cfg.upscale > 1:
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        if grid is None:
            _, desc = sift.detectAndCompute(img, None)
        else:
            _, desc = sift.compute(img, grid)
        out.append(
            np.empty((0, DESCRIPTOR_DIM), np.float32) if desc is None else desc.astype(np.float32, copy=False)
        )
    return out


def default_workers() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def extract_descriptors(
    images: torch.Tensor,
    cfg: SiftConfig,
    *,
    workers: int = 0,
    chunk: int = 32,
    description: str = "SIFT descriptors",
) -> tuple[np.ndarray, np.ndarray]:
    """SIFT descriptors of uint8 [N, 3, H, W] images.

    Returns (desc float32 [M, 128], owner int64 [M]): all descriptors stacked, and the
    position of the image each came from (images without keypoints contribute none).
    """
    import cv2  # heavy; only for SIFT

    gray = to_gray(images)
    n = len(gray)
    workers = workers or default_workers()
    starts = list(range(0, n, chunk))
    per_image: list[np.ndarray] = []
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with progress() as bar, ThreadPoolExecutor(max_workers=workers) as pool:
            task = bar.add_task(description, total=n)
            # map() yields chunks in submission order, so descriptors stay in image order
            for s, descs in zip(
                starts, pool.map(lambda s: _describe_chunk(gray[s : s + chunk], cfg), starts)
            ):
                per_image.extend(descs)
                bar.update(task, advance=min(chunk, n - s))
    finally:
        cv2.setNumThreads(previous)
    counts = np.fromiter((len(d) for d in per_image), dtype=np.int64, count=n)
    desc = np.concatenate(per_image) if counts.sum() else np.empty((0, DESCRIPTOR_DIM), np.float32)
    if cfg.rootsift:
        desc = rootsift(desc)
    return desc, np.repeat(np.arange(n, dtype=np.int64), counts)
