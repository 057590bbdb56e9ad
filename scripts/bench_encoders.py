"""Training speed of `dsi-vit` with its own ViT vs a borrowed EfficientNet-Lite0.

Trains the same decoder (same width, depth, ids) for a few indexing epochs on Fashion-MNIST
with: the ViT trained from scratch; the pretrained CNN frozen (its features computed once,
then read every epoch); the CNN with its last blocks fine-tuned; and all of it fine-tuned.
Reports seconds per epoch (median after the first), the one-off feature time and the ratio
to the scratch ViT, all in one run:

    OMP_NUM_THREADS=1 python scripts/bench_encoders.py [--n 512] [--epochs 4] [--encoder-size 96]

Timings depend on the machine and its load: say so when you quote them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from vitdsi.data import load_dataset
from vitdsi.retrievers import create

console = Console()
DECODER = dict(
    dim=128,
    ff_dim=256,
    depth=4,
    decoder_depth=1,
    heads=4,
    dropout=0.0,
    batch_size=16,
    id_scheme="clustered",
    mode="zero-shot",
    target_ia=1.01,
    eval_every=10_000,
)


def variants(size: int) -> list[tuple[str, dict]]:
    borrowed = dict(encoder="efficientnet-lite0", encoder_size=size)
    return [
        ("ViT from scratch (patch 4)", dict(encoder="vit", patch_size=4)),
        (f"EfficientNet-Lite0 frozen, {size or 224} px", dict(borrowed, freeze_encoder=True)),
        (f"EfficientNet-Lite0 last 2 blocks tuned, {size or 224} px", dict(borrowed, freeze_encoder=2)),
        (f"EfficientNet-Lite0 all tuned, {size or 224} px", dict(borrowed, freeze_encoder=False)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="indexed images (default 512)")
    ap.add_argument("--epochs", type=int, default=4, help="indexing epochs per variant (default 4)")
    ap.add_argument(
        "--encoder-size", type=int, default=96, help="borrowed encoder input px (0 = its own 224)"
    )
    ap.add_argument("--skip-full", action="store_true", help="leave out the fully fine-tuned CNN (slowest)")
    args = ap.parse_args()
    data = load_dataset("fashion-mnist", size=32)
    corpus = data.subset(torch.arange(args.n))
    console.print(
        f"{args.n} Fashion-MNIST images at 32 px, {args.epochs} indexing epochs, "
        f"{torch.get_num_threads()} torch thread(s), device cpu"
    )
    table = Table("encoder", "s / epoch", "one-off s", "images / s", "x scratch")
    base = None
    for name, params in variants(args.encoder_size):
        if args.skip_full and params.get("freeze_encoder") is False:
            continue
        r = create("dsi-vit", **DECODER, **params, index_epochs=args.epochs, device="cpu")
        t0 = time.perf_counter()
        r.index(corpus)
        total = time.perf_counter() - t0
        epoch_s = [h["seconds"] for h in r.history]
        per_epoch = statistics.median(epoch_s[1:] or epoch_s)
        one_off = total - sum(epoch_s)  # features computed once, ids, evaluation
        base = base or per_epoch
        table.add_row(
            name, f"{per_epoch:.2f}", f"{one_off:.1f}", f"{args.n / per_epoch:.0f}", f"{base / per_epoch:.2f}"
        )
        console.print(f"  done: {name} ({total:.0f} s)")
    console.print(table)


if __name__ == "__main__":
    main()
