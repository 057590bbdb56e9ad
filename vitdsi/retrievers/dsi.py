"""`dsi-vit`: a Vision Transformer Differentiable Search Index (ViT-DSI paper; Tay et al. 2022).

Indexing trains the model to map every corpus image to its id; the index *is* the model
weights, the id map and the trie of valid ids, so a saved index answers queries with no
access to the corpus. A query image is answered by prefix-constrained beam search over
the valid ids (one softmax step for atomic ids). Modes: `zero-shot` (indexing only),
`fine-tuned` (indexing, then train queries -> relevant ids) and `multitask` (indexing,
then both tasks mixed in every batch). Model and training code live in
`vitdsi.models` and `vitdsi.train`, imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.retrievers.base import Ranking, Retriever, Supervision, register

SEARCH_BATCH = 256  # queries decoded together


@register("dsi-vit")
class DSIViT(Retriever):
    """Seq2seq ViT that generates the ids of relevant corpus images (or an atomic softmax head)."""

    supervision = Supervision(corpus_labels=True, query_pairs=True)
    query_defaults = {"beam_size": 10}  # hypotheses kept per decoding step (at least k are kept)
    smoke_params = {
        "patch_size": 8, "dim": 32, "ff_dim": 64, "depth": 1, "heads": 2, "dropout": 0.0,
        "id_scheme": "clustered", "mode": "multitask", "index_epochs": 3, "retrieval_epochs": 2,
        "lr": 2e-3, "batch_size": 32,
    }

    def __init__(
        self,
        *,
        patch_size: int = 16,
        dim: int = 128,
        ff_dim: int = 256,
        depth: int = 6,
        decoder_depth: int | None = None,
        heads: int = 4,
        dropout: float = 0.1,
        pos_encoding: str = "sinusoidal",
        id_scheme: str = "random",
        mode: str = "zero-shot",
        index_epochs: int = 200,
        retrieval_epochs: int = 30,
        lr: float = 5e-4,
        batch_size: int = 32,
        weight_decay: float = 0.01,
        augment: bool = False,
        target_ia: float = 0.99,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        from vitdsi.ids import ID_SCHEMES
        from vitdsi.train import MODES

        super().__init__(seed=seed, device=device)
        self.patch_size = int(patch_size)  # side of a square patch; must divide the corpus image size
        self.dim = int(dim)  # model width
        self.ff_dim = int(ff_dim)  # feed-forward hidden width
        self.depth = int(depth)  # encoder layers (and decoder layers unless decoder_depth is set)
        self.decoder_depth = None if decoder_depth is None else int(decoder_depth)  # decoder layers; None = depth
        self.heads = int(heads)  # attention heads
        self.dropout = float(dropout)  # dropout rate in every block
        self.pos_encoding = str(pos_encoding)  # 'sinusoidal' or 'learned'
        self.id_scheme = str(id_scheme)  # 'random', 'clustered', 'semantic' or 'atomic'
        self.mode = str(mode)  # 'zero-shot', 'fine-tuned' or 'multitask'
        self.index_epochs = int(index_epochs)  # indexing epoch budget (stops early at target_ia)
        self.retrieval_epochs = int(retrieval_epochs)  # fine-tuning / multitask epochs
        self.lr = float(lr)  # peak AdamW learning rate (warm-up, then cosine decay)
        self.batch_size = int(batch_size)  # training batch size
        self.weight_decay = float(weight_decay)  # AdamW weight decay
        self.augment = bool(augment)  # random shifts of training images
        self.target_ia = float(target_ia)  # indexing stops when greedy IA@1 reaches this
        if self.id_scheme not in ID_SCHEMES:
            raise VitDSIError(f"dsi-vit: id_scheme must be one of {', '.join(ID_SCHEMES)}, got '{id_scheme}'")
        if self.mode not in MODES:
            raise VitDSIError(f"dsi-vit: mode must be one of {', '.join(MODES)}, got '{mode}'")
        if self.pos_encoding not in ("sinusoidal", "learned"):
            raise VitDSIError(f"dsi-vit: pos_encoding must be 'sinusoidal' or 'learned', got '{pos_encoding}'")
        if self.dim % self.heads:
            raise VitDSIError(f"dsi-vit: heads ({heads}) must divide dim ({dim})")
        # per-epoch training log (EpochLog dicts) and an optional hook the harness sets to
        # receive each EpochLog as it happens (return True to stop training)
        self.history: list[dict[str, Any]] = []
        self.on_epoch: Callable[[Any], bool | None] | None = None
        self._model = None
        self._ids = None
        self._trie = None

    def supervision_used(self) -> Supervision:
        # clustered ids number the corpus class by class; fine-tuning / multitask train on query pairs
        return Supervision(corpus_labels=self.id_scheme == "clustered", query_pairs=self.mode != "zero-shot")

    # ---- indexing ----------------------------------------------------------------------
    def _model_config(self, image_size: int, id_length: int, n_ids: int):
        from vitdsi.models.vit_dsi import VitDSIConfig

        return VitDSIConfig(
            image_size=image_size, channels=3, patch_size=self.patch_size, dim=self.dim, ff_dim=self.ff_dim,
            depth=self.depth, decoder_depth=self.decoder_depth, heads=self.heads, dropout=self.dropout, pos_encoding=self.pos_encoding,
            id_length=id_length, atomic=self.id_scheme == "atomic", n_ids=n_ids,
        )

    def check_image_size(self, image_size: int) -> None:
        from vitdsi.retrievers.vit_baseline import check_patch_size

        check_patch_size(self.name, self.patch_size, image_size)

    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        from vitdsi.data.relevance import relevance_keys
        from vitdsi.ids import make_ids
        from vitdsi.models.vit_dsi import VitDSI
        from vitdsi.train import DSITrainer, TrainConfig

        self.check_image_size(corpus.image_size)
        n = len(corpus)
        features = corpus.images.float().flatten(1) if self.id_scheme == "semantic" else None
        self._ids = make_ids(self.id_scheme, n, labels=corpus.primary_labels(), features=features, seed=self.seed)
        cfg = self._model_config(corpus.image_size, self._ids.length, n)
        self._model = VitDSI(cfg).to(self.device)
        use_queries = self.mode != "zero-shot" and train_queries is not None
        train_cfg = TrainConfig(
            mode=self.mode, index_epochs=self.index_epochs, retrieval_epochs=self.retrieval_epochs, lr=self.lr,
            batch_size=self.batch_size, weight_decay=self.weight_decay, augment=self.augment,
            target_ia=self.target_ia, seed=self.seed,
        )
        # training pairs come from what decides relevance: shared labels, or a view's own source
        query_keys, corpus_keys = relevance_keys(train_queries, corpus) if use_queries else (None, corpus.labels)
        trainer = DSITrainer(
            self._model, corpus.images.to(self.device), self._ids.codes, train_cfg,
            query_images=train_queries.images if use_queries else None,
            query_labels=query_keys, corpus_labels=corpus_keys, callback=self.on_epoch,
        )
        self.history = [e.to_dict() for e in trainer.fit()]
        self._finish()

    def _finish(self) -> None:
        from vitdsi.models.decoding import IdTrie

        self._model.eval()
        self._trie = None if self._ids.atomic else IdTrie.build(self._ids.codes).to(self.device)

    # ---- search ------------------------------------------------------------------------
    def _search(self, images: torch.Tensor, k: int) -> Ranking:
        from vitdsi.models.decoding import atomic_topk, beam_search
        from vitdsi.train import _autocast, to_input

        beam = int(self.query_args["beam_size"])
        if beam < 1:
            raise VitDSIError(f"dsi-vit: beam_size must be >= 1, got {beam}")
        ids, scores = [], []
        self._model.eval()
        for s in range(0, images.shape[0], SEARCH_BATCH):
            x = to_input(images[s : s + SEARCH_BATCH].to(self.device))
            with _autocast(self.device):
                if self._ids.atomic:
                    pos, sc = atomic_topk(self._model, x, k)
                else:
                    pos, sc = beam_search(self._model, x, self._trie, k, beam)
            ids.append(pos)
            scores.append(sc.float())
        return Ranking(torch.cat(ids).long(), torch.cat(scores))

    # ---- persistence -------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "config": self._model.cfg.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self._model.state_dict().items()},
            "ids": self._ids.state(),
            "history": self.history,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        from vitdsi.ids import IdMap
        from vitdsi.models.vit_dsi import VitDSI, VitDSIConfig

        self._ids = IdMap.from_state(state["ids"])
        self._model = VitDSI(VitDSIConfig(**state["config"])).to(self.device)
        self._model.load_state_dict(state["model"])
        self.history = list(state.get("history", []))
        self._finish()

    # ---- extras for the harness --------------------------------------------------------
    @property
    def model(self):
        """The trained VitDSI (None before indexing)."""
        return self._model

    @property
    def id_map(self):
        """The IdMap of the indexed corpus (None before indexing)."""
        return self._ids
