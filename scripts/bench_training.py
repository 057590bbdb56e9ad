"""DSI training speed against a naive reference, as a ratio measured in one run.

The reference is what one writes first: `torch.nn.Transformer` (encoder-decoder, pre-norm,
batch-first) with a patch conv, learned positions, token embedding and output head of the
same sizes as the `dsi-vit` model, trained by a plain loop (gather, forward with a causal
mask, cross-entropy, backward, clip, AdamW step). The project's side is `DSITrainer` on
`VitDSI` with the same config, batch, ids and optimiser. Both index the same synthetic
images (random pixels, random ids) for the same number of epochs; the two are measured in
alternation, several rounds, and the median images/s of each is compared. On a CPU with
native bf16 both are also run under bf16 autocast (`precision: bf16` on the project's side,
where attention is written out: `vitdsi.models.vit_encoder.attend`), and the project's bf16
rate is given as a ratio to the reference in float32 and in bf16. `--device cuda` measures both
on a GPU (images uploaded once, bf16 autocast where the GPU has bf16).

    OMP_NUM_THREADS=1 python scripts/bench_training.py [--rounds 3] [--images 256]
    python scripts/bench_training.py --device cuda --images 4096 --batch 256
    OMP_NUM_THREADS=1 python scripts/bench_training.py --profile   # where each side's time goes

`--profile` runs one epoch of each side under `torch.profiler` (after a warm-up epoch) and
splits its CPU time by kind of operator (matrix products, copies and layout changes, dropout,
the rest): the matrix products are the same on both sides, so their share bounds the ratio any
change outside them can reach.

Timings depend on the machine and its load: say so when you quote them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from vitdsi.device import resolve_device
from vitdsi.ids import make_ids
from vitdsi.models import VitDSI, VitDSIConfig
from vitdsi.models.vit_dsi import BOS, EOS, N_IN, N_OUT, PAD
from vitdsi.training.augment import to_input
from vitdsi.training.config import TrainConfig
from vitdsi.training.dsi import DSITrainer

console = Console(width=None if Console().is_terminal else 150)  # a table that fits, also in a log
PAPER = dict(dim=128, ff_dim=256, depth=6, heads=4, dropout=0.1)  # paper sizes (section 3.2.1)


class NaiveTransformerDSI(nn.Module):
    """The reference: torch.nn.Transformer with the DSI's sizes."""

    def __init__(
        self,
        image_size: int,
        patch: int,
        dim: int,
        ff_dim: int,
        depth: int,
        heads: int,
        dropout: float,
        id_length: int,
    ) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn((image_size // patch) ** 2, dim) * 0.02)
        self.tok = nn.Embedding(N_IN, dim)
        self.tok_pos = nn.Parameter(torch.randn(id_length + 1, dim) * 0.02)
        self.transformer = nn.Transformer(
            dim, heads, depth, depth, ff_dim, dropout, batch_first=True, norm_first=True
        )
        self.head = nn.Linear(dim, N_OUT)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        src = self.patch(images).flatten(2).transpose(1, 2) + self.pos
        tgt = self.tok(tokens) + self.tok_pos[: tokens.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], device=tokens.device)
        return self.head(self.transformer(src, tgt, tgt_mask=mask, tgt_is_causal=True))


def reference_images_per_s(
    images: torch.Tensor,
    codes: torch.Tensor,
    size: int,
    patch: int,
    batch: int,
    epochs: int,
    bf16: bool = False,
    after_first_epoch=None,  # called once the first epoch ends (`--profile` starts its profiler)
) -> float:
    torch.manual_seed(0)
    device = images.device
    model = NaiveTransformerDSI(size, patch, id_length=codes.shape[1], **PAPER).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98))
    codes = codes.to(device)
    bos = torch.full((len(codes), 1), BOS, device=device)
    eos = torch.full((len(codes), 1), EOS, device=device)
    inputs, targets = torch.cat([bos, codes], 1), torch.cat([codes, eos], 1)
    model.train()
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for idx in torch.randperm(len(images), device=device).split(batch):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(to_input(images[idx]), inputs[idx])
                loss = F.cross_entropy(logits.transpose(1, 2).float(), targets[idx], ignore_index=PAD)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss.item()  # one host sync per step, as the project's trainer does (it checks every loss)
        rates.append(len(images) / (time.perf_counter() - t0))
        if after_first_epoch is not None and len(rates) == 1:
            after_first_epoch()
    return statistics.median(rates[1:] or rates)


