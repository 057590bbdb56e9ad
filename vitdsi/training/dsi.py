"""The ViT-DSI trainer: indexing, retrieval fine-tuning and multitask phases.

Follows the ViT-DSI paper (Di Stefano, section 3.2) and Tay et al. 2022 (section 3.1); the
phases, optimiser and determinism are in docs/design.md, "The DSI model and its training"."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from vitdsi.divergence import check_loss
from vitdsi.errors import VitDSIError
from vitdsi.log import get_logger, progress
from vitdsi.models.vit_dsi import PAD, VitDSI, id_inputs_targets
from vitdsi.training.augment import to_input
from vitdsi.training.cached_features import trains_on_cached_features
from vitdsi.training.config import Callback, EpochLog, TrainConfig
from vitdsi.training.monitor import TrainingMonitor
from vitdsi.training.optim import autocast, grad_scaler, lr_factor, make_optimizer, optimizer_step
from vitdsi.training.sampler import RelevantSampler
from vitdsi.training.train_views import apply_views
from vitdsi.training.view_bank import ViewBank, features_and_bank

log = get_logger(__name__)


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
        query_labels: torch.Tensor
        | None = None,  # int64 [Q] classes or bool [Q, C] categories of the queries
        corpus_labels: torch.Tensor
        | None = None,  # the same for the corpus: relevance = shared class / category
        callback: Callback | None = None,
        monitor: TrainingMonitor | None = None,  # FLOPs, validation checkpoints, the plateau rule
        corpus_on_cpu: torch.Tensor | None = None,  # corpus_images' CPU copy, where the caller has it
    ) -> None:
        self.model, self.cfg, self.callback = model, cfg, callback
        self.monitor = monitor or TrainingMonitor.passive()
        self.device = corpus_images.device
        self.corpus = corpus_images
        self.targets = targets.to(self.device)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.history: list[EpochLog] = []
        self.queries = self.sampler = None
        queries_given = None
        if cfg.mode != "zero-shot":
            queries_given = self._set_queries(query_images, query_labels, corpus_labels)
        # a borrowed encoder's fixed part gives every image the same output in every epoch: without
        # views, or with a bank of views, it runs once per image (and view), and training reads its
        # output (`self.corpus` and `self.queries` then hold features, not uint8 images); with fresh
        # views it runs on each batch
        self.precomputed = trains_on_cached_features(model.encoder, cfg.views, cfg.view_bank)
        self.bank: ViewBank | None = None  # the views' features, with `view_bank`
        if self.precomputed:
            self._precompute([corpus_on_cpu, queries_given])
        self.scaler = grad_scaler(self.device)

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
            rows = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed))[
                : self.cfg.ia_sample
            ]
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
    def _set_queries(self, query_images, query_labels, corpus_labels) -> torch.Tensor | None:
        """`self.sampler` (a relevant corpus image per query) and `self.queries` (the queries that have
        one); returns those queries as they were given, before their upload (the feature cache
        hashes that copy when it is on the CPU)."""
        if query_images is None or query_labels is None or corpus_labels is None or len(query_images) == 0:
            raise VitDSIError(
                f"mode '{self.cfg.mode}' learns from train queries but none were given; pass "
                "index(corpus, train_queries=...) or use mode='zero-shot'"
            )
        self.sampler = RelevantSampler(query_labels, corpus_labels)
        if len(self.sampler) == 0:
            raise VitDSIError("no train query has a relevant image in the corpus; check the labels / split")
        kept = query_images[self.sampler.has_relevant.to(query_images.device)]
        self.queries = kept.to(self.device)
        return kept

    def _precompute(self, hosts: list[torch.Tensor | None]) -> None:
        """Replace the training images by the borrowed encoder's fixed-part output (computed once)
        and, with `view_bank`, make the bank of their views. `hosts`: the sets' CPU copies (or
        None), which the feature cache hashes instead of copying the sets back from the device."""
        # charged to the meter once: the frozen encoder's forward pass over every image
        (self.corpus, self.queries), self.bank = features_and_bank(
            self.model.encoder,
            [self.corpus, self.queries],
            self.cfg.view_bank,
            self.cfg.views,
            self.cfg.seed,
            self.monitor.meter,
            hosts,
        )

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
                loss = F.cross_entropy(
                    logits, codes[:, 0], reduction="none", label_smoothing=self.cfg.label_smoothing
                )
                return logits, loss
            inputs, targets = id_inputs_targets(codes)
            logits = self.model.decode(inputs[:, None, :], memory, mask=mask)[:, 0].float()  # [B, L+1, V]
        loss = F.cross_entropy(
            logits.transpose(1, 2),
            targets,
            ignore_index=PAD,
            reduction="none",
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
        # each indexed image 1 + index_views times; every presentation is drawn as a fresh view in _gather
        idx_perm = (
            torch.randperm(n * (1 + self.cfg.index_views), generator=self.gen) % n
            if phase != "retrieval"
            else torch.empty(0, dtype=torch.int64)
        )
        if phase != "index":
            q_perm = torch.randperm(len(self.queries), generator=self.gen)
            # one relevant image per query, afresh each epoch
            q_target = self.sampler.sample(q_perm, self.gen)
        else:
            q_perm = q_target = torch.empty(0, dtype=torch.int64)
        total = len(idx_perm) + len(q_perm)
        n_batches = max(1, math.ceil(total / bs))
        # split both streams into the same number of batches: every batch mixes both tasks
        out = []
        for ib, qb, tb in zip(
            torch.tensor_split(idx_perm, n_batches),
            torch.tensor_split(q_perm, n_batches),
            torch.tensor_split(q_target, n_batches),
        ):
            src = torch.cat([torch.zeros(len(ib), dtype=torch.int64), torch.ones(len(qb), dtype=torch.int64)])
            out.append((torch.cat([ib, qb]), src, torch.cat([ib, tb])))
        return out

    def _gather(self, index: torch.Tensor, src: torch.Tensor, target_pos: torch.Tensor):
        index, src, target_pos = index.to(self.device), src.to(self.device), target_pos.to(self.device)
        from_corpus = src == 0
        if self.bank is not None:  # the features of a version drawn from the bank: a view already
            return self.bank.draw(src, index, self.gen), self.targets[target_pos], from_corpus
        if from_corpus.all():
            images = self.corpus[index]
        else:
            images = torch.empty(
                (len(index), *self.corpus.shape[1:]), dtype=self.corpus.dtype, device=self.device
            )
            images[from_corpus] = self.corpus[index[from_corpus]]
            images[~from_corpus] = self.queries[index[~from_corpus]]
        x = apply_views(self._input(images), self.gen, self.cfg.views)
        return x, self.targets[target_pos], from_corpus

    def _phase(self, phase: str, epochs: int) -> bool:
        """Run one phase; True if the callback asked to stop everything. Indexing stops at the
        IA@1 target; the phase that decides retrieval (indexing itself in zero-shot mode, where
        the target rules) may stop on the monitor's validation plateau."""
        self.monitor.start_phase(phase, epochs, patience=phase != "index")
        try:
            return self._epochs(phase, epochs)
        finally:
            self.monitor.end_phase()

    def _epochs(self, phase: str, epochs: int) -> bool:
        cfg, model, monitor = self.cfg, self.model, self.monitor
        steps_per_epoch = self._steps_per_epoch(phase)
        total = max(1, epochs * steps_per_epoch)
        warmup = max(1, int(cfg.warmup_frac * total))
        opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, cfg.min_lr_frac))
        model.train()
        step = 0
        ia_plateau = IAPlateau(cfg.ia_patience, cfg.ia_min_delta, cfg.ia_floor)
        with progress() as bar:
            task = bar.add_task(f"dsi {phase}", total=epochs)
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                sums = torch.zeros(5, dtype=torch.float64)  # loss idx, n idx, loss query, n query, exact idx
                for index, src, target_pos in self._batches(phase):
                    with monitor.meter.step((phase, len(index)), len(index)):
                        x, codes, from_corpus = self._gather(index, src, target_pos)
                        logits, loss = self._forward(x, codes)
                        opt.zero_grad(set_to_none=True)
                        optimizer_step(loss.mean(), opt, self.scaler, model, cfg.grad_clip)
                    sched.step()
                    step += 1
                    with torch.no_grad():
                        batch = self._batch_sums(loss, self._exact(logits, codes), from_corpus)
                    check_loss(
                        (batch[0] + batch[2]).item(), phase=f"dsi {phase}", epoch=epoch, step=step, lr=cfg.lr
                    )
                    sums += batch
                seconds = time.perf_counter() - t0
                n_idx, n_q = sums[1].item(), sums[3].item()
                train_exact = sums[4].item() / n_idx if n_idx else None
                ia1 = self._ia1_if_due(phase, epoch, epochs, train_exact)
                entry = EpochLog(
                    phase=phase,
                    epoch=epoch,
                    step=step,
                    lr=sched.get_last_lr()[0],
                    loss=(sums[0] + sums[2]).item() / max(1.0, n_idx + n_q),
                    index_loss=sums[0].item() / n_idx if n_idx else None,
                    retrieval_loss=sums[2].item() / n_q if n_q else None,
                    train_exact=train_exact,
                    ia1=ia1,
                    seconds=seconds,
                    images_per_s=(n_idx + n_q) / seconds,
                )
                self.history.append(entry)
                bar.update(
                    task,
                    advance=1,
                    description=f"dsi {phase} loss {entry.loss:.3f}"
                    + (f" IA@1 {ia1:.3f}" if ia1 is not None else ""),
                )
                if ia1 is not None and phase == "index":
                    monitor.index_target(ia1, cfg.target_ia)
                plateau = monitor.end_epoch()
                if self.callback is not None and self.callback(entry):
                    log.info("dsi %s: stopped by callback after epoch %d", phase, epoch)
                    return True
                if ia1 is not None and ia1 >= cfg.target_ia:
                    log.info(
                        "dsi %s: IA@1 %.3f >= target %.3f after %d epochs", phase, ia1, cfg.target_ia, epoch
                    )
                    return False
                if plateau:
                    log.info("dsi %s: validation plateau after %d epochs", phase, epoch)
                    return False
                if ia1 is not None and phase == "index" and ia_plateau.reached(ia1):
                    monitor.ia1_plateau = True
                    log.info(
                        "dsi index: IA@1 plateau at %.3f after %d epochs (best %.3f, target %.3f)",
                        *(ia1, epoch, ia_plateau.best, cfg.target_ia),
                    )
                    return False
        return False

    def _ia1_if_due(self, phase: str, epoch: int, epochs: int, train_exact: float | None) -> float | None:
        """Greedy IA@1 after an indexing epoch when it is due (every `eval_every` epochs, the last,
        or once the training batches' exact rate nears the target); else None."""
        near = train_exact is not None and train_exact >= self.cfg.target_ia - 0.02
        if phase != "index" or not (near or epoch % self.cfg.eval_every == 0 or epoch == epochs):
            return None
        ia1 = self.greedy_ia1()
        self.model.train()
        return ia1

    @staticmethod
    def _batch_sums(loss: torch.Tensor, exact: torch.Tensor, from_corpus: torch.Tensor) -> torch.Tensor:
        """One batch's [loss idx, n idx, loss query, n query, exact idx], float64 on the CPU."""
        fc = from_corpus.float()
        return (
            torch.stack(
                [
                    (loss * fc).sum(),
                    fc.sum(),
                    (loss * (1 - fc)).sum(),
                    (1 - fc).sum(),
                    (exact.float() * fc).sum(),
                ]
            )
            .double()
            .cpu()
        )

    def _steps_per_epoch(self, phase: str) -> int:
        n_idx = len(self.corpus) * (1 + self.cfg.index_views) if phase != "retrieval" else 0
        n_q = len(self.queries) if phase != "index" else 0
        return max(1, math.ceil((n_idx + n_q) / self.cfg.batch_size))


class IAPlateau:
    """The IA@1 plateau rule of indexing (`ia_patience`): True once `patience` IA@1 readings in a
    row gained no more than `min_delta` over the best so far (never with patience 0). Readings
    below `floor` do not count: until IA@1 first reaches it the DSI has not begun to memorise."""

    def __init__(self, patience: int, min_delta: float, floor: float) -> None:
        self.patience, self.min_delta, self.floor = patience, min_delta, floor
        self.best, self.stale = float("-inf"), 0

    def reached(self, ia1: float) -> bool:
        if ia1 < self.floor:
            return False
        if ia1 > self.best + self.min_delta:
            self.best, self.stale = ia1, 0
        else:
            self.stale += 1
        return 0 < self.patience <= self.stale
