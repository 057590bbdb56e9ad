"""Training settings retrievers take as build parameters (`OptimConfig`, `TrainConfig`) and the
per-epoch log of the DSI trainer (`EpochLog`); docs/design.md, "The DSI model and its training"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from vitdsi.errors import VitDSIError
from vitdsi.training.train_views import check_view_bank, check_views

MODES = ("zero-shot", "fine-tuned", "multitask")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, and gradient clipping: the optimiser settings
    of every trainer (`TrainConfig`, `vitdsi.training.loop.LoopConfig`); retrievers take them
    as build parameters under these names and defaults."""

    lr: float = 5e-4  # peak learning rate (the paper's; 1e-3 stalls random ids at small scale)
    weight_decay: float = 0.01  # AdamW decoupled weight decay on matrices (not on norms/biases)
    warmup_frac: float = 0.03  # fraction of a phase's steps spent warming the lr up linearly
    min_lr_frac: float = 0.05  # cosine decays the lr to this fraction of the peak
    grad_clip: float = 1.0  # max global gradient norm
    # arithmetic of training and of search: 'auto' = mixed precision on CUDA (bf16, else fp16),
    # float32 on the CPU; 'fp32' everywhere; 'bf16' = bf16 autocast on CUDA and on the CPU too
    # (fast on CPUs with AMX / AVX512-BF16, slow on others)
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
    # training views of every training image (vitdsi.training.train_views): 'none', 'light', 'medium',
    # 'strong'
    views: str = "none"
    # pseudo-query views: each indexing epoch presents every indexed image K more times, each a fresh
    # view at `views` strength labelled with its id (N * (1 + K) indexing examples an epoch)
    index_views: int = 0
    # a borrowed encoder with a fixed part only: V > 0 makes V views of every training image once and
    # computes them through the fixed part once; every presentation then draws one of them or the
    # image itself (vitdsi.training.view_bank); 0 = a fresh view every batch
    view_bank: int = 0
    target_ia: float = 0.99  # indexing stops once greedy IA@1 on the corpus reaches this
    eval_every: int = 10  # also measure IA@1 every this many indexing epochs
    # IA@1 plateau: indexing also stops, below target_ia, after this many IA@1 measurements in a row
    # without a gain of more than ia_min_delta over the best so far (0 = off: the target or the cap)
    ia_patience: int = 0
    ia_min_delta: float = 0.01  # the IA@1 gain that counts as progress for ia_patience
    # readings below this IA@1 do not count toward ia_patience: a DSI that has not begun to memorise
    # (a seq2seq id's first epochs, a few dozen optimizer steps at small N) is not on a plateau
    ia_floor: float = 0.05
    seed: int = 0  # order, targets and augmentation
    # corpus images the IA@1 stop test decodes during indexing (a seeded sample); 0 = all of them.
    # The trial still measures IA@1 on every indexed image afterwards
    ia_sample: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ia_patience < 0 or self.ia_min_delta < 0 or not 0 <= self.ia_floor <= 1:
            raise VitDSIError(
                f"need ia_patience >= 0, ia_min_delta >= 0 and 0 <= ia_floor <= 1, got ia_patience="
                f"{self.ia_patience}, ia_min_delta={self.ia_min_delta}, ia_floor={self.ia_floor}"
            )
        if self.ia_sample < 0:
            raise VitDSIError(f"ia_sample must be >= 0 (0 = every indexed image), got {self.ia_sample}")
        if self.mode not in MODES:
            raise VitDSIError(f"mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.batch_size < 1 or self.lr <= 0:
            raise VitDSIError("batch_size must be >= 1 and lr > 0")
        if self.index_epochs < 0 or self.retrieval_epochs < 0:
            raise VitDSIError("index_epochs and retrieval_epochs must be >= 0")
        check_views(self.views, self.index_views)
        check_view_bank(self.view_bank, self.views)


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