class TrainOnlyTrainer(DSITrainer):
    """DSITrainer without its end-of-phase IA@1 reading, so that a profile holds training alone."""

    def greedy_ia1(self, batch: int = 256) -> float:
        return 0.0


def project_images_per_s(
    images: torch.Tensor,
    codes: torch.Tensor,
    size: int,
    patch: int,
    batch: int,
    epochs: int,
    precision: str = "auto",
    after_first_epoch=None,  # as the reference's
) -> float:
    torch.manual_seed(0)
    model = VitDSI(VitDSIConfig(image_size=size, patch_size=patch, id_length=codes.shape[1], **PAPER))
    model.to(images.device)
    cfg = TrainConfig(
        index_epochs=epochs, batch_size=batch, target_ia=2.0, eval_every=10**9, precision=precision
    )

    def callback(entry) -> bool:  # never asks the trainer to stop
        if entry.epoch == 1:
            after_first_epoch()
        return False

    if after_first_epoch is None:
        history = DSITrainer(model, images, codes, cfg).fit()
    else:
        history = TrainOnlyTrainer(model, images, codes, cfg, callback=callback).fit()
    return statistics.median([h.images_per_s for h in history][1:] or [history[0].images_per_s])


# operator kind -> the aten operators counted in it (each in one kind); time is self CPU time,
# so a backward node's children count once
OP_KINDS = {
    "matrix products": "addmm mm bmm baddbmm addbmm linear matmul convolution _convolution "
    "mkldnn_convolution",
    "attention kernels": "_scaled_dot_product_flash_attention_for_cpu "
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "copies and layout": "copy_ clone contiguous _to_copy cat stack transpose permute view reshape t expand "
    "index index_select gather scatter_add_ _unsafe_view as_strided unsqueeze squeeze slice select",
    "dropout and masks": "bernoulli_ native_dropout native_dropout_backward dropout random_ masked_fill "
    "where",
    "optimiser and clipping": "_foreach_add_ _foreach_mul_ _foreach_addcmul_ _foreach_addcdiv_ _foreach_sqrt "
    "_foreach_div_ _foreach_lerp_ _foreach_norm _fused_adamw_ _foreach_mul _foreach_add",
}
_KIND_OF = {f"aten::{op}": kind for kind, ops in OP_KINDS.items() for op in ops.split()}


def op_kind(name: str) -> str:
    return _KIND_OF.get(name, "other operators")


def profile_kinds(run) -> dict[str, float]:
    """Self CPU seconds by operator kind of the second epoch of `run(epochs, after_first_epoch)`
    (the first pays for allocation and the one-off FLOP count of the first step)."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    run(2, prof.start)
    prof.stop()
    out: dict[str, float] = {}
    for event in prof.key_averages():
        kind = op_kind(event.key)
        out[kind] = out.get(kind, 0.0) + event.self_cpu_time_total / 1e6
    return out


def profile_both(images: torch.Tensor, codes: torch.Tensor, size: int, patch: int, batch: int) -> None:
    """Print each side's CPU time per image by operator kind (one profiled epoch after a warm-up)."""
    sides = {
        "reference": lambda epochs, start: reference_images_per_s(
            images, codes, size, patch, batch, epochs, after_first_epoch=start
        ),
        "dsi-vit": lambda epochs, start: project_images_per_s(
            images, codes, size, patch, batch, epochs, after_first_epoch=start
        ),
    }
    kinds = {name: profile_kinds(run) for name, run in sides.items()}
    table = Table("kind", *(f"{name} ms / image" for name in sides), *(f"{name} share" for name in sides))
    names = [*OP_KINDS, "other operators"]
    totals = {name: sum(k.values()) for name, k in kinds.items()}
    for kind in names:
        per_image = [kinds[name].get(kind, 0.0) * 1e3 / len(images) for name in sides]
        shares = [kinds[name].get(kind, 0.0) / totals[name] for name in sides]
        table.add_row(kind, *(f"{x:.2f}" for x in per_image), *(f"{x:.0%}" for x in shares))
    table.add_row("all", *(f"{totals[name] * 1e3 / len(images):.2f}" for name in sides), "", "")
    console.print(f"{size} px / patch {patch}, the second epoch of {len(images)} images, batch {batch}:")
    console.print(table)
    gemm = {name: kinds[name].get("matrix products", 0.0) for name in sides}
    bound = totals["reference"] / gemm["dsi-vit"] if gemm["dsi-vit"] else float("nan")
    console.print(
        f"  with every operator but the matrix products removed, dsi-vit would run at most "
        f"{bound:.2f}x the reference (profiled times, profiler overhead included)"
    )


