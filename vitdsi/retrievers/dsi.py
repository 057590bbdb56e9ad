"""`dsi-vit`: a Vision Transformer Differentiable Search Index (ViT-DSI paper; Tay et al. 2022).

Indexing trains the model to map every corpus image to its id; a query is answered by
prefix-constrained beam search over the valid ids. Modes, ids and continual indexing (DSI++,
Mehta et al. 2022): docs/design.md, "Id schemes" and "The DSI model and its training".
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.data.relevance import relevance_keys
from vitdsi.errors import VitDSIError
from vitdsi.ids import extend_ids
from vitdsi.models.decoding import IdTrie
from vitdsi.models.vit_dsi import VitDSI
from vitdsi.models.vit_encoder import init_weights
from vitdsi.ranking import Ranking
from vitdsi.retrievers.base import Supervision, seed_everything
from vitdsi.retrievers.dsi_base import SEARCH_BATCH, SMOKE_MODEL, DSIRetriever
from vitdsi.retrievers.registry import register
from vitdsi.training.augment import to_input
from vitdsi.training.config import TrainConfig
from vitdsi.training.dsi import DSITrainer
from vitdsi.training.monitor import TrainingMonitor

ADD_STRATEGIES = ("new-only", "replay", "full")


@register("dsi-vit")
class DSIViT(DSIRetriever):
    """Seq2seq ViT that generates the ids of relevant corpus images (or an atomic softmax head)."""

    # ~30 s a trial on one CPU core: enough epochs for 64 indexed digits to be memorised
    smoke_params: ClassVar[dict[str, Any]] = {
        **SMOKE_MODEL,
        "id_scheme": "clustered",
        "index_epochs": 100,
        "retrieval_epochs": 60,
    }

    def __init__(
        self,
        *,
        add_strategy: str = "replay",
        replay_share: float = 0.25,
        replay_queries: float = 0.0,
        add_epochs: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(**params)
        self.add_strategy = str(add_strategy)  # how add() trains: 'new-only', 'replay' or 'full'
        self.replay_share = float(replay_share)  # replay: share of the old images trained beside the new
        # replay: share of the train queries seen so far trained again beside the step's own (the
        # retrieval task's replay; 0 = the old images only, and an add step without new train
        # queries then trains the indexing task alone)
        self.replay_queries = float(replay_queries)
        # epoch budget of an add step (stops at target_ia); 0 = index_epochs
        self.add_epochs = int(add_epochs)
        if self.add_strategy not in ADD_STRATEGIES:
            raise VitDSIError(
                f"dsi-vit: add_strategy must be one of {', '.join(ADD_STRATEGIES)}, got '{add_strategy}'"
            )
        if not 0.0 <= self.replay_share <= 1.0:
            raise VitDSIError(f"dsi-vit: replay_share must be in [0, 1], got {replay_share}")
        if not 0.0 <= self.replay_queries <= 1.0:
            raise VitDSIError(f"dsi-vit: replay_queries must be in [0, 1], got {replay_queries}")
        # what add() trains on besides the new images: the indexed images and the train queries
        # seen so far (held in memory only; an index loaded from disk adds `new-only`)
        self._seen: tuple[ImageSet, ImageSet | None] | None = None

    def supervision_used(self) -> Supervision:
        # fine-tuning / multitask train on query pairs; the ids and the encoder: DSIRetriever
        image = self._image_supervision()
        return Supervision(
            corpus_labels=image.corpus_labels,
            query_pairs=self.mode != "zero-shot",
            pretrained=image.pretrained,
        )

    # ---- indexing ----------------------------------------------------------------------
    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        self._start_index(corpus)
        monitor = self._monitor()
        self.history += self._fit(
            corpus,
            torch.arange(len(corpus)),
            self._ids.codes,
            train_queries,
            self.mode,
            self.index_epochs,
            monitor=monitor,
        )
        self.training_record = monitor.record()
        self._seen = (corpus, train_queries)
        self._finish()

    def _fit(
        self,
        corpus: ImageSet,
        positions: torch.Tensor,
        codes: torch.Tensor,
        train_queries: ImageSet | None,
        mode: str,
        index_epochs: int,
        seed: int | None = None,
        offset: int = 0,
        monitor: TrainingMonitor | None = None,
    ) -> list[dict[str, Any]]:
        """Train on the images of `corpus` at `positions` with target ids `codes` and, unless `mode`
        is zero-shot, on `train_queries` paired with relevant images among them. `offset`: the
        index position of corpus image 0 (what a view's source position is counted from)."""
        use_queries = mode != "zero-shot" and train_queries is not None
        query_keys, corpus_keys = None, corpus.labels
        if use_queries:  # pairs come from what decides relevance: shared labels, or a view's own source
            if train_queries.view_of is not None and offset:
                query_keys = torch.as_tensor(train_queries.view_of, dtype=torch.int64)
                corpus_keys = torch.arange(offset, offset + len(corpus))
            else:
                query_keys, corpus_keys = relevance_keys(train_queries, corpus)
        images = corpus.images[positions]
        trainer = DSITrainer(
            self._model,
            images.to(self.device),
            codes,
            self.config(
                TrainConfig, mode=mode, index_epochs=index_epochs, seed=self.seed if seed is None else seed
            ),
            query_images=train_queries.images if use_queries else None,
            query_labels=query_keys,
            corpus_labels=corpus_keys[positions.to(corpus_keys.device)],
            callback=self.on_epoch,
            monitor=monitor,
            corpus_on_cpu=images,
        )
        del images  # a copy on the host, of no use once the trainer has the device's
        return [e.to_dict() for e in trainer.fit()]

    # ---- continual indexing (DSI++) ----------------------------------------------------
    def _add(self, images: ImageSet, train_queries: ImageSet | None) -> None:
        n_old, m = self.corpus_size, len(images)
        if self._seen is None and self.add_strategy != "new-only":
            raise VitDSIError(
                f"dsi-vit: add_strategy '{self.add_strategy}' trains on the images indexed before, which an "
                "index loaded from disk does not hold; use add_strategy='new-only' or index the whole "
                "corpus again"
            )
        self._ids = extend_ids(self._ids, m, labels=images.primary_labels(), seed=self.seed + n_old)
        if self._ids.atomic:
            self._grow_atomic_head(m)
        epochs, seed = self.add_epochs or self.index_epochs, self.seed + n_old  # each step shuffles afresh
        if self._seen is None:  # new-only on a loaded index: the new images are all it has
            log = self._fit(
                images,
                torch.arange(m),
                self._ids.codes[n_old:],
                train_queries,
                self._step_mode(train_queries),
                epochs,
                seed,
                offset=n_old,
            )
        else:
            old_corpus, old_queries = self._seen
            corpus = old_corpus.concat(images)
            queries = (
                old_queries.concat(train_queries)
                if old_queries is not None and train_queries is not None
                else old_queries
                if train_queries is None
                else train_queries
            )
            self._seen = (corpus, queries)
            if self.add_strategy == "full":  # from scratch on everything, as index() on the union would
                seed_everything(self.seed)
                self._model = VitDSI(self._model.cfg).to(self.device)
                everything = torch.arange(len(corpus))
                log = self._fit(corpus, everything, self._ids.codes, queries, self.mode, self.index_epochs)
            else:
                positions, step_queries = torch.arange(n_old, n_old + m), train_queries
                if self.add_strategy == "replay":
                    positions, step_queries = self._replayed(
                        n_old, positions, old_queries, train_queries, seed
                    )
                log = self._fit(
                    corpus,
                    positions,
                    self._ids.codes[positions],
                    step_queries,
                    self._step_mode(step_queries),
                    epochs,
                    seed,
                )
        self.history += [{**e, "add_step": n_old} for e in log]
        self._finish()

    def _step_mode(self, queries: ImageSet | None) -> str:
        """An add step's training mode: without train queries it writes the images in (indexing task) only."""
        return "multitask" if self.mode != "zero-shot" and queries is not None else "zero-shot"

    def _replayed(
        self,
        n_old: int,
        new_positions: torch.Tensor,
        old_queries: ImageSet | None,
        new_queries: ImageSet | None,
        seed: int,
    ) -> tuple[torch.Tensor, ImageSet | None]:
        """A replay step's corpus positions (a seeded `replay_share` of the old ones, then the new)
        and train queries (a seeded `replay_queries` share of those seen so far, then the step's)."""
        positions, queries = new_positions, new_queries
        if self.replay_share > 0:
            gen = torch.Generator().manual_seed(seed)
            replay = torch.randperm(n_old, generator=gen)[: round(self.replay_share * n_old)]
            positions = torch.cat([replay.sort().values, positions])
        n_replayed = round(self.replay_queries * len(old_queries)) if old_queries is not None else 0
        if n_replayed > 0:  # paired with relevant images among the trained positions only
            gen = torch.Generator().manual_seed(seed + 1)
            replayed = old_queries.subset(
                torch.randperm(len(old_queries), generator=gen)[:n_replayed].sort().values
            )
            queries = replayed if new_queries is None else replayed.concat(new_queries)
        return positions, queries

    def _grow_atomic_head(self, m: int) -> None:
        """The atomic softmax head gains m rows (new images); the old rows are kept as trained."""
        old = self._model.head
        head = torch.nn.Linear(old.in_features, old.out_features + m).to(self.device)
        init_weights(head)
        with torch.no_grad():
            head.weight[: old.out_features] = old.weight
            head.bias[: old.out_features] = old.bias
        self._model.head = head
        self._model.cfg = dataclasses.replace(self._model.cfg, n_ids=old.out_features + m)

    def _finish(self) -> None:
        self._model.eval()
        self._trie = None if self._ids.atomic else IdTrie.build(self._ids.codes).to(self.device)

    # ---- search ------------------------------------------------------------------------
    def _search(self, images: torch.Tensor, k: int) -> Ranking:
        fixed = self._indexed_fixed_features(self._model.encoder, images)
        if fixed is not None:  # indexed images (`search_indexed`): the fixed part's cached output
            batches = (fixed[s : s + SEARCH_BATCH] for s in range(0, len(fixed), SEARCH_BATCH))
            return self._decode(batches, lambda x: (self._model.encode(x.to(self.device), True), None), k)
        batches = (images[s : s + SEARCH_BATCH] for s in range(0, images.shape[0], SEARCH_BATCH))
        return self._decode(batches, lambda x: (self._model.encode(to_input(x.to(self.device))), None), k)
