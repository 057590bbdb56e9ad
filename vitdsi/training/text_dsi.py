"""Training a DSI on images and captions: indexing (image -> id) and retrieval (caption -> id).

The multitask recipe of the DSI paper (Tay et al. 2022, section 3.1: indexing and retrieval
examples in every batch) with one twist: the indexing examples are images, the
retrieval examples are captions of the indexed images, and one id decoder learns both. It is
`vitdsi.training.dsi.DSITrainer` with the train queries replaced by captions: every batch encodes its
images and its captions apart, pads both memories to one length and decodes them together
(padding masked). A fixed text encoder gives a caption the same token states every epoch, so
they are computed once. Shapes: Q captions, L tokens, Dt text width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vitdsi.errors import VitDSIError
from vitdsi.models.text_models import VitTextDSI
from vitdsi.training.config import TrainConfig
from vitdsi.training.dsi import DSITrainer
from vitdsi.training.optim import autocast
from vitdsi.training.sampler import RelevantSampler
from vitdsi.training.train_views import apply_views
from vitdsi.training.view_bank import features_and_bank

STATES_BATCH = 256  # captions encoded together when their token states are cached


@dataclass(frozen=True)
class TextRows:
    """Captions as training rows: token ids, or the fixed text encoder's token states, and the mask."""

    x: torch.Tensor  # int64 [Q, L] token ids, or float [Q, L, Dt] token states (`precomputed`)
    mask: torch.Tensor  # int64 [Q, L] attention mask, padding on the right
    precomputed: bool  # x holds token states

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def rows(self, index: torch.Tensor) -> TextRows:
        """Rows `index`, cut to the longest of them."""
        mask = self.mask[index]
        width = max(1, int(mask.sum(1).max())) if len(index) else 1
        return TextRows(self.x[index, :width], mask[:, :width], self.precomputed)


@dataclass(frozen=True)
class MixedBatch:
    """One training batch: images (indexing rows) and captions (retrieval rows)."""

    images: torch.Tensor  # model input of the rows where `from_corpus`
    text: TextRows  # the other rows
    from_corpus: torch.Tensor  # bool [B]


class TextDSITrainer(DSITrainer):
    """DSITrainer whose retrieval examples are captions, each targeting the id of its own image."""

    def __init__(
        self,
        model: VitTextDSI,
        corpus_images: torch.Tensor,  # uint8 [N, C, H, W], on the training device
        targets: torch.Tensor,  # int64 [N, L] id digits (seq2seq) or [N, 1] corpus position (atomic)
        cfg: TrainConfig,
        *,
        captions: Sequence[str] | None = None,  # the retrieval examples (mode fine-tuned / multitask)
        caption_image: torch.Tensor | None = None,  # int64 [Q]: the corpus position each caption describes
        callback=None,
        monitor=None,
        corpus_on_cpu: torch.Tensor | None = None,  # corpus_images' CPU copy, where the caller has it
    ) -> None:
        corpus_keys = torch.arange(len(corpus_images))  # a caption's only target is its own image's id
        super().__init__(
            model,
            corpus_images,
            targets,
            cfg,
            query_images=captions,
            query_labels=caption_image,
            corpus_labels=corpus_keys,
            callback=callback,
            monitor=monitor,
            corpus_on_cpu=corpus_on_cpu,
        )

    def _set_queries(self, captions, caption_image, corpus_keys) -> None:
        if captions is None or caption_image is None or len(captions) == 0:
            raise VitDSIError(
                f"mode '{self.cfg.mode}' learns caption -> id from the captions of the indexed images, "
                "but the corpus carries none; use a captioned dataset or mode='zero-shot'"
            )
        self.sampler = RelevantSampler(torch.as_tensor(caption_image, dtype=torch.int64), corpus_keys)
        text = self.model.text
        batch = text.encoder.tokenize(list(captions))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if not text.encoder.fixed:
            self.queries = TextRows(ids.to(self.device), mask.to(self.device), False)
            return
        states = None
        with torch.no_grad(), autocast(self.device):
            for s in range(0, len(ids), STATES_BATCH):  # the fixed encoder's states, once per caption
                m = mask[s : s + STATES_BATCH].to(self.device)
                out = text.states(ids[s : s + STATES_BATCH].to(self.device), m).float() * m[..., None]
                if states is None:
                    states = torch.zeros((len(ids), ids.shape[1], out.shape[-1]), device=self.device)
                states[s : s + len(out), : out.shape[1]] = out
        self.queries = TextRows(states, mask.to(self.device), True)

    def _precompute(self, hosts: list[torch.Tensor | None]) -> None:
        cfg, meter = self.cfg, self.monitor.meter
        # the captions' states are not images: only the corpus
        (self.corpus,), self.bank = features_and_bank(
            self.model.encoder, [self.corpus], cfg.view_bank, cfg.views, cfg.seed, meter, hosts[:1]
        )

    def _gather(self, index: torch.Tensor, src: torch.Tensor, target_pos: torch.Tensor):
        index, src, target_pos = index.to(self.device), src.to(self.device), target_pos.to(self.device)
        from_corpus = src == 0
        rows = index[from_corpus]
        if self.bank is not None:
            x = self.bank.draw(torch.zeros_like(rows), rows, self.gen)
        else:
            x = apply_views(self._input(self.corpus[rows]), self.gen, self.cfg.views)
        text = self.queries.rows(index[~from_corpus]) if self.queries is not None else None
        return MixedBatch(x, text, from_corpus), self.targets[target_pos], from_corpus

    def _memory(self, x) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(x, torch.Tensor):  # images only (greedy IA@1 on the corpus)
            return super()._memory(x)
        parts = []  # (rows, memory, mask) of the image rows and of the caption rows
        if x.from_corpus.any():
            memory = self.model.encode(x.images, self.precomputed)
            parts.append(
                (x.from_corpus, memory, torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device))
            )
        if not x.from_corpus.all():
            t = x.text
            parts.append((~x.from_corpus, self.model.encode_text(t.x, t.mask, t.precomputed), t.mask.bool()))
        width = max(m.shape[1] for _, m, _ in parts)
        first = parts[0][1]
        memory = first.new_zeros((len(x.from_corpus), width, first.shape[2]))
        mask = torch.zeros((len(x.from_corpus), width), dtype=torch.bool, device=first.device)
        for rows, m, valid in parts:
            memory[rows, : m.shape[1]] = m.to(memory.dtype)
            mask[rows, : m.shape[1]] = valid
        return memory, mask
