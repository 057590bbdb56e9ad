"""Micro-benchmarks of the index-then-retrieve baselines: `bovw` and `embedding`.

    python scripts/bench_baselines.py [--parts quant,index,extract] [--n-index 10000]

Reports, on Fashion-MNIST at 32 px:
  quant    BoVW quantisation throughput: the vectorised nearest-centroid step against the
           original approach (Python loops over descriptors and centroids, one scipy
           distance each) and against a per-descriptor numpy loop, on the same descriptors
           (target >= 50x)
  index    end-to-end BoVW index time (SIFT, k-means, quantisation, histograms) for
           --n-index images
  extract  embedding feature extraction, images/s, per backbone
Their retrieval quality is a study, run and reported by the harness:
`bench run studies/baselines.yaml`.
Timings are wall-clock with perf_counter in one process; the machine may be shared.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from vitdsi.data import load_dataset
from vitdsi.features.sift import SiftConfig, default_workers, extract_descriptors
from vitdsi.features.vocabulary import nearest_centroid, nearest_centroid_loop, train_vocabulary
from vitdsi.retrievers import create

console = Console()


def fashion(n: int | None = None, seed: int = 0):
    return load_dataset("fashion-mnist", size=32, limit=n, seed=seed)


def original_quantiser(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The original approach, rewritten: for each descriptor, for each centroid, one
    scipy euclidean distance, keeping the first smallest."""
    from scipy.spatial import distance

    return np.array(
        [min(range(len(centroids)), key=lambda i: distance.euclidean(d, centroids[i])) for d in x]
    )


def best_of(repeats: int, fn, *args) -> tuple[float, object]:
    """Fastest of `repeats` calls of fn(*args), and its result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_quantisation(n_images: int, n_same: int, n_original: int) -> None:
    images = fashion(n_images).images
    table = Table(title="BoVW quantisation throughput, descriptors/s (same descriptors for every method)")
    for col in (
        "descriptors",
        "K",
        f"original loops ({n_original:,})",
        f"per-descriptor numpy loop ({n_same:,})",
        f"vectorised ({n_same:,})",
        "speed-up vs original",
        "vs numpy loop",
        "same words",
        f"vectorised, all of {n_images:,} images",
    ):
        table.add_column(col)
    for detector in ("dense", "sparse"):
        desc, _ = extract_descriptors(images, SiftConfig(detector=detector))
        same = desc[:n_same]
        for k in (200, 1000):
            centroids = train_vocabulary(desc, k, seed=0, iters=10)
            t_orig, orig = best_of(1, original_quantiser, same[:n_original], centroids)
            t_loop, loop = best_of(1, nearest_centroid_loop, same, centroids)
            t_vec, vec = best_of(3, nearest_centroid, same, centroids)
            t_all, _ = best_of(3, nearest_centroid, desc, centroids)
            r_orig, r_loop, r_vec = n_original / t_orig, len(same) / t_loop, len(same) / t_vec
            agree = min((vec[:n_original] == orig).mean(), (vec == loop).mean())
            table.add_row(
                f"{detector} SIFT ({len(desc):,})",
                str(k),
                f"{r_orig:,.0f}",
                f"{r_loop:,.0f}",
                f"{r_vec:,.0f}",
                f"{r_vec / r_orig:,.0f}x",
                f"{r_vec / r_loop:,.0f}x",
                f"{agree:.4%}",
                f"{t_all:.2f} s ({len(desc) / t_all:,.0f}/s)",
            )
    console.print(table)


def bench_index(n: int) -> None:
    corpus = fashion(n)
    table = Table(
        title=f"BoVW end-to-end index time, {n:,} Fashion-MNIST images at 32 px ({default_workers()} SIFT "
        "threads)"
    )
    for col in (
        "configuration",
        "index s",
        "images/s",
        "descriptors",
        "no keypoints",
        "search 100 queries, brute / inverted",
    ):
        table.add_column(col)
    for params in (
        {"detector": "dense", "vocab_size": 200},
        {"detector": "sparse", "vocab_size": 200},
        {"detector": "dense", "vocab_size": 1000},
    ):
        r = create("bovw", **params)
        t = time.perf_counter()
        r.index(corpus)
        elapsed = time.perf_counter() - t
        queries = fashion(100, seed=1).images
        times = []
        for mode in ("brute", "inverted"):
            r.set_query_arguments(search=mode)
            t = time.perf_counter()
            r.search(queries, 100)
            times.append(time.perf_counter() - t)
        table.add_row(
            ", ".join(f"{k}={v}" for k, v in params.items()),
            f"{elapsed:.1f}",
            f"{n / elapsed:,.0f}",
            f"{r.index_stats['descriptors']:,}",
            str(r.index_stats["no_keypoints"]),
            f"{times[0]:.2f} s / {times[1]:.2f} s",
        )
    console.print(table)


def bench_extract(n: int) -> None:
    from vitdsi.device import default_device
    from vitdsi.features.backbones import load_backbone

    images = fashion(n).images
    device = default_device()
    table = Table(
        title=f"embedding feature extraction, {n} images at 32 px, device {device}, "
        f"{torch.get_num_threads()} torch threads"
    )
    for col in ("backbone", "input", "dim", "batch", "images/s"):
        table.add_column(col)
    for name, batch in (("pixels", 1024), ("efficientnet-lite0", 64)):
        net = load_backbone(name, device)
        with torch.inference_mode():
            net(images[:batch])  # warm-up
            t = time.perf_counter()
            dim = 0
            for s in range(0, n, batch):
                dim = net(images[s : s + batch]).shape[1]
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t
        table.add_row(name, f"{net.input_size or 32} px", str(dim), str(batch), f"{n / elapsed:,.1f}")
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="quant,index,extract", help="comma-separated parts to run")
    ap.add_argument("--n-index", type=int, default=10_000, help="images for the end-to-end BoVW index time")
    ap.add_argument("--n-quant-images", type=int, default=1000, help="images whose descriptors are quantised")
    ap.add_argument(
        "--n-same", type=int, default=20_000, help="descriptors timed with the numpy loop and vectorised"
    )
    ap.add_argument(
        "--n-original", type=int, default=1_000, help="descriptors timed with the original double loop"
    )
    ap.add_argument("--n-extract", type=int, default=512, help="images for the extraction throughput")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {default_workers()} cores")
    if "quant" in parts:
        bench_quantisation(args.n_quant_images, args.n_same, args.n_original)
    if "index" in parts:
        bench_index(args.n_index)
    if "extract" in parts:
        bench_extract(args.n_extract)


if __name__ == "__main__":
    main()
