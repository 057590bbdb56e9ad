"""What the DSI retrievers (`dsi-vit`, `dsi-text`) share: ids, the model, decoding and persistence.

A ViT-DSI (ViT-DSI paper; Tay et al. 2022) indexes a corpus by training a model to write each
image's id; its index *is* the weights, the id map and the trie of valid ids. This base class
makes the ids (every scheme of `vitdsi.ids`, semantic / rq on any `id_features`), builds the
model, decodes a batch of encoded queries by prefix-constrained beam search (or the atomic
head) and saves / loads the index. Subclasses say what the model reads and how it trains:
docs/design.md, "Id schemes" and "The DSI model and its training". Not registered itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.features.backbones import load_backbone
from vitdsi.ids import ID_SCHEMES, IdMap, make_ids
from vitdsi.models.borrowed_encoder import BorrowedEncoder
from vitdsi.models.decoding import IdTrie, atomic_topk_memory, beam_search_memory
from vitdsi.models.vit_dsi import VitDSI, VitDSIConfig
from vitdsi.ranking import Ranking
from vitdsi.retrievers.base import Supervision
from vitdsi.retrievers.encoder_base import ENCODER_PARAMS, EncoderRetriever, check_encoder_params
from vitdsi.retrievers.params import fields_of
from vitdsi.training.augment import to_input
from vitdsi.training.cached_features import precompute_features
from vitdsi.training.config import TrainConfig
from vitdsi.training.dsi import DSITrainer
from vitdsi.training.flops import FlopMeter
from vitdsi.training.monitor import MonitorConfig, TrainingMonitor
from vitdsi.training.optim import autocast
from vitdsi.training.train_views import check_view_bank

SEARCH_BATCH = 256  # queries decoded together
EXTENDABLE_SCHEMES = ("random", "clustered", "atomic")  # the id schemes vitdsi.ids.extend_ids extends
# the tiny model and recipe of the DSIs' smoke settings (each adds its ids and epochs)
SMOKE_MODEL: dict[str, Any] = {
    "patch_size": 8,
    "dim": 64,
    "ff_dim": 128,
    "depth": 2,
    "decoder_depth": 1,
    "heads": 4,
    "dropout": 0.0,
    "mode": "multitask",
    "lr": 1e-3,
    "batch_size": 16,
    "views": "none",
}


class DSIRetriever(EncoderRetriever):
    """A VitDSI-family model that writes the ids of corpus images (abstract)."""

    # at most; see supervision_used
    supervision = Supervision(corpus_labels=True, query_pairs=True, pretrained=True)
    reports_epochs = True
    query_defaults = {"beam_size": 10}  # hypotheses kept per decoding step (at least k are kept)
    config_params = (  # the model's and the trainer's fields, named and defaulted there
        *fields_of(VitDSIConfig, *ENCODER_PARAMS, "decoder_depth"),
        *fields_of(
            TrainConfig,
            "mode",
            "index_epochs",
            "retrieval_epochs",
            "lr",
            "batch_size",
            "weight_decay",
            "warmup_frac",
            "min_lr_frac",
            "grad_clip",
            "label_smoothing",
            "views",
            "index_views",
            "view_bank",
            "target_ia",
            "eval_every",
            "ia_patience",
            "ia_min_delta",
            "ia_floor",
            "ia_sample",
            "precision",
        ),
        *fields_of(MonitorConfig, "patience", "val_every", "min_delta"),
    )
    # config_params beyond the encoder's, declared for type checkers (Retriever.__init__ sets them)
    decoder_depth: int | None
    mode: str
    index_epochs: int
    retrieval_epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    warmup_frac: float
    min_lr_frac: float
    grad_clip: float
    label_smoothing: float
    views: str
    index_views: int
    view_bank: int
    target_ia: float
    eval_every: int
    ia_patience: int
    ia_min_delta: float
    ia_floor: float
    ia_sample: int
    precision: str
    patience: int
    val_every: int
    min_delta: float

    def __init__(
        self, *, id_scheme: str = "random", id_length: int = 0, id_features: str = "pixels", **params: Any
    ) -> None:
        super().__init__(**params)
        self.id_scheme = str(id_scheme)  # 'random', 'clustered', 'semantic', 'rq' or 'atomic'
        self.id_length = int(id_length)  # digits per id; 0 = the fewest for the corpus (more = room to add)
        # what semantic / rq ids cluster: 'pixels', 'efficientnet-lite0' or a torchvision backbone
        # (vitdsi.features.backbones, local weights only), or 'own': the DSI's own encoder (a borrowed
        # one as pretrained; the ViT after an indexing phase with atomic ids); never labels
        self.id_features = str(id_features)
        if self.id_scheme not in ID_SCHEMES:
            raise VitDSIError(
                f"{self.name}: id_scheme must be one of {', '.join(ID_SCHEMES)}, got '{id_scheme}'"
            )
        check_encoder_params(self.name, self)
        if self.decoder_depth is not None and self.decoder_depth < 1:
            raise VitDSIError(
                f"{self.name}: decoder_depth must be >= 1 or None (= depth), got {self.decoder_depth}"
            )
        try:
            self.config(TrainConfig)  # the trainer's own checks (mode, lr, batch_size, epochs)
            check_view_bank(self.view_bank, self.views, self.encoder, self.freeze_encoder)
            self.config(MonitorConfig)
        except VitDSIError as e:
            raise VitDSIError(f"{self.name}: {e}") from None
        self.history: list[dict[str, Any]] = []  # per-epoch training log (EpochLog dicts)
        self._model: VitDSI | None = None
        self._ids = None
        self._trie = None
        self._meter = FlopMeter()  # the training FLOPs of the index call under way

    def _image_supervision(self) -> Supervision:
        """What the ids and the image encoder bring: clustered ids number the corpus class by class;
        semantic / rq ids on a pretrained backbone's features, or a borrowed encoder, carry what it
        learnt from ImageNet labels."""
        borrowed = self.encoder != "vit" or (
            self.id_scheme in ("semantic", "rq") and self.id_features not in ("pixels", "own")
        )
        return Supervision(corpus_labels=self.id_scheme == "clustered", pretrained=borrowed)

    # ---- the model ---------------------------------------------------------------------
    def _model_config(self, image_size: int, id_length: int, n_ids: int) -> VitDSIConfig:
        return self.config(
            VitDSIConfig,
            image_size=image_size,
            id_length=id_length,
            atomic=self.id_scheme == "atomic",
            n_ids=n_ids,
        )

    def _new_model(self, cfg: VitDSIConfig) -> VitDSI:
        """The model of this retriever for `cfg` (a subclass's adds what else it reads)."""
        return VitDSI(cfg)

    def _start_index(self, corpus: ImageSet) -> None:
        """The ids of `corpus` and a fresh model for them (`history` restarts)."""
        self.check_image_size(corpus.image_size)
        n = len(corpus)
        features, encoder_state, self.history = None, None, []
        self._meter, self._trie = FlopMeter(), None
        if self.id_scheme in ("semantic", "rq") and self.id_features == "own":
            features, encoder_state = self._own_encoder_features(corpus)
        elif self.id_scheme in ("semantic", "rq"):
            features = self._id_feature_vectors(corpus.images)
        self._ids = make_ids(
            self.id_scheme,
            n,
            labels=corpus.primary_labels(),
            features=features,
            seed=self.seed,
            length=self.id_length,
        )
        self._model = self._new_model(self._model_config(corpus.image_size, self._ids.length, n)).to(
            self.device
        )
        if encoder_state is not None:  # go on from the encoder that made the ids
            self._model.encoder.load_state_dict(encoder_state)

    def _train_images(self, images: torch.Tensor, codes: torch.Tensor, epochs: int) -> list[dict[str, Any]]:
        """Indexing only (zero-shot): `self._model` learns to write `codes` for uint8 `images`."""
        trainer = DSITrainer(
            self._model,
            images.to(self.device),
            codes,
            self.config(TrainConfig, mode="zero-shot", index_epochs=epochs, seed=self.seed),
            callback=self.on_epoch,
            monitor=TrainingMonitor.passive(self._meter),
        )
        return [e.to_dict() for e in trainer.fit()]

    def _monitor(self) -> TrainingMonitor:
        """The monitor of the index call's training: its validation queries, scored by this DSI's
        own constrained search, and the FLOPs counted so far (an own-ids phase included)."""
        return TrainingMonitor(
            self.config(MonitorConfig), self.validation, self._validation_rank, self._model, self._meter
        )

    def _validation_rank(self, queries: Any, k: int) -> torch.Tensor:
        if self._trie is None and not self._ids.atomic:
            self._trie = IdTrie.build(self._ids.codes).to(self.device)
        return self._search(queries, k).ids

    def _own_encoder_features(self, corpus: ImageSet) -> tuple[torch.Tensor, dict | None]:
        """float32 [N, D] features of the corpus from the DSI's own encoder, and the encoder state the
        model starts from. A borrowed encoder: its pretrained feature map, mean-pooled, before any
        training. The ViT: trained first to index the corpus with atomic ids (one softmax unit per
        image; no label, no query), then its mean-pooled encodings; that epoch log is kept in
        `history` under the phase 'own-ids'."""
        n, images = len(corpus), corpus.images
        if self.encoder != "vit":
            net = BorrowedEncoder(self._model_config(corpus.image_size, 1, n)).to(self.device).eval()
            if net.cacheable:  # the fixed part's output as training will read it: one extraction
                return self._borrowed_map_features(net, images), None
            pooled = lambda x: net.tuned(net.precompute(x)).mean(dim=(2, 3))  # noqa: E731  (the CNN's own map)
            state = None
        else:
            cfg = self.config(VitDSIConfig, image_size=corpus.image_size, id_length=1, atomic=True, n_ids=n)
            self._model = VitDSI(cfg).to(self.device)
            log = self._train_images(images, torch.arange(n)[:, None], self.index_epochs)
            self.history = [{**e, "phase": "own-ids"} for e in log]
            net = self._model.encoder.eval()
            pooled, state = net.embed, net.state_dict()
        with torch.inference_mode():
            return torch.cat(
                [
                    pooled(to_input(images[s : s + SEARCH_BATCH].to(self.device))).float().cpu()
                    for s in range(0, n, SEARCH_BATCH)
                ]
            ), state

    def _borrowed_map_features(self, net: BorrowedEncoder, images: torch.Tensor) -> torch.Tensor:
        """float32 [N, C]: a borrowed encoder's feature map, mean-pooled, its fixed part's output
        read through the feature cache under the key training reads it by (same encoder, images
        and preprocessing), so an index call extracts it once, not once for the ids and again
        to train."""
        fixed = precompute_features(net, [images.to(self.device)], hosts=[images])[0]
        with torch.inference_mode():
            return torch.cat(
                [
                    net.tuned(fixed[s : s + SEARCH_BATCH].to(self.device)).mean(dim=(2, 3)).float().cpu()
                    for s in range(0, len(fixed), SEARCH_BATCH)
                ]
            )

    def _id_feature_vectors(self, images: torch.Tensor) -> torch.Tensor:
        """float32 [N, D] features the semantic / rq ids cluster (`id_features`), on the CPU."""
        if self.id_features == "pixels":
            return images.float().flatten(1)
        net = load_backbone(self.id_features, self.device)
        with torch.inference_mode():
            return torch.cat([net(images[s : s + 64]).cpu() for s in range(0, len(images), 64)])

    def _finish(self) -> None:
        self._model.eval()
        self._trie = None if self._ids.atomic else IdTrie.build(self._ids.codes).to(self.device)

    # ---- search ------------------------------------------------------------------------
    def _decode(
        self,
        batches: Iterable[Any],
        encode: Callable[[Any], tuple[torch.Tensor, torch.Tensor | None]],
        k: int,
    ) -> Ranking:
        """Top-k corpus positions for batches of queries, each encoded by `encode` into a memory
        [B, P, D] and its padding mask (or None): the atomic head, or beam search over the trie of
        valid ids."""
        beam = int(self.query_args["beam_size"])
        if beam < 1:
            raise VitDSIError(f"{self.name}: beam_size must be >= 1, got {beam}")
        ids, scores = [], []
        self._model.eval()
        for batch in batches:
            with torch.no_grad(), autocast(self.device, self.precision):
                memory, mask = encode(batch)
                if self._ids.atomic:
                    pos, sc = atomic_topk_memory(self._model, memory, k, mask)
                else:
                    pos, sc = beam_search_memory(self._model, memory, self._trie, k, beam, mask)
            ids.append(pos)
            scores.append(sc.float())
        return Ranking(torch.cat(ids).long(), torch.cat(scores))

    # ---- persistence -------------------------------------------------------------------
    def _model_state(self) -> dict[str, Any]:
        """What `_model_from_state` needs to rebuild the trained model."""
        return {
            "config": self._model.cfg.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self._model.state_dict().items()},
        }

    def _model_from_state(self, state: dict[str, Any]) -> VitDSI:
        model = VitDSI(VitDSIConfig(**state["config"])).to(self.device)
        model.load_state_dict(state["model"])
        return model

    def _state(self) -> dict[str, Any]:
        return {**self._model_state(), "ids": self._ids.state(), "history": self.history}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._ids = IdMap.from_state(state["ids"])
        self._model = self._model_from_state(state)
        self.history = list(state.get("history", []))
        self._finish()

    # ---- extras for the harness --------------------------------------------------------
    @property
    def supports_add(self) -> bool:
        """Adding needs ids for the new images: not for the semantic and rq schemes."""
        return super().supports_add and self.id_scheme in EXTENDABLE_SCHEMES

    @property
    def model(self):
        """The trained model (None before indexing)."""
        return self._model

    def effective_beam(self, k: int) -> int | None:
        """Hypotheses the beam search keeps at each step when asked for k results: max(beam_size, k),
        as it keeps at least k; None for atomic ids (one softmax step, no beam)."""
        if self.id_scheme == "atomic":
            return None
        return max(int(self.query_args["beam_size"]), int(k))

    def search_info(self, k: int) -> dict[str, float]:
        """`search_beam` (the hypotheses kept per step, `effective_beam`; not for atomic ids) and,
        once indexed, `id_length` (tokens per id, L)."""
        out = {}
        beam = self.effective_beam(k)
        if beam is not None:
            out["search_beam"] = float(beam)
        if self._ids is not None:
            out["id_length"] = float(self._ids.length)
        return out

    @property
    def id_map(self):
        """The IdMap of the indexed corpus (None before indexing)."""
        return self._ids