SIZES = ((32, 4), (160, 16))  # (image px, patch px): the paper's 32 px set-up and its 160 px one


def synthetic(n: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """n random uint8 images of `size` px on `device` and random ids for them (seeded)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    return images.to(device), make_ids("random", n, seed=0).codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="synthetic images indexed (default 256)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measurement (the first is not counted)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating measurements of each side")
    ap.add_argument("--batch", type=int, default=32, help="batch size of both (the paper's 32)")
    ap.add_argument(
        "--dropout", type=float, default=0.1, help="dropout of both (paper 0.1; memorisation recipe 0)"
    )
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--profile", action="store_true", help="split each side's CPU time by operator kind")
    args = ap.parse_args()
    PAPER["dropout"] = args.dropout
    device = resolve_device(args.device)
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        where = torch.cuda.get_device_name(device)
    else:  # native bf16 on this CPU (AMX / AVX512-BF16)
        bf16, where = torch.ops.mkldnn._is_mkldnn_bf16_supported(), "cpu"
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {where}; paper sizes {PAPER}, "
        f"batch {args.batch}, {args.images} images, {args.rounds} alternating rounds"
    )
    if args.profile:
        for size, patch in SIZES:
            profile_both(*synthetic(args.images, size, device), size, patch, args.batch)
        return
    table = Table(
        "image",
        "patch",
        "reference fp32 images/s",
        "dsi-vit fp32 images/s",
        "ratio",
        *(
            ["reference bf16 images/s", "dsi-vit bf16 images/s", "ratio to ref. fp32", "ratio to ref. bf16"]
            if bf16
            else []
        ),
    )
    for size, patch in SIZES:
        images, codes = synthetic(args.images, size, device)
        ref, ours, ref_half, half = [], [], [], []
        for i in range(args.rounds):
            ref.append(reference_images_per_s(images, codes, size, patch, args.batch, args.epochs))
            ours.append(project_images_per_s(images, codes, size, patch, args.batch, args.epochs))
            if bf16:
                ref_half.append(
                    reference_images_per_s(images, codes, size, patch, args.batch, args.epochs, bf16=True)
                )
                half.append(project_images_per_s(images, codes, size, patch, args.batch, args.epochs, "bf16"))
            # each round as it ends, so that a run stopped by a time limit still leaves its figures
            console.print(
                f"  {size} px, round {i + 1}: reference {ref[-1]:.0f}, dsi-vit {ours[-1]:.0f} images/s"
                + (f"; bf16: reference {ref_half[-1]:.0f}, dsi-vit {half[-1]:.0f}" if bf16 else "")
            )
        r, o = statistics.median(ref), statistics.median(ours)
        row = [f"{size} px", str(patch), f"{r:.0f}", f"{o:.0f}", f"{o / r:.2f}x"]
        if bf16:
            rh, h = statistics.median(ref_half), statistics.median(half)
            row += [f"{rh:.0f}", f"{h:.0f}", f"{h / r:.2f}x", f"{h / rh:.2f}x"]
        table.add_row(*row)
        console.print(
            f"  {size} px: reference {[round(x) for x in ref]}, dsi-vit {[round(x) for x in ours]}"
            + (
                f", reference bf16 {[round(x) for x in ref_half]}, dsi-vit bf16 {[round(x) for x in half]}"
                if bf16
                else ""
            )
        )
    console.print(table)


if __name__ == "__main__":
    main()
