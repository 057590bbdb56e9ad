"""`dsi-vit`: a Vision Transformer Differentiable Search Index (ViT-DSI paper; Tay et al. 2022).

Indexing trains the model to map every corpus image to its id; a query is answered by
prefix-constrained beam search over the valid ids. Modes, ids and continual indexing (DSI++,
Mehta et al. 2022): docs/design.md, "Id schemes" and "The DSI model and its training".
"""

from __future__ import annotations

from typing import Any

import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.models.vit_dsi import VitDSI, VitDSIConfig
from vitdsi.retrievers.base import Ranking, Retriever, Supervision, fields_of, register
from vitdsi.retrievers.vit_baseline import ENCODER_PARAMS, check_encoder_params, check_patch_size
from vitdsi.train import DSITrainer, TrainConfig, autocast, to_input

SEARCH_BATCH = 256  # queries decoded together
ADD_STRATEGIES = ("new-only", "replay", "full")


@register("dsi-vit")
class DSIViT(Retriever):
    """Seq2seq ViT that generates the ids of relevant corpus images (or an atomic softmax head)."""

    supervision = Supervision(corpus_labels=True, query_pairs=True, pretrained=True)  # at most; see supervision_used
    reports_epochs = True
    query_defaults = {"beam_size": 10}  # hypotheses kept per decoding step (at least k are kept)
    config_params = (  # the model's and the trainer's fields, named and defaulted there
        *fields_of(VitDSIConfig, *ENCODER_PARAMS, "decoder_depth"),
        *fields_of(TrainConfig, "mode", "index_epochs", "retrieval_epochs", "lr", "batch_size", "weight_decay",
                   "warmup_frac", "min_lr_frac", "grad_clip", "label_smoothing", "augment", "target_ia", "eval_every",
                   "ia_sample", "precision"),
    )

    def __init__(
        self,
        *,
        id_scheme: str = "random",
        id_length: int = 0,
        id_features: str = "pixels",
        add_strategy: str = "replay",
        replay_share: float = 0.25,
        add_epochs: int = 0,
        **params: Any,
    ) -> None:
        from vitdsi.ids import ID_SCHEMES

        super().__init__(**params)
        self.id_scheme = str(id_scheme)  # 'random', 'clustered', 'semantic', 'rq' or 'atomic'
        self.id_length = int(id_length)  # digits per id; 0 = the fewest for the corpus (more = room to add)
        # what semantic / rq ids cluster: 'pixels', 'efficientnet-lite0' or a torchvision backbone
        # (vitdsi.features.backbones, local weights only), or 'own': the DSI's own encoder (a borrowed
        # one as pretrained; the ViT after an indexing phase with atomic ids); never labels
        self.id_features = str(id_features)
        self.add_strategy = str(add_strategy)  # how add() trains: 'new-only', 'replay' or 'full'
        self.replay_share = float(replay_share)  # replay: share of the old images trained beside the new
        self.add_epochs = int(add_epochs)  # epoch budget of an add step (stops at target_ia); 0 = index_epochs
        if self.add_strategy not in ADD_STRATEGIES:
            raise VitDSIError(f"dsi-vit: add_strategy must be one of {', '.join(ADD_STRATEGIES)}, got '{add_strategy}'")
        if not 0.0 <= self.replay_share <= 1.0:
            raise VitDSIError(f"dsi-vit: replay_share must be in [0, 1], got {replay_share}")
        if self.id_scheme not in ID_SCHEMES:
            raise VitDSIError(f"dsi-vit: id_scheme must be one of {', '.join(ID_SCHEMES)}, got '{id_scheme}'")
        check_encoder_params(self.name, self)
        if self.decoder_depth is not None and self.decoder_depth < 1:
            raise VitDSIError(f"dsi-vit: decoder_depth must be >= 1 or None (= depth), got {self.decoder_depth}")
        try:
            self.config(TrainConfig)  # the trainer's own checks (mode, lr, batch_size, epochs)
        except VitDSIError as e:
            raise VitDSIError(f"dsi-vit: {e}") from None
        self.history: list[dict[str, Any]] = []  # per-epoch training log (EpochLog dicts)
        self._model = None
        self._ids = None
        self._trie = None
        # what add() trains on besides the new images: the indexed images and the train queries
        # seen so far (held in memory only; an index loaded from disk adds `new-only`)
        self._seen: tuple[ImageSet, ImageSet | None] | None = None

    def supervision_used(self) -> Supervision:
        # clustered ids number the corpus class by class; fine-tuning / multitask train on query pairs;
        # semantic / rq ids on a pretrained backbone's features, or a borrowed encoder, carry what it
        # learnt from ImageNet labels
        borrowed = self.encoder != "vit" or (
            self.id_scheme in ("semantic", "rq") and self.id_features not in ("pixels", "own"))
        return Supervision(corpus_labels=self.id_scheme == "clustered", query_pairs=self.mode != "zero-shot",
                           pretrained=borrowed)

    # ---- indexing ----------------------------------------------------------------------
    def _model_config(self, image_size: int, id_length: int, n_ids: int) -> VitDSIConfig:
        return self.config(VitDSIConfig, image_size=image_size, id_length=id_length,
                           atomic=self.id_scheme == "atomic", n_ids=n_ids)

    def check_image_size(self, image_size: int) -> None:
        if self.encoder == "vit":  # a borrowed encoder resizes images to its own input size
            check_patch_size(self.name, self.patch_size, image_size)

    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        from vitdsi.ids import make_ids

        self.check_image_size(corpus.image_size)
        n = len(corpus)
        features, encoder_state, self.history = None, None, []
        if self.id_scheme in ("semantic", "rq") and self.id_features == "own":
            features, encoder_state = self._own_encoder_features(corpus)
        elif self.id_scheme in ("semantic", "rq"):
            features = self._id_feature_vectors(corpus.images)
        self._ids = make_ids(self.id_scheme, n, labels=corpus.primary_labels(), features=features, seed=self.seed,
                             length=self.id_length)
        self._model = VitDSI(self._model_config(corpus.image_size, self._ids.length, n)).to(self.device)
        if encoder_state is not None:  # go on from the encoder that made the ids
            self._model.encoder.load_state_dict(encoder_state)
        self.history += self._fit(corpus, torch.arange(n), self._ids.codes, train_queries, self.mode, self.index_epochs)
        self._seen = (corpus, train_queries)
        self._finish()

    def _own_encoder_features(self, corpus: ImageSet) -> tuple[torch.Tensor, dict | None]:
        """float32 [N, D] features of the corpus from the DSI's own encoder, and the encoder state the
        model starts from. A borrowed encoder: its pretrained feature map, mean-pooled, before any
        training. The ViT: trained first to index the corpus with atomic ids (one softmax unit per
        image; no label, no query), then its mean-pooled encodings; that epoch log is kept in
        `history` under the phase 'own-ids'."""
        from vitdsi.models.borrowed_encoder import BorrowedEncoder

        n, images = len(corpus), corpus.images
        if self.encoder != "vit":
            net = BorrowedEncoder(self._model_config(corpus.image_size, 1, n)).to(self.device).eval()
            pooled = lambda x: net.tuned(net.precompute(x)).mean(dim=(2, 3))  # noqa: E731  (the CNN's own map)
            state = None
        else:
            cfg = self.config(VitDSIConfig, image_size=corpus.image_size, id_length=1, atomic=True, n_ids=n)
            self._model = VitDSI(cfg).to(self.device)
            log = self._fit(corpus, torch.arange(n), torch.arange(n)[:, None], None, "zero-shot", self.index_epochs)
            self.history = [{**e, "phase": "own-ids"} for e in log]
            net = self._model.encoder.eval()
            pooled, state = net.embed, net.state_dict()
        with torch.inference_mode():
            return torch.cat([pooled(to_input(images[s : s + SEARCH_BATCH].to(self.device))).float().cpu()
                              for s in range(0, n, SEARCH_BATCH)]), state

    def _id_feature_vectors(self, images: torch.Tensor) -> torch.Tensor:
        """float32 [N, D] features the semantic / rq ids cluster (`id_features`), on the CPU."""
        if self.id_features == "pixels":
            return images.float().flatten(1)
        from vitdsi.features.backbones import load_backbone

        net = load_backbone(self.id_features, self.device)
        with torch.inference_mode():
            return torch.cat([net(images[s : s + 64]).cpu() for s in range(0, len(images), 64)])

    def _fit(self, corpus: ImageSet, positions: torch.Tensor, codes: torch.Tensor, train_queries: ImageSet | None,
             mode: str, index_epochs: int, seed: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """Train on the images of `corpus` at `positions` with target ids `codes` and, unless `mode`
        is zero-shot, on `train_queries` paired with relevant images among them. `offset`: the
        index position of corpus image 0 (what a view's source position is counted from)."""
        from vitdsi.data.relevance import relevance_keys

        use_queries = mode != "zero-shot" and train_queries is not None
        query_keys, corpus_keys = None, corpus.labels
        if use_queries:  # pairs come from what decides relevance: shared labels, or a view's own source
            if train_queries.view_of is not None and offset:
                query_keys = torch.as_tensor(train_queries.view_of, dtype=torch.int64)
                corpus_keys = torch.arange(offset, offset + len(corpus))
            else:
                query_keys, corpus_keys = relevance_keys(train_queries, corpus)
        trainer = DSITrainer(
            self._model, corpus.images[positions].to(self.device), codes,
            self.config(TrainConfig, mode=mode, index_epochs=index_epochs, seed=self.seed if seed is None else seed),
            query_images=train_queries.images if use_queries else None,
            query_labels=query_keys, corpus_labels=corpus_keys[positions.to(corpus_keys.device)], callback=self.on_epoch,
        )
        return [e.to_dict() for e in trainer.fit()]

    # ---- continual indexing (DSI++) ----------------------------------------------------
    def _add(self, images: ImageSet, train_queries: ImageSet | None) -> None:
        from vitdsi.ids import extend_ids
        from vitdsi.retrievers.base import seed_everything

        n_old, m = self.corpus_size, len(images)
        if self._seen is None and self.add_strategy != "new-only":
            raise VitDSIError(
                f"dsi-vit: add_strategy '{self.add_strategy}' trains on the images indexed before, which an index "
                "loaded from disk does not hold; use add_strategy='new-only' or index the whole corpus again"
            )
        self._ids = extend_ids(self._ids, m, labels=images.primary_labels(), seed=self.seed + n_old)
        if self._ids.atomic:
            self._grow_atomic_head(m)
        # without new train queries an add step writes the images in (indexing task) only
        mode = "multitask" if self.mode != "zero-shot" and train_queries is not None else "zero-shot"
        epochs, seed = self.add_epochs or self.index_epochs, self.seed + n_old  # each step shuffles afresh
        if self._seen is None:  # new-only on a loaded index: the new images are all it has
            log = self._fit(images, torch.arange(m), self._ids.codes[n_old:], train_queries, mode, epochs, seed,
                            offset=n_old)
        else:
            old_corpus, old_queries = self._seen
            corpus = old_corpus.concat(images)
            queries = old_queries.concat(train_queries) if old_queries is not None and train_queries is not None \
                else old_queries if train_queries is None else train_queries
            self._seen = (corpus, queries)
            if self.add_strategy == "full":  # from scratch on everything, as index() on the union would
                seed_everything(self.seed)
                self._model = VitDSI(self._model.cfg).to(self.device)
                everything = torch.arange(len(corpus))
                log = self._fit(corpus, everything, self._ids.codes, queries, self.mode, self.index_epochs)
            else:
                positions = torch.arange(n_old, n_old + m)
                if self.add_strategy == "replay" and self.replay_share > 0:
                    gen = torch.Generator().manual_seed(seed)
                    replay = torch.randperm(n_old, generator=gen)[: round(self.replay_share * n_old)]
                    positions = torch.cat([replay.sort().values, positions])
                log = self._fit(corpus, positions, self._ids.codes[positions], train_queries, mode, epochs, seed)
        self.history += [{**e, "add_step": n_old} for e in log]
        self._finish()

    def _grow_atomic_head(self, m: int) -> None:
        """The atomic softmax head gains m rows (new images); the old rows are kept as trained."""
        import dataclasses

        from vitdsi.models.vit_encoder import init_weights

        old = self._model.head
        head = torch.nn.Linear(old.in_features, old.out_features + m).to(self.device)
        init_weights(head)
        with torch.no_grad():
            head.weight[: old.out_features] = old.weight
            head.bias[: old.out_features] = old.bias
        self._model.head = head
        self._model.cfg = dataclasses.replace(self._model.cfg, n_ids=old.out_features + m)

    def _finish(self) -> None:
        from vitdsi.models.decoding import IdTrie

        self._model.eval()
        self._trie = None if self._ids.atomic else IdTrie.build(self._ids.codes).to(self.device)

    # ---- search ------------------------------------------------------------------------
    def _search(self, images: torch.Tensor, k: int) -> Ranking:
        from vitdsi.models.decoding import atomic_topk, beam_search

        beam = int(self.query_args["beam_size"])
        if beam < 1:
            raise VitDSIError(f"dsi-vit: beam_size must be >= 1, got {beam}")
        ids, scores = [], []
        self._model.eval()
        for s in range(0, images.shape[0], SEARCH_BATCH):
            x = to_input(images[s : s + SEARCH_BATCH].to(self.device))
            with autocast(self.device):
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
