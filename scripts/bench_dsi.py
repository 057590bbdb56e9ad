"""Micro-benchmarks of the `dsi-vit` retriever: training throughput and search latency.

    python scripts/bench_dsi.py --throughput
    python scripts/bench_dsi.py --latency [--latency-corpus 512]
    python scripts/bench_dsi.py --all

Memorisation and retrieval quality are studies, run and reported by the harness:
`bench run studies/memorisation.yaml` and `bench run studies/dsi_retrieval.yaml`.
Timings depend on the machine and its load: say so when you quote them.
"""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console
from rich.table import Table

from bench.kinds.latency.measure import measure_search
from vitdsi.data import load_dataset
from vitdsi.retrievers import create

console = Console()
PAPER = dict(dim=128, ff_dim=256, depth=6, heads=4, dropout=0.1)  # paper defaults (section 3.2.1)


def small_params() -> dict:
    """The 'small' scale preset's dsi-vit parameters (the latency part's second model)."""
    from bench.scales import SCALES

    return dict(SCALES["small"].retriever_params.get("dsi-vit", {}))


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def dump(args, record: dict) -> None:
    """Append one result as a json line to --json (for reports), when given."""
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")


# ---- throughput -------------------------------------------------------------------------
def throughput(args) -> None:
    """Training images/s of the paper model: indexing steps on synthetic images."""
    from vitdsi.ids import make_ids
    from vitdsi.models import VitDSI, VitDSIConfig
    from vitdsi.training.config import TrainConfig
    from vitdsi.training.dsi import DSITrainer

    table = Table(
        title=f"dsi-vit training throughput, paper model {PAPER}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, device {args.device}"
    )
    for col in ("image", "patch", "patches", "params", "images/s (epoch 2)", "s/epoch"):
        table.add_column(col)
    for size, patch in ((32, 4), (160, 16)):
        n = args.throughput_images
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen).to(args.device)
        ids = make_ids("random", n, seed=0)
        torch.manual_seed(0)
        model = VitDSI(VitDSIConfig(image_size=size, patch_size=patch, id_length=ids.length, **PAPER)).to(
            args.device
        )
        history = DSITrainer(
            model,
            images,
            ids.codes,
            TrainConfig(index_epochs=2, batch_size=args.batch, target_ia=2.0, eval_every=10**9),
        ).fit()
        last = history[-1]
        dump(args, {"part": "throughput", "size": size, "patch": patch, "images_per_s": last.images_per_s})
        table.add_row(
            f"{size} px",
            str(patch),
            str((size // patch) ** 2),
            f"{model.n_params():,}",
            f"{last.images_per_s:.0f}",
            f"{last.seconds:.1f}",
        )
    console.print(table)


# ---- latency ----------------------------------------------------------------------------
def latency(args, params: dict) -> None:
    """Per-query search latency (bench.kinds.latency.measure.measure_search) of the paper model and the small
    preset's, random and atomic ids, at batch 1 and 256; how latency grows with the database
    size is the `latency_scaling` study."""
    corpus = load_dataset("fashion-mnist", size=32, limit=args.latency_corpus, seed=0)
    queries = load_dataset("fashion-mnist", size=32, limit=256, seed=1).images
    threads = torch.get_num_threads()
    table = Table(
        title=f"dsi-vit search latency per query, beam 10, k 10, corpus {args.latency_corpus}, "
        f"{threads} threads, device {args.device}"
    )
    for col in ("model", "id scheme", "batch", "p50 ms/query", "p95 ms/query", "calls"):
        table.add_column(col)
    for label, model_params in (("paper (dim 128, depth 6)", PAPER), ("small preset", {})):
        for scheme in ("random", "atomic"):
            p = {
                **params,
                **model_params,
                "patch_size": 4,
                "id_scheme": scheme,
                "index_epochs": 1,
                "mode": "zero-shot",
                "device": args.device,
            }
            r = create("dsi-vit", **p)
            r.index(corpus)  # one epoch: latency does not depend on how well it is trained
            r.set_query_arguments(beam_size=10)
            for batch, calls in ((1, 50), (256, 5)):
                t = measure_search(r, queries, k=10, batch_size=batch, calls=calls, warmup=2, threads=threads)
                dump(
                    args,
                    {
                        "part": "latency",
                        "model": label,
                        "scheme": scheme,
                        "batch": batch,
                        "p50_ms": t.p50_ms,
                        "p95_ms": t.p95_ms,
                    },
                )
                table.add_row(label, scheme, str(batch), f"{t.p50_ms:.2f}", f"{t.p95_ms:.2f}", str(calls))
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--batch", type=int, default=32, help="throughput batch size (paper: 32)")
    ap.add_argument("--throughput-images", type=int, default=256)
    ap.add_argument("--latency-corpus", type=int, default=512)
    ap.add_argument("--param", nargs="*", default=[], help="dsi-vit overrides for --latency, name=json-value")
    ap.add_argument("--json", default=None, help="append every result as a json line to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = {**small_params(), **parse_overrides(args.param)}
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    if args.throughput or args.all:
        throughput(args)
    if args.latency or args.all:
        latency(args, params)


if __name__ == "__main__":
    main()
