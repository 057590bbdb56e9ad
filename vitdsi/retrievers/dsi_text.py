"""`dsi-text`: a DSI that answers caption queries with image ids (after Tay et al. 2022).

One id decoder, two encoders. Indexing trains image -> own id through the image encoder (the
ViT or a borrowed CNN, as `dsi-vit`); retrieval trains caption -> id through a text encoder (a
pretrained MiniLM or a small text transformer) whose token states are projected to the
decoder width, on the captions the indexed images carry. `mode: multitask` (the default, the
DSI paper's recipe) mixes both in every batch after an indexing warm start. A caption query is
decoded with the same id schemes and constrained beam search (or atomic head) as `dsi-vit`.
docs/design.md, "Text queries".
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar

import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.models.text_encoder import (
    TEXT_ENCODER_PARAMS,
    TextEncoderConfig,
    TextEncoderParams,
    load_saved_state,
    saved_state,
)
from vitdsi.models.text_models import VitTextDSI
from vitdsi.models.vit_dsi import VitDSIConfig
from vitdsi.ranking import Ranking
from vitdsi.retrievers.base import Supervision
from vitdsi.retrievers.dsi_base import SEARCH_BATCH, SMOKE_MODEL, DSIRetriever
from vitdsi.retrievers.params import fields_of, with_defaults
from vitdsi.retrievers.registry import register
from vitdsi.training.config import TrainConfig
from vitdsi.training.text_dsi import TextDSITrainer


@register("dsi-text")
class DSIText(DSIRetriever, TextEncoderParams):
    """Seq2seq DSI that writes the ids of the images a caption describes; indexes images, learns captions."""

    query_kind = "text"
    # at most; see supervision_used
    supervision = Supervision(corpus_labels=True, captions=True, pretrained=True)
    config_params = (
        *with_defaults(DSIRetriever.config_params, mode="multitask"),
        *fields_of(TextEncoderConfig, *TEXT_ENCODER_PARAMS),
    )
    # the text protocol on coco-mosaic: frozen MiniLM, a tiny image encoder
    smoke_params: ClassVar[dict[str, Any]] = {
        **SMOKE_MODEL,
        "id_scheme": "atomic",
        "index_epochs": 40,
        "retrieval_epochs": 40,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        try:
            self.config(TextEncoderConfig)
        except VitDSIError as e:
            raise VitDSIError(f"dsi-text: {e}") from None

    def supervision_used(self) -> Supervision:
        # zero-shot trains on images only; a MiniLM text encoder brings its own pretraining
        image = self._image_supervision()
        return Supervision(
            corpus_labels=image.corpus_labels,
            captions=self.mode != "zero-shot",
            pretrained=image.pretrained or self.text_encoder == "minilm",
        )

    def _new_model(self, cfg: VitDSIConfig):
        return VitTextDSI(cfg, self.config(TextEncoderConfig))

    # ---- indexing ----------------------------------------------------------------------
    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        captions = corpus.captions if self.mode != "zero-shot" else None
        if self.mode != "zero-shot" and (captions is None or not len(captions)):
            raise VitDSIError(
                f"dsi-text: mode '{self.mode}' learns caption -> id from the captions the indexed images "
                "carry, but the corpus has none; use a captioned dataset (coco, coco-mosaic) under the "
                "text protocol, or mode='zero-shot'"
            )
        self._start_index(corpus)
        monitor = self._monitor()
        trainer = TextDSITrainer(
            self._model,
            corpus.images.to(self.device),
            self._ids.codes,
            self.config(TrainConfig, seed=self.seed),
            captions=None if captions is None else captions.texts.tolist(),
            caption_image=None if captions is None else torch.as_tensor(captions.image, dtype=torch.int64),
            callback=self.on_epoch,
            monitor=monitor,
            corpus_on_cpu=corpus.images,
        )
        self.history += [e.to_dict() for e in trainer.fit()]
        self.training_record = monitor.record()
        self._finish()

    # ---- search ------------------------------------------------------------------------
    def _search(self, texts: list[str], k: int) -> Ranking:
        batch = self._model.text.encoder.tokenize(texts)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        # batches of similar length: little padding
        order = torch.argsort(mask.sum(1), descending=True, stable=True)

        def encode(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            width = int(mask[rows].sum(1).max())
            m = mask[rows, :width].to(self.device)
            return self._model.encode_text(ids[rows, :width].to(self.device), m), m.bool()

        ranking = self._decode(torch.split(order, SEARCH_BATCH), encode, k)
        out_ids, out_scores = torch.empty_like(ranking.ids), torch.empty_like(ranking.scores)
        out_ids[order], out_scores[order] = ranking.ids.cpu(), ranking.scores.cpu()
        return Ranking(out_ids, out_scores)

    # ---- persistence -------------------------------------------------------------------
    def _model_state(self) -> dict[str, Any]:
        return {
            "config": self._model.cfg.to_dict(),
            "text_config": asdict(self._model.text_cfg),
            "model": saved_state(self._model),
        }  # without the weights MiniLM's package ships

    def _model_from_state(self, state: dict[str, Any]):
        model = VitTextDSI(VitDSIConfig(**state["config"]), TextEncoderConfig(**state["text_config"]))
        load_saved_state(model, state["model"])
        return model.to(self.device)
