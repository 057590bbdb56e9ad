"""Training loops for the ViT-DSI: indexing, retrieval fine-tuning and multitask.

Follows the ViT-DSI paper (Di Stefano, section 3.2) and Tay et al. 2022 (section 3.1); the
phases, optimiser and determinism are in docs/design.md, "The DSI model and its training".
`OptimConfig` and `TrainConfig` declare the settings retrievers take as build parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from vitdsi.divergence import check_loss
from vitdsi.errors import VitDSIError
from vitdsi.log import get_logger, progress
from vitdsi.models.vit_dsi import PAD, VitDSI, id_inputs_targets

log = get_logger(__name__)

MODES = ("zero-shot", "fine-tuned", "multitask")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, and gradient clipping: the optimiser settings
    of every trainer here (`TrainConfig`, `vitdsi.train_loop.LoopConfig`); retrievers take them
    as build parameters under these names and defaults."""

    lr: float = 5e-4  # peak learning rate (the paper's; 1e-3 stalls random ids at small scale)
    weight_decay: float = 0.01  # AdamW decoupled weight decay on matrices (not on norms/biases)
    warmup_frac: float = 0.03  # fraction of a phase's steps spent warming the lr up linearly
    min_lr_frac: float = 0.05  # cosine decays the lr to this fraction of the peak
    grad_clip: float = 1.0  # max global gradient norm
    # training arithmetic: 'auto' = mixed precision on CUDA (bf16, else fp16), float32 on the CPU;
    # 'fp32' everywhere; 'bf16' = bf16 autocast on CUDA and on the CPU too (fast on CPUs with
    # AMX / AVX512-BF16, slow on others)
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise VitDSIError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")


