"""`classifier`: the ViT-DSI's encoder with a class head, a label-matched baseline for the DSI.

The "classification" reading of the ViT-DSI paper (Di Stefano) and of Tay et al. 2022: the
same labels and encoder as the DSI; corpus images are ranked by predicted class (label
group), then by cosine similarity. Details: docs/design.md, "Label-matched baselines".
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from vitdsi.data.imageset import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.log import get_logger
from vitdsi.models.vit_encoder import VitEncoderConfig
from vitdsi.models.vit_heads import VitClassifier
from vitdsi.ranking import Ranking, topk_ties_to_lower
from vitdsi.retrievers.base import Supervision
from vitdsi.retrievers.params import fields_of
from vitdsi.retrievers.registry import register
from vitdsi.retrievers.vit_baseline import SEARCH_BATCH, TINY_VIT, VitBaseline
from vitdsi.training.config import TrainConfig
from vitdsi.training.optim import autocast

log = get_logger(__name__)

GROUP_GAP = 4.0  # score distance between consecutive groups; > 2, the range of a cosine


@register("classifier")
class Classifier(VitBaseline):
    """ViT encoder + class head; ranks corpus images by predicted class, then by cosine."""

    # at most
    supervision: ClassVar[Supervision] = Supervision(corpus_labels=True, query_pairs=True, pretrained=True)
    query_defaults: ClassVar[dict[str, Any]] = {}
    config_params = (*VitBaseline.config_params, *fields_of(TrainConfig, "label_smoothing"))
    smoke_params: ClassVar[dict[str, Any]] = TINY_VIT
    label_smoothing: float  # a config_param, declared for type checkers (Retriever.__init__ sets it)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise VitDSIError(f"classifier: label_smoothing must be in [0, 1), got {self.label_smoothing}")
        self._multilabel = False
        self._corpus_emb: torch.Tensor | None = None  # float32 [N, D] L2-normalised pooled embeddings
        self._groups: torch.Tensor | None = None  # float32 [G, C] multi-hot label set of each group
        self._group_of: torch.Tensor | None = None  # int64 [N] group of each corpus image

    def supervision_used(self) -> Supervision:
        return Supervision(corpus_labels=True, query_pairs=self.use_queries, pretrained=self.encoder != "vit")

    # ---- labels -----------------------------------------------------------------------
    @staticmethod
    def _n_classes(*sets: ImageSet) -> int:
        n = max(s.n_classes for s in sets)
        for s in sets:
            n = max(n, s.labels.shape[1] if s.multilabel else int(s.labels.max()) + 1 if len(s) else 0)
        return n

    @staticmethod
    def _multi_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
        """bool [N, C] label sets; a class label of -1 (unlabelled) is the empty set."""
        if labels.ndim == 2:
            return labels.bool()
        out = torch.zeros(len(labels), n_classes, dtype=torch.bool)
        known = labels >= 0
        out[known.nonzero()[:, 0], labels[known]] = True
        return out

    # ---- indexing ---------------------------------------------------------------------
    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        enc_cfg = self._encoder_config(corpus.image_size)
        queries = (
            train_queries if self.use_queries and train_queries is not None and len(train_queries) else None
        )
        if queries is not None and queries.multilabel != corpus.multilabel:
            raise VitDSIError(
                "classifier: the corpus and the train queries must both be single-label or both multi-label"
            )
        self._multilabel = corpus.multilabel
        sets = [corpus] if queries is None else [corpus, queries]
        n_classes = self._n_classes(*sets)
        corpus_hot = self._multi_hot(corpus.labels.cpu(), n_classes)
        if n_classes < 1 or not corpus_hot.any():
            raise VitDSIError(
                "classifier: the corpus has no labels (every label is -1 / every category row is empty); the "
                "classifier learns from and ranks by labels: use a labelled dataset or a label-free retriever"
            )
        if queries is None:
            log.info(
                "classifier: no train queries%s; training on the corpus labels only",
                "" if self.use_queries else " (use_queries=False)",
            )

        # training examples: corpus then train queries, gathered by index from the uint8 images
        parts = [s.images.to(self.device) for s in sets]
        if self._multilabel:
            targets = torch.cat([self._multi_hot(s.labels.cpu(), n_classes) for s in sets]).float()
            train_idx = torch.arange(len(targets))  # empty rows are negatives for every category
        else:
            targets = torch.cat([s.labels.cpu() for s in sets])
            train_idx = (targets >= 0).nonzero()[:, 0]
        targets = targets.to(self.device)
        gen = torch.Generator().manual_seed(self.seed)
        self._model = VitClassifier(enc_cfg, n_classes).to(self.device)
        model = self._model
        parts = self._training_rows(parts, hosts=[s.images for s in sets])

        def batches() -> list[torch.Tensor]:
            return list(train_idx[torch.randperm(len(train_idx), generator=gen)].split(self.batch_size))

        def step(idx: torch.Tensor):
            idx = idx.to(self.device)
            logits = model(self._rows(parts, idx, gen), self._precomputed)[0].float()  # [B, C]
            y = targets[idx]
            if self._multilabel:
                loss = F.binary_cross_entropy_with_logits(logits, y)
                right = y.gather(
                    1, logits.argmax(1, keepdim=True)
                ).sum()  # top category is one of the image's
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
                right = (logits.argmax(1) == y).sum()
            return loss, len(idx), right

        def rank(queries: torch.Tensor, k: int) -> torch.Tensor:  # validation checkpoints: the real search
            self._build_index(corpus.images, corpus_hot)
            return self._search(queries, k).ids

        steps = -(-len(train_idx) // self.batch_size)
        self._train("classify", batches, step, steps, rank)
        self._build_index(corpus.images, corpus_hot)

    def _build_index(self, images: torch.Tensor, hot: torch.Tensor) -> None:
        """The index: normalised pooled embeddings of the corpus `images` and the groups of their label
        sets."""
        with self._reading_indexed_images():  # a frozen encoder part's output: from the feature cache
            self._corpus_emb = self.predict(images)[1].to(self.device)
        groups, group_of = torch.unique(hot.to(torch.uint8), dim=0, return_inverse=True)
        self._groups, self._group_of = groups.float().to(self.device), group_of.long().to(self.device)

    def _add(self, images: ImageSet, train_queries: ImageSet | None) -> None:
        # no retraining: the added images join the groups of their labels, ranked by the trained head
        n_classes = self._groups.shape[1]
        labels = images.labels.cpu()
        width = labels.shape[1] if images.multilabel else int(labels.max()) + 1
        if (
            images.multilabel != self._multilabel
            or width > n_classes
            or (images.multilabel and width != n_classes)
        ):
            raise VitDSIError(
                "classifier: the added images' labels "
                f"({'multi-label' if images.multilabel else 'single-label'}, {width} classes) do not fit the "
                f"trained head ({n_classes} classes); index the corpus again"
            )
        hot = torch.cat([self._groups[self._group_of].bool().cpu(), self._multi_hot(labels, n_classes)])
        self._corpus_emb = torch.cat([self._corpus_emb, self.predict(images.images)[1].to(self.device)])
        groups, group_of = torch.unique(hot.to(torch.uint8), dim=0, return_inverse=True)
        self._groups, self._group_of = groups.float().to(self.device), group_of.long().to(self.device)

    # ---- search -----------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [n, 3, H, W] -> class probabilities [n, C] (softmax, or per-category
        sigmoid for multi-label data) and L2-normalised pooled embeddings [n, D], float32 on CPU."""
        probs, embs = [], []
        for x, precomputed in self._batched(images):
            with autocast(self.device, self.precision):
                logits, pooled = self._model(x, precomputed)
            logits = logits.float()
            probs.append((logits.sigmoid() if self._multilabel else logits.softmax(-1)).cpu())
            embs.append(F.normalize(pooled.float(), dim=-1).cpu())
        return torch.cat(probs), torch.cat(embs)

    def _search(self, images: torch.Tensor, k: int) -> Ranking:
        probs, emb = self.predict(images)
        ids, scores = [], []
        n_groups = len(self._groups)
        for s in range(0, len(probs), SEARCH_BATCH):
            p, q = probs[s : s + SEARCH_BATCH].to(self.device), emb[s : s + SEARCH_BATCH].to(self.device)
            group_score = p @ self._groups.T  # [B, G]: summed probability of each group's label set
            group_score = torch.where(self._groups.any(1), group_score, -1.0)  # unlabelled images last
            order = torch.sort(
                group_score, dim=1, descending=True, stable=True
            ).indices  # ties: lower group first
            rank = torch.empty_like(order).scatter_(
                1, order, torch.arange(n_groups, device=order.device).expand_as(order)
            )
            cos = q @ self._corpus_emb.T  # [B, N]
            # lexicographic: group, then cosine
            key = cos.double() - GROUP_GAP * rank[:, self._group_of].double()
            pos, val = topk_ties_to_lower(key, k)
            ids.append(pos)
            scores.append(val.float())
        return Ranking(torch.cat(ids).long().cpu(), torch.cat(scores).cpu())

    # ---- persistence ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "encoder": self._model.cfg.to_dict(),
            "n_classes": self._model.n_classes,
            "multilabel": self._multilabel,
            "model": {k: v.detach().cpu() for k, v in self._model.state_dict().items()},
            "corpus_embeddings": self._corpus_emb.cpu(),
            "groups": self._groups.cpu(),
            "group_of": self._group_of.cpu(),
            "history": self.history,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self._model = VitClassifier(VitEncoderConfig(**state["encoder"]), state["n_classes"]).to(self.device)
        self._model.load_state_dict(state["model"])
        self._model.eval()
        self._multilabel = bool(state["multilabel"])
        self._corpus_emb = state["corpus_embeddings"].to(self.device)
        self._groups = state["groups"].to(self.device)
        self._group_of = state["group_of"].to(self.device)
        self.history = list(state.get("history", []))
