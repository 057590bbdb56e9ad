"""What the retrievers that train the ViT-DSI's encoder with another head share.

`VitModelRetriever`: encoder and training build parameters as the DSI's (fields of
`VitEncoderConfig`, `LoopConfig`, `TrainConfig`), the training images, their views, the epoch
loop and batched inference (`text-dual-encoder` builds on it). `VitBaseline` adds `use_queries`:
the label-matched baselines of the ViT-DSI (`classifier`, `dual-encoder`). Neither is registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from vitdsi.errors import VitDSIError
from vitdsi.models.vit_encoder import VitEncoderConfig
from vitdsi.retrievers.encoder_base import ENCODER_PARAMS, EncoderRetriever, check_encoder_params
from vitdsi.retrievers.params import fields_of
from vitdsi.training.augment import to_input
from vitdsi.training.cached_features import trains_on_cached_features
from vitdsi.training.config import PRECISIONS, TrainConfig
from vitdsi.training.flops import FlopMeter
from vitdsi.training.loop import LoopConfig, train_epochs
from vitdsi.training.monitor import MonitorConfig, RankFn, TrainingMonitor
from vitdsi.training.train_views import apply_views, check_view_bank, check_views
from vitdsi.training.view_bank import ViewBank, features_and_bank

SEARCH_BATCH = 256  # images encoded together at index and query time
# the smoke settings of the ViT retrievers other than the DSI: a tiny encoder of the DSI's family, a few
# epochs
TINY_VIT = {
    "patch_size": 8,
    "dim": 32,
    "ff_dim": 64,
    "depth": 1,
    "heads": 2,
    "dropout": 0.0,
    "epochs": 3,
    "lr": 2e-3,
    "batch_size": 32,
}


class VitModelRetriever(EncoderRetriever):
    """A ViT encoder with a retrieval head other than the DSI's id decoder (abstract)."""

    reports_epochs = True
    config_params = (
        *fields_of(VitEncoderConfig, *ENCODER_PARAMS),
        *fields_of(
            LoopConfig, "epochs", "lr", "weight_decay", "warmup_frac", "min_lr_frac", "grad_clip", "precision"
        ),
        *fields_of(TrainConfig, "batch_size", "views", "view_bank"),
        *fields_of(MonitorConfig, "patience", "val_every", "min_delta"),
    )
    # config_params beyond the encoder's, declared for type checkers (Retriever.__init__ sets them)
    epochs: int
    lr: float
    weight_decay: float
    warmup_frac: float
    min_lr_frac: float
    grad_clip: float
    precision: str
    batch_size: int
    views: str
    view_bank: int
    patience: int
    val_every: int
    min_delta: float

    def __init__(self, *, seed: int = 0, device: str | None = None, **params: Any) -> None:
        super().__init__(seed=seed, device=device, **params)
        name = self.name or type(self).__name__
        check_encoder_params(name, self)
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise VitDSIError(
                f"{name}: need epochs >= 0, batch_size >= 1 and lr > 0, got epochs={self.epochs}, "
                f"batch_size={self.batch_size}, lr={self.lr}"
            )
        if self.precision not in PRECISIONS:
            raise VitDSIError(
                f"{name}: precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'"
            )
        try:
            check_views(self.views)
            check_view_bank(self.view_bank, self.views, self.encoder, self.freeze_encoder)
            self.config(MonitorConfig)
        except VitDSIError as e:
            raise VitDSIError(f"{name}: {e}") from None
        self.history: list[dict[str, Any]] = []  # per-epoch training log (dicts), as in dsi-vit
        self._model: torch.nn.Module | None = None
        self._precomputed = False  # training reads a borrowed encoder's fixed-part output, not images
        self._bank: ViewBank | None = None  # with `view_bank`: the features of the training views
        self._feature_meter: FlopMeter | None = None  # FLOPs of that output, computed once before training

    def _encoder_config(self, image_size: int) -> VitEncoderConfig:
        """The VitEncoderConfig for `image_size` px images."""
        self.check_image_size(image_size)
        return self.config(VitEncoderConfig, image_size=image_size)

    # ---- training ---------------------------------------------------------------------
    def _train(
        self,
        phase: str,
        batches: Callable[[], list[Any]],
        step,
        steps_per_epoch: int,
        rank: RankFn | None = None,
    ) -> None:
        """Run the epoch loop on `self._model`; fills `self.history` and `self.training_record`.
        `rank(queries, k)` ranks the corpus with the model as it is (the validation checkpoints);
        without it, or without validation queries, training runs to its epoch cap."""
        meter, self._feature_meter = self._feature_meter or FlopMeter(), None
        monitor = TrainingMonitor(self.config(MonitorConfig), self.validation, rank, self._model, meter)
        self.history = train_epochs(
            self._model,
            self.config(LoopConfig),
            phase,
            batches,
            step,
            steps_per_epoch=steps_per_epoch,
            device=self.device,
            callback=self.on_epoch,
            monitor=monitor,
        )
        self.training_record = monitor.record()

    def _training_rows(
        self, parts: list[torch.Tensor], hosts: list[torch.Tensor | None] | None = None
    ) -> list[torch.Tensor]:
        """The training images as every epoch reads them: uint8 images or, for a borrowed encoder
        with a fixed part and `views` none or a `view_bank`, that part's output computed once (as
        dsi-vit; the bank beside it); the model is then called with `precomputed=True`. `hosts`:
        the parts' CPU copies where the caller has them, which the feature cache hashes instead of
        copying the parts back from the device."""
        self._precomputed = trains_on_cached_features(self._model.encoder, self.views, self.view_bank)
        self._bank = None
        if not self._precomputed:
            return parts
        self._feature_meter = FlopMeter()
        # charged once: the fixed part's forward pass over every image (and every view of the bank)
        features, self._bank = features_and_bank(
            self._model.encoder, parts, self.view_bank, self.views, self.seed, self._feature_meter, hosts
        )
        return features

    def _rows(self, parts: list[torch.Tensor], index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Model input of rows `index` of the training parts (`_training_rows`, numbered one after
        the other): a version of each drawn from the view bank, or a fresh view of each."""
        if self._bank is not None:
            return self._bank.draw_rows(index, gen)
        return self._train_input(gather_rows(parts, index), gen)

    def _train_input(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Training rows (`_training_rows`) -> model input: a fresh view of each image at `views`
        strength (`vitdsi.training.train_views`, the family dsi-vit indexes with)."""
        if self._precomputed:
            return images
        return apply_views(to_input(images), gen, self.views)

    # ---- inference --------------------------------------------------------------------
    def _batched(self, images: torch.Tensor) -> Iterator[tuple[torch.Tensor, bool]]:
        """Model inputs of uint8 images, SEARCH_BATCH at a time, on the device, and whether they are
        the encoder's fixed-part output (indexed images, `search_indexed`: read from the feature
        cache) rather than images."""
        fixed = self._indexed_fixed_features(self._model.encoder, images)
        for s in range(0, images.shape[0], SEARCH_BATCH):
            if fixed is not None:
                yield fixed[s : s + SEARCH_BATCH].to(self.device), True
            else:
                yield to_input(images[s : s + SEARCH_BATCH].to(self.device)), False

    # ---- extras for the harness -------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module | None:
        """The trained model (None before indexing)."""
        return self._model


class VitBaseline(VitModelRetriever):
    """A label-matched baseline: learns from the corpus and, with `use_queries`, the train queries
    (abstract)."""

    def __init__(
        self, *, use_queries: bool = True, seed: int = 0, device: str | None = None, **params: Any
    ) -> None:
        super().__init__(seed=seed, device=device, **params)
        self.use_queries = bool(use_queries)  # also learn from the train queries given to index()


def gather_rows(parts: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """Rows `index` of the concatenation of `parts` without building it: one masked copy per
    part (corpus, then train queries), no per-image loop."""
    if len(parts) == 1:
        return parts[0][index]
    out = torch.empty((len(index), *parts[0].shape[1:]), dtype=parts[0].dtype, device=parts[0].device)
    start = 0
    for part in parts:
        mask = (index >= start) & (index < start + len(part))
        out[mask] = part[index[mask] - start]
        start += len(part)
    return out