@dataclass
class TrainConfig(OptimConfig):
    mode: str = "zero-shot"  # 'zero-shot' (indexing only), 'fine-tuned' (then retrieval), 'multitask'
    index_epochs: int = 200  # epoch budget of the indexing phase (stops early at target_ia)
    retrieval_epochs: int = 30  # epochs of the retrieval (fine-tuned) or mixed (multitask) phase
    batch_size: int = 32  # examples per step (the paper's); small batches = more steps, faster memorisation
    label_smoothing: float = 0.0  # cross-entropy smoothing (0 while memorising)
    augment: bool = False  # random shifts (up to size/16 px) and left-right flips of training images
    target_ia: float = 0.99  # indexing stops once greedy IA@1 on the corpus reaches this
    eval_every: int = 10  # also measure IA@1 every this many indexing epochs
    seed: int = 0  # order, targets and augmentation
    # corpus images the IA@1 stop test decodes during indexing (a seeded sample); 0 = all of them.
    # The trial still measures IA@1 on every indexed image afterwards
    ia_sample: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ia_sample < 0:
            raise VitDSIError(f"ia_sample must be >= 0 (0 = every indexed image), got {self.ia_sample}")
        if self.mode not in MODES:
            raise VitDSIError(f"mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.batch_size < 1 or self.lr <= 0:
            raise VitDSIError("batch_size must be >= 1 and lr > 0")
        if self.index_epochs < 0 or self.retrieval_epochs < 0:
            raise VitDSIError("index_epochs and retrieval_epochs must be >= 0")


@dataclass
class EpochLog:
    phase: str  # 'index', 'retrieval' or 'multitask'
    epoch: int  # 1-based epoch within the phase
    step: int  # optimizer steps so far in the phase
    lr: float  # learning rate at the end of the epoch
    loss: float  # mean training loss over the epoch's examples
    index_loss: float | None  # mean loss on indexing examples (None if none)
    retrieval_loss: float | None  # mean loss on retrieval examples (None if none)
    train_exact: float | None  # fraction of indexing examples whose whole id was argmax in the training pass
    ia1: float | None  # greedy IA@1 on the un-augmented corpus in eval mode, when measured
    seconds: float  # wall time of the epoch
    images_per_s: float  # training examples per second

    def to_dict(self) -> dict:
        return asdict(self)


Callback = Callable[[EpochLog], "bool | None"]


# ---- small helpers --------------------------------------------------------------------
def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float in [-1, 1], the model's input."""
    return images.float().mul_(2.0 / 255.0).sub_(1.0)


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Shift each image of a float batch by its own random offset in [-max_shift, max_shift]^2
    (edges replicated), vectorised with one gather."""
    if max_shift < 1:
        return x
    b, c, h, w = x.shape
    off = torch.randint(0, 2 * max_shift + 1, (2, b), generator=gen).to(x.device)
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    rows = (torch.arange(h, device=x.device)[None, :] + off[0][:, None])[:, None, :, None]  # [B, 1, H, 1]
    cols = (torch.arange(w, device=x.device)[None, :] + off[1][:, None])[:, None, None, :]  # [B, 1, 1, W]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(-1), x)


def random_jitter(x: torch.Tensor, gen: torch.Generator, strength: float) -> torch.Tensor:
    """Per-image brightness and contrast jitter of a float batch in [-1, 1]: pixels are scaled
    about the image mean by a factor in [1 - strength, 1 + strength] and shifted by an offset in
    [-strength, strength] (in units of half the input range), then clamped; vectorised."""
    if strength <= 0:
        return x
    b = x.shape[0]
    u = torch.rand(2, b, generator=gen).to(x.device, x.dtype)[:, :, None, None, None] * 2 - 1  # [2, B, 1, 1, 1]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * (1 + strength * u[0]) + mean + strength * u[1]).clamp_(-1.0, 1.0)


def lr_factor(step: int, total: int, warmup: int, min_frac: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_frac` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))


def make_optimizer(model: VitDSI, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without decay on norms and biases; the fused kernel (one call for every tensor,
    on the CPU and CUDA) instead of a Python-side loop over parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8, fused=True)


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context of `precision` (OptimConfig.precision) on `device`: 'auto' is mixed
    precision on CUDA (bf16 where supported, else fp16) and float32 on the CPU."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if device.type == "cuda":
        dtype = torch.bfloat16 if precision == "bf16" or torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def trains_on_cached_features(encoder, augment: bool) -> bool:
    """Whether training reads a borrowed encoder's fixed-part output computed once per image:
    only that part is the same in every epoch, and only when no augmentation changes the input."""
    return bool(getattr(encoder, "cacheable", False)) and not augment


def precompute_features(encoder, image_sets: list[torch.Tensor | None], batch: int = 256) -> list[torch.Tensor | None]:
    """uint8 images (each set on the training device, or None) -> the output of a borrowed encoder's
    fixed part for each image (`BorrowedEncoder.precompute`), computed once, batch by batch."""
    t0 = time.perf_counter()
    device = next((s.device for s in image_sets if s is not None), torch.device("cpu"))
    out = []
    with autocast(device):
        for images in image_sets:
            out.append(None if images is None else torch.cat(
                [encoder.precompute(to_input(images[s : s + batch])).float() for s in range(0, len(images), batch)]
            ))
    kept = [o for o in out if o is not None]
    n = sum(len(o) for o in kept)
    mb = sum(o.numel() * o.element_size() for o in kept) / 2**20
    log.info("frozen encoder: features of %d images computed once in %.1f s (%.0f MB on %s)",
             n, time.perf_counter() - t0, mb, device)
    return out


class RelevantSampler:
    """Draws, for each train query, one corpus image relevant to it, uniformly at random.

    Single-label data: per-class lists of corpus positions (no [Q, N] matrix, so large
    corpora are fine). Multi-hot data: a dense relevance matrix (shared category).
    """

    def __init__(self, query_labels: torch.Tensor, corpus_labels: torch.Tensor) -> None:
        query_labels, corpus_labels = query_labels.cpu(), corpus_labels.cpu()
        self.multilabel = query_labels.ndim == 2
        if self.multilabel:
            self.relevance = (query_labels.float() @ corpus_labels.float().T) > 0  # [Q, N]
            self.has_relevant = self.relevance.any(1)
            self.relevance = self.relevance[self.has_relevant].float()
        else:
            n_classes = int(max(query_labels.max(), corpus_labels.max())) + 1
            self.order = torch.argsort(corpus_labels, stable=True)  # corpus positions grouped by class
            counts = torch.bincount(corpus_labels[corpus_labels >= 0], minlength=n_classes)
            starts = torch.cumsum(counts, 0) - counts + int((corpus_labels < 0).sum())  # unlabelled sort first
            self.has_relevant = (query_labels >= 0) & (counts[query_labels.clamp(min=0)] > 0)
            kept = query_labels[self.has_relevant]
            self.start, self.count = starts[kept], counts[kept]

    def __len__(self) -> int:
        return int(self.has_relevant.sum())

    def sample(self, queries: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Corpus positions, one per query index in `queries` (indices among the kept queries)."""
        if self.multilabel:
            return torch.multinomial(self.relevance[queries], 1, generator=gen)[:, 0]
        u = torch.rand(len(queries), generator=gen, dtype=torch.float64)
        offset = (u * self.count[queries]).long().clamp(max=self.count[queries] - 1)
        return self.order[self.start[queries] + offset]


# ---- the trainer ----------------------------------------------------------------------
class DSITrainer:
    """Trains a VitDSI on an indexed corpus (and optionally train queries)."""

    def __init__(
        self,
        model: VitDSI,
        corpus_images: torch.Tensor,  # uint8 [N, C, H, W], on the training device
        targets: torch.Tensor,  # int64 [N, L] id digits (seq2seq) or [N, 1] corpus position (atomic)
        cfg: TrainConfig,
        *,
        query_images: torch.Tensor | None = None,  # uint8 [Q, C, H, W] train queries
        query_labels: torch.Tensor | None = None,  # int64 [Q] classes or bool [Q, C] categories of the queries
        corpus_labels: torch.Tensor | None = None,  # the same for the corpus: relevance = shared class / category
        callback: Callback | None = None,
    ) -> None:
        self.model, self.cfg, self.callback = model, cfg, callback
        self.device = corpus_images.device
        self.corpus = corpus_images
        self.targets = targets.to(self.device)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.history: list[EpochLog] = []
        self.max_shift = max(1, corpus_images.shape[-1] // 16) if cfg.augment else 0
        self.queries = self.sampler = None
        if cfg.mode != "zero-shot":
            self._set_queries(query_images, query_labels, corpus_labels)
        # a borrowed encoder's fixed part gives every image the same output in every epoch: without
        # augmentation it runs once per image, and training reads its output (`self.corpus` and
        # `self.queries` then hold features, not uint8 images)
        self.precomputed = trains_on_cached_features(model.encoder, cfg.augment)
        if self.precomputed:
            self._precompute()
        self.scaler = (
            torch.amp.GradScaler("cuda")
            if self.device.type == "cuda" and not torch.cuda.is_bf16_supported()
            else None
        )

    # ---- public ----
    def fit(self) -> list[EpochLog]:
        cfg = self.cfg
        stopped = self._phase("index", cfg.index_epochs) if cfg.index_epochs else False
        if cfg.mode == "fine-tuned" and not stopped:
            self._phase("retrieval", cfg.retrieval_epochs)
        elif cfg.mode == "multitask" and not stopped:
            self._phase("multitask", cfg.retrieval_epochs)
        return self.history

    @torch.no_grad()
    def greedy_ia1(self, batch: int = 256) -> float:
        """Fraction of corpus images whose own id is the argmax at every teacher-forced step
        (= greedy decoding returns it), eval mode, no augmentation; on the `ia_sample` images
        (the same ones at every call) when that is set."""
        n = len(self.corpus)
        rows = torch.arange(n)
        if 0 < self.cfg.ia_sample < n:
            rows = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed))[: self.cfg.ia_sample]
        rows = rows.to(self.device)
        was_training = self.model.training
        self.model.eval()
        hits = 0
        for part in rows.split(batch):
            logits = self._forward(self._input(self.corpus[part]), self.targets[part])[0]
            hits += int(self._exact(logits, self.targets[part]).sum())
        self.model.train(was_training)
        return hits / len(rows)

    # ---- internals ----
    def _set_queries(self, query_images, query_labels, corpus_labels) -> None:
        """`self.sampler` (a relevant corpus image per query) and `self.queries` (the queries that have one)."""
        if query_images is None or query_labels is None or corpus_labels is None or len(query_images) == 0:
            raise VitDSIError(
                f"mode '{self.cfg.mode}' learns from train queries but none were given; pass "
                "index(corpus, train_queries=...) or use mode='zero-shot'"
            )
        self.sampler = RelevantSampler(query_labels, corpus_labels)
        if len(self.sampler) == 0:
            raise VitDSIError("no train query has a relevant image in the corpus; check the labels / split")
        keep = self.sampler.has_relevant.to(query_images.device)
        self.queries = query_images[keep].to(self.device)

    def _precompute(self) -> None:
        """Replace the training images by the borrowed encoder's fixed-part output (computed once)."""
        self.corpus, self.queries = precompute_features(self.model.encoder, [self.corpus, self.queries])

    def _memory(self, x) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model input of a batch -> the memory the id decoder reads [B, P, D] and its padding mask (None)."""
        return self.model.encode(x, self.precomputed), None

    def _input(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of `self.corpus` / `self.queries` -> model input (features are one already)."""
        return rows if self.precomputed else to_input(rows)

    def _forward(self, x: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and per-example loss for images x and target ids `codes`."""
        with autocast(self.device, self.cfg.precision):
            memory, mask = self._memory(x)  # as VitDSI.forward: encode, then the head or the decoder
            if self.model.cfg.atomic:
                logits = self.model.atomic_logits(memory, mask).float()
                loss = F.cross_entropy(logits, codes[:, 0], reduction="none", label_smoothing=self.cfg.label_smoothing)
                return logits, loss
            inputs, targets = id_inputs_targets(codes)
            logits = self.model.decode(inputs[:, None, :], memory, mask=mask)[:, 0].float()  # [B, L+1, V]
        loss = F.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=PAD, reduction="none",
            label_smoothing=self.cfg.label_smoothing,
        ).mean(1)
        return logits, loss

    def _exact(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if self.model.cfg.atomic:
            return logits.argmax(-1) == codes[:, 0]
        _, targets = id_inputs_targets(codes)
        return (logits.argmax(-1) == targets).all(1)

    def _batches(self, phase: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One epoch of (images index, source flag, target ids) batches; source 0 = corpus, 1 = query."""
        bs = self.cfg.batch_size
        n = len(self.corpus)
        idx_perm = torch.randperm(n, generator=self.gen) if phase != "retrieval" else torch.empty(0, dtype=torch.int64)
        if phase != "index":
            q_perm = torch.randperm(len(self.queries), generator=self.gen)
            q_target = self.sampler.sample(q_perm, self.gen)  # one relevant image per query, afresh each epoch
        else:
            q_perm = q_target = torch.empty(0, dtype=torch.int64)
        total = len(idx_perm) + len(q_perm)
        n_batches = max(1, math.ceil(total / bs))
        # split both streams into the same number of batches: every batch mixes both tasks
        out = []
        for ib, qb, tb in zip(
            torch.tensor_split(idx_perm, n_batches), torch.tensor_split(q_perm, n_batches),
            torch.tensor_split(q_target, n_batches),
        ):
            src = torch.cat([torch.zeros(len(ib), dtype=torch.int64), torch.ones(len(qb), dtype=torch.int64)])
            out.append((torch.cat([ib, qb]), src, torch.cat([ib, tb])))
        return out

    def _gather(self, index: torch.Tensor, src: torch.Tensor, target_pos: torch.Tensor):
        index, src, target_pos = index.to(self.device), src.to(self.device), target_pos.to(self.device)
        from_corpus = src == 0
        if from_corpus.all():
            images = self.corpus[index]
        else:
            images = torch.empty((len(index), *self.corpus.shape[1:]), dtype=self.corpus.dtype, device=self.device)
            images[from_corpus] = self.corpus[index[from_corpus]]
            images[~from_corpus] = self.queries[index[~from_corpus]]
        x = self._input(images)
        if self.max_shift:
            x = random_flip(random_shift(x, self.gen, self.max_shift), self.gen)
        return x, self.targets[target_pos], from_corpus

    def _phase(self, phase: str, epochs: int) -> bool:
        """Run one phase; True if the callback asked to stop everything."""
        cfg, model = self.cfg, self.model
        steps_per_epoch = self._steps_per_epoch(phase)
        total = max(1, epochs * steps_per_epoch)
        warmup = max(1, int(cfg.warmup_frac * total))
        opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, cfg.min_lr_frac))
        model.train()
        step = 0
        with progress() as bar:
            task = bar.add_task(f"dsi {phase}", total=epochs)
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                sums = torch.zeros(5, dtype=torch.float64)  # loss idx, n idx, loss query, n query, exact idx
                for index, src, target_pos in self._batches(phase):
                    x, codes, from_corpus = self._gather(index, src, target_pos)
                    logits, loss = self._forward(x, codes)
                    opt.zero_grad(set_to_none=True)
                    if self.scaler is not None:
                        self.scaler.scale(loss.mean()).backward()
                        self.scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        self.scaler.step(opt)
                        self.scaler.update()
                    else:
                        loss.mean().backward()
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        opt.step()
                    sched.step()
                    step += 1
                    with torch.no_grad():
                        exact = self._exact(logits, codes)
                        fc = from_corpus.float()
                        batch = torch.stack([
                            (loss * fc).sum(), fc.sum(), (loss * (1 - fc)).sum(), (1 - fc).sum(), (exact.float() * fc).sum()
                        ]).double().cpu()
                    check_loss((batch[0] + batch[2]).item(), phase=f"dsi {phase}", epoch=epoch, step=step, lr=cfg.lr)
                    sums += batch
                seconds = time.perf_counter() - t0
                n_idx, n_q = sums[1].item(), sums[3].item()
                train_exact = sums[4].item() / n_idx if n_idx else None
                ia1 = None
                if phase == "index" and (
                    (train_exact is not None and train_exact >= cfg.target_ia - 0.02)
                    or epoch % cfg.eval_every == 0 or epoch == epochs
                ):
                    ia1 = self.greedy_ia1()
                    model.train()
                entry = EpochLog(
                    phase=phase, epoch=epoch, step=step, lr=sched.get_last_lr()[0],
                    loss=(sums[0] + sums[2]).item() / max(1.0, n_idx + n_q),
                    index_loss=sums[0].item() / n_idx if n_idx else None,
                    retrieval_loss=sums[2].item() / n_q if n_q else None,
                    train_exact=train_exact, ia1=ia1, seconds=seconds, images_per_s=(n_idx + n_q) / seconds,
                )
                self.history.append(entry)
                bar.update(task, advance=1, description=f"dsi {phase} loss {entry.loss:.3f}"
                           + (f" IA@1 {ia1:.3f}" if ia1 is not None else ""))
                if self.callback is not None and self.callback(entry):
                    log.info("dsi %s: stopped by callback after epoch %d", phase, epoch)
                    return True
                if ia1 is not None and ia1 >= cfg.target_ia:
                    log.info("dsi %s: IA@1 %.3f >= target %.3f after %d epochs", phase, ia1, cfg.target_ia, epoch)
                    return False
        return False

    def _steps_per_epoch(self, phase: str) -> int:
        n_idx = len(self.corpus) if phase != "retrieval" else 0
        n_q = len(self.queries) if phase != "index" else 0
        return max(1, math.ceil((n_idx + n_q) / self.cfg.batch_size))
