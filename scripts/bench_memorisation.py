"""Time for a `dsi-vit` to memorise N Fashion-MNIST images: from scratch (a ViT on 32 px
images), or with `--frozen` on a frozen EfficientNet-Lite0 whose features are extracted once
(through the feature cache; the extraction time counts, unless the cache already held them).
`--frozen` takes the frozen encoder's options as `--param` too: `encoder_pool=true` (one pooled
token per image: 1,280 floats cached, what keeps 65,536 images in memory) and a bank of views
(`view_bank=V views=STRENGTH`, with `index_views=K` pseudo-query presentations), made and
extracted once before training.

Indexes the first N images zero-shot (indexing only) with a recipe given as build
parameters, stops at the IA@1 target or the time budget, and prints the IA@1 curve and the
wall time to the target; the final IA@1 is measured on every image by greedy decoding:

    python scripts/bench_memorisation.py --n 2048 --threads 2 --param id_scheme=atomic lr=1e-3
    python scripts/bench_memorisation.py --frozen --n 65536 --threads 2 --budget 3600 --target 0.95 \
        --param encoder_pool=true
    python scripts/bench_memorisation.py --frozen --n 65536 --threads 2 --budget 3600 --target 0.95 \
        --param encoder_pool=true view_bank=4 index_views=2 views=medium
    python scripts/bench_memorisation.py --frozen --n 65536 --device cuda --size 160 --budget 300 \
        --target 0.95 --param encoder_pool=true encoder_size=160 view_bank=4 index_views=2 views=medium

Timings depend on the machine and its load: say so when you quote them.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from rich.console import Console

from vitdsi.data import load_dataset
from vitdsi.metrics import indexing_accuracy
from vitdsi.retrievers import create

console = Console()
RECIPE = dict(
    patch_size=4,
    dim=128,
    ff_dim=256,
    depth=4,
    heads=4,
    dropout=0.0,
    views="none",
    lr=1e-3,
    batch_size=64,
    id_scheme="atomic",
    mode="zero-shot",
    target_ia=0.99,
    eval_every=5,
    ia_sample=512,
)
# a frozen pretrained encoder read once per image (the `pretrained` study's frozen atomic DSI, without
# dropout)
FROZEN = dict(
    RECIPE,
    encoder="efficientnet-lite0",
    encoder_size=96,
    freeze_encoder=True,
    depth=1,
    batch_size=256,
    eval_every=2,
    ia_sample=2048,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048, help="images to memorise (default 2048)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds before giving up (default 600)")
    ap.add_argument("--epochs", type=int, default=300, help="epoch budget")
    ap.add_argument(
        "--frozen",
        action="store_true",
        help="a frozen EfficientNet-Lite0 encoder (features cached; --param encoder_pool=true view_bank=V)",
    )
    ap.add_argument("--target", type=float, default=None, help="IA@1 target (default: the recipe's, 0.99)")
    ap.add_argument("--param", nargs="*", default=[], help="dsi-vit overrides, name=json-value")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--size", type=int, default=32, help="image side the dataset is served at (default 32)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = dict(FROZEN if args.frozen else RECIPE, index_epochs=args.epochs)
    if args.target is not None:
        params["target_ia"] = args.target
    for item in args.param:
        name, _, value = item.partition("=")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    corpus = load_dataset("fashion-mnist", size=args.size).subset(torch.arange(args.n))
    if len(corpus) < args.n:
        raise SystemExit(f"Fashion-MNIST has {len(corpus)} images, fewer than --n {args.n}")
    console.print(
        f"{args.n} Fashion-MNIST images at {args.size} px, {args.threads} thread(s), {args.device}, "
        f"torch {torch.__version__}, recipe {params}"
    )
    r = create("dsi-vit", **params, device=args.device)
    t0 = time.perf_counter()

    def on_epoch(e) -> bool:
        if e.ia1 is not None:
            console.print(
                f"  epoch {e.epoch}: loss {e.loss:.3f}, IA@1 (sample) {e.ia1:.3f}, "
                f"{time.perf_counter() - t0:.0f} s"
            )
        return time.perf_counter() - t0 > args.budget

    r.index(corpus, on_epoch=on_epoch)
    seconds = time.perf_counter() - t0
    ia = indexing_accuracy(r.search(corpus.images, 1).ids, len(corpus), ks=[1])["IA@1"].mean
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GB (Linux)
    console.print(
        f"[bold]IA@1 {ia:.4f} on all {args.n} images after {len(r.history)} epochs, {seconds:.0f} s "
        f"({'within' if seconds <= args.budget else 'over'} the {args.budget:.0f} s budget), "
        f"peak RSS {rss:.2f} GB[/]"
    )


if __name__ == "__main__":
    main()
