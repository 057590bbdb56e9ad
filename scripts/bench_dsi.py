"""Benchmark of the `dsi-vit` retriever (issue 5): throughput, memorisation, retrieval, latency.

    python scripts/bench_dsi.py --throughput
    python scripts/bench_dsi.py --memorise --sizes 512 1024 2048 --budget 600
    python scripts/bench_dsi.py --retrieval --n-total 1024 --schemes random clustered semantic \
        --modes zero-shot fine-tuned multitask --baselines pixels-knn bovw embedding
    python scripts/bench_dsi.py --latency
    python scripts/bench_dsi.py --all

Every part prints a rich table with its exact settings. Fashion-MNIST is loaded at 32 px.
The training settings of the memorisation and retrieval parts come from the 'small' scale
preset's dsi-vit parameters unless flags override them (`--param name=value`).
Timings depend on the machine and its load: say so when you quote them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from vitdsi.data import Relevance, load_dataset, make_split
from vitdsi.metrics import evaluate, indexing_accuracy, per_query
from vitdsi.retrievers import create, registered

console = Console()
PAPER = dict(dim=128, ff_dim=256, depth=6, heads=4, dropout=0.1)  # paper defaults (section 3.2.1)
# memorising (the memorisation part, and zero-shot rows of the retrieval part unless --same-params):
# no dropout, no augmentation, a long epoch budget cut by target_ia or --budget
MEMORISE = dict(dropout=0.0, augment=False, index_epochs=400)


def small_params() -> dict:
    try:
        from bench.scales import SCALES

        return dict(SCALES["small"].retriever_params.get("dsi-vit", {}))
    except (ImportError, KeyError):
        return {}


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


def fmt(v) -> str:
    return f"{v.mean:.3f} ± {v.ci95:.3f} ({v.chance:.3f})"


# ---- throughput -------------------------------------------------------------------------
def throughput(args) -> None:
    """Training images/s of the paper model: indexing steps on synthetic images."""
    from vitdsi.ids import make_ids
    from vitdsi.models import VitDSI, VitDSIConfig
    from vitdsi.train import DSITrainer, TrainConfig

    table = Table(title=f"dsi-vit training throughput, paper model {PAPER}, batch {args.batch}, "
                        f"{torch.get_num_threads()} threads, device {args.device}")
    for col in ("image", "patch", "patches", "params", "images/s (epoch 2)", "s/epoch"):
        table.add_column(col)
    for size, patch in ((32, 4), (160, 16)):
        n = args.throughput_images
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen).to(args.device)
        ids = make_ids("random", n, seed=0)
        torch.manual_seed(0)
        model = VitDSI(VitDSIConfig(image_size=size, patch_size=patch, id_length=ids.length, **PAPER)).to(args.device)
        history = DSITrainer(model, images, ids.codes,
                             TrainConfig(index_epochs=2, batch_size=args.batch, target_ia=2.0, eval_every=10**9)).fit()
        last = history[-1]
        dump(args, {"part": "throughput", "size": size, "patch": patch, "images_per_s": last.images_per_s})
        table.add_row(f"{size} px", str(patch), str((size // patch) ** 2), f"{model.n_params():,}",
                      f"{last.images_per_s:.0f}", f"{last.seconds:.1f}")
    console.print(table)


# ---- memorisation -----------------------------------------------------------------------
def memorise(args, params: dict) -> None:
    params = {**params, **MEMORISE, **args.overrides}
    table = Table(title=f"dsi-vit memorisation, Fashion-MNIST 32 px, budget {args.budget:.0f} s, params {params}")
    for col in ("indexed", "id scheme", "epochs", "train s", "IA@1", "IA@5", "first epoch IA@1>=target"):
        table.add_column(col)
    for n in args.sizes:
        corpus = load_dataset("fashion-mnist", size=32, limit=n, seed=0)
        for scheme in args.mem_schemes:
            r = create("dsi-vit", **{**params, "id_scheme": scheme, "mode": "zero-shot", "device": args.device})
            t0 = time.perf_counter()
            reached: list[tuple[int, float]] = []

            def stop(entry, t0=t0, reached=reached, target=r.target_ia):
                if entry.ia1 is not None and entry.ia1 >= target and not reached:
                    reached.append((entry.epoch, time.perf_counter() - t0))
                return time.perf_counter() - t0 > args.budget

            r.index(corpus, on_epoch=stop)
            seconds = time.perf_counter() - t0
            ranking = r.search(corpus.images, 5)
            ia = indexing_accuracy(ranking.ids, n, ks=(1, 5))
            hit = f"epoch {reached[0][0]} at {reached[0][1]:.0f} s" if reached else "not reached"
            dump(args, {"part": "memorise", "n": n, "scheme": scheme, "params": params, "epochs": len(r.history),
                        "seconds": seconds, "ia1": ia["IA@1"].mean, "ia5": ia["IA@5"].mean, "reached": reached})
            table.add_row(str(n), scheme, str(len(r.history)), f"{seconds:.0f}", f"{ia['IA@1'].mean:.4f}",
                          f"{ia['IA@5'].mean:.4f}", hit)
            console.print(f"[dim]{n} {scheme}: IA@1 {ia['IA@1'].mean:.4f} in {seconds:.0f} s")
    console.print(table)


# ---- retrieval --------------------------------------------------------------------------
METRICS = ("MAP@10", "P@10", "R@100")


def retrieval(args, params: dict) -> None:
    source = load_dataset("fashion-mnist", size=32)
    rows = []
    zero_shot = params if args.same_params else {**params, **MEMORISE, **args.overrides}
    for n_total in args.n_total:
        split = make_split(source, n_total=n_total, split_ratio=0.25, seed=args.seed)
        sets = split.apply(source)
        queries = getattr(sets, args.split)  # validation by default: tune here, report from a study's test numbers
        rel = Relevance.between(queries, sets.corpus)
        console.print(f"[bold]N_total {n_total}: {split.sizes()}")
        configs = [("dsi-vit", {**(zero_shot if m == "zero-shot" else params), "id_scheme": s, "mode": m})
                   for m in args.modes for s in args.schemes]
        configs += [(b, {}) for b in args.baselines if b in registered()]
        for name, p in configs:
            r = create(name, **{**p, "device": args.device, "seed": args.seed})
            t0 = time.perf_counter()
            r.index(sets.corpus, train_queries=sets.train)
            build = time.perf_counter() - t0
            ranking = r.search(queries.images, 100)
            res = evaluate(ranking.ids, rel, METRICS)
            ia = "—"
            if name == "dsi-vit":
                own = r.search(sets.corpus.images, 1)
                ia = f"{indexing_accuracy(own.ids, len(sets.corpus), ks=(1,))['IA@1'].mean:.3f}"
            label = f"{name} {p.get('mode', '')} {p.get('id_scheme', '')}".strip()
            rows.append((str(n_total), label, *(fmt(res[m]) for m in METRICS), ia, f"{build:.0f}"))
            dump(args, {"part": "retrieval", "split": args.split, "n_total": n_total, "retriever": name, "params": p, "ia1": ia,
                        "build_s": build, **{m: [res[m].mean, res[m].ci95, res[m].chance, res[m].n] for m in METRICS},
                        "ap10_per_query": per_query(ranking.ids, rel, ["MAP@10"])["MAP@10"].tolist()})
            console.print(f"[dim]{rows[-1]}")
    table = Table(title=f"retrieval on Fashion-MNIST 32 px, split_ratio 0.25, {args.split} queries, mean ± 95% CI (chance); "
                        f"dsi-vit params {params}; zero-shot rows {zero_shot}")
    for col in ("N_total", "retriever", *METRICS, "IA@1", "build s"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)


# ---- latency ----------------------------------------------------------------------------
def latency(args, params: dict) -> None:
    corpus = load_dataset("fashion-mnist", size=32, limit=args.latency_corpus, seed=0)
    queries = load_dataset("fashion-mnist", size=32, limit=256, seed=1).images
    table = Table(title=f"dsi-vit search latency per query, beam 10, k 10, corpus {args.latency_corpus}, "
                        f"{torch.get_num_threads()} threads, device {args.device}")
    for col in ("model", "id scheme", "batch", "p50 ms/query", "p95 ms/query", "calls"):
        table.add_column(col)
    for label, model_params in (("paper (dim 128, depth 6)", PAPER), ("small preset", {})):
        for scheme in ("random", "atomic"):
            p = {**params, **model_params, "patch_size": 4, "id_scheme": scheme, "index_epochs": 1,
                 "mode": "zero-shot", "device": args.device}
            r = create("dsi-vit", **p)
            r.index(corpus)  # one epoch: latency does not depend on how well it is trained
            r.set_query_arguments(beam_size=10)
            for batch, calls in ((1, 50), (256, 5)):
                x = queries[:batch]
                for _ in range(2):
                    r.search(x, 10)
                times = []
                for _ in range(calls):
                    t = time.perf_counter()
                    r.search(x, 10)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    times.append((time.perf_counter() - t) * 1000 / batch)
                dump(args, {"part": "latency", "model": label, "scheme": scheme, "batch": batch,
                            "p50_ms": statistics.median(times), "p95_ms": float(np.percentile(times, 95))})
                table.add_row(label, scheme, str(batch), f"{statistics.median(times):.2f}",
                              f"{np.percentile(times, 95):.2f}", str(calls))
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--memorise", action="store_true")
    ap.add_argument("--retrieval", action="store_true")
    ap.add_argument("--split", choices=("val", "test"), default="val",
                    help="queries --retrieval scores: val (default; for choosing settings) or test (final numbers only)")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32, help="throughput batch size (paper: 32)")
    ap.add_argument("--throughput-images", type=int, default=256)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512], help="memorisation corpus sizes")
    ap.add_argument("--budget", type=float, default=600.0, help="memorisation training budget per run, seconds")
    ap.add_argument("--mem-schemes", nargs="+", default=["semantic"], help="id schemes for --memorise")
    ap.add_argument("--schemes", nargs="+", default=["random", "clustered", "semantic"], help="id schemes for --retrieval")
    ap.add_argument("--modes", nargs="+", default=["zero-shot", "fine-tuned", "multitask"])
    ap.add_argument("--n-total", type=int, nargs="+", default=[1024])
    ap.add_argument("--baselines", nargs="*", default=["pixels-knn", "bovw", "embedding"])
    ap.add_argument("--latency-corpus", type=int, default=512)
    ap.add_argument("--param", nargs="*", default=[], help="dsi-vit overrides, name=json-value")
    ap.add_argument("--json", default=None, help="append every result as a json line to this file")
    ap.add_argument("--same-params", action="store_true",
                    help="zero-shot rows use the same params as the others (default: memorising settings)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.overrides = parse_overrides(args.param)
    params = {**small_params(), **args.overrides}
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
                  f"dsi-vit params {params}")
    if args.throughput or args.all:
        throughput(args)
    if args.memorise or args.all:
        memorise(args, params)
    if args.retrieval or args.all:
        retrieval(args, params)
    if args.latency or args.all:
        latency(args, params)


if __name__ == "__main__":
    main()
