"""A fixed bank of V training views per image, for trainers on a borrowed encoder's fixed part.

With fresh views every batch (`vitdsi.training.train_views`) the fixed part of a frozen encoder
runs on every batch, by far the dearest part of training on a CPU. With `view_bank: V`, V views
of every training image are made once, at the `views` strength, seeded by the training seed
(so a rerun makes the same ones), computed through the fixed part once
(`precompute_features`: the feature cache, the FLOP meter) and kept as features. Every
presentation of an image in training (each epoch's, and each of a DSI's `index_views`) then
reads the features of one of its 1 + V versions, drawn uniformly from the trainer's seeded
generator: the image itself or one of its V views. The fixed part never runs per batch.

Views are made BANK_CHUNK images at a time (each chunk from its own seed, so the bank does not
depend on any batch size) and streamed into the cache: a bank never holds N x V images at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vitdsi.training.augment import to_input
from vitdsi.training.cached_features import host_fingerprint, precompute_features
from vitdsi.training.flops import FlopMeter
from vitdsi.training.train_views import apply_views, view_spec

BANK_CHUNK = 64  # images whose views are made together (part of what decides a bank: keep it fixed)


@dataclass(frozen=True)
class BankViews:
    """The V views of every image of one uint8 set as an `ImageSource` (made chunk by chunk):
    row i * V + j is view j of image i."""

    images: torch.Tensor  # uint8 [N, C, H, W], on the training device
    v: int  # views per image
    strength: str  # the `views` strength they are drawn at
    seed: int  # the training seed
    stream: int = 0  # which set of the trainer (0 the corpus, 1 the train queries): its own seeds
    host: torch.Tensor | None = None  # the images' CPU copy, hashed instead of them when given

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def views(self) -> str:
        """What the cache key says of the bank beyond the images it is made from."""
        return (
            f"bank of {self.v} views per image, train_views {self.strength} {view_spec(self.strength)}, "
            f"seed {self.seed} stream {self.stream}, chunks of {BANK_CHUNK}"
        )

    def __len__(self) -> int:
        return len(self.images) * self.v

    def fingerprint(self) -> str:
        return host_fingerprint(self.images, self.host)

    def chunk(self, c: int) -> torch.Tensor:
        """Model input of the views of images [c * BANK_CHUNK, (c + 1) * BANK_CHUNK), float
        [rows * V, C, H, W]."""
        rows = self.images[c * BANK_CHUNK : (c + 1) * BANK_CHUNK]
        state = np.random.SeedSequence([self.seed % 2**63, self.stream, c]).generate_state(2)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return apply_views(to_input(rows).repeat_interleave(self.v, dim=0), gen, self.strength)

    def inputs(self) -> Iterator[torch.Tensor]:
        return (self.chunk(c) for c in range(-(-len(self.images) // BANK_CHUNK)))


class ViewBank:
    """The features training draws from, per image set of a trainer: the images' own [N, ...]
    and their views' [N * V, ...] (`BankViews` rows)."""

    def __init__(self, originals: list[torch.Tensor | None], views: list[torch.Tensor | None], v: int):
        self.originals, self.views, self.v = originals, views, v
        first = next(o for o in originals if o is not None)
        self._row_shape, self._dtype = first.shape[1:], first.dtype

    def draw(self, part: torch.Tensor, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Features of one version of each image `index[k]` of set `part[k]`: the image itself or
        one of its V views, uniformly, drawn from `gen`."""
        choice = torch.randint(0, self.v + 1, (len(index),), generator=gen).to(index.device)
        out = torch.empty((len(index), *self._row_shape), dtype=self._dtype, device=index.device)
        for p, (own, views) in enumerate(zip(self.originals, self.views, strict=True)):
            if own is None:
                continue
            rows = part == p
            plain, viewed = rows & (choice == 0), rows & (choice > 0)
            out[plain] = own[index[plain]].to(out.device)
            out[viewed] = views[index[viewed] * self.v + choice[viewed] - 1].to(out.device)
        return out

    def draw_rows(self, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """`draw` for rows `index` of the sets one after the other (as `gather_rows` numbers them)."""
        lengths = torch.tensor([0 if o is None else len(o) for o in self.originals], device=index.device)
        ends = lengths.cumsum(0)
        part = torch.bucketize(index, ends, right=True)
        return self.draw(part, index - (ends - lengths)[part], gen)


def build_view_bank(
    encoder,
    image_sets: list[torch.Tensor | None],
    originals: list[torch.Tensor | None],
    v: int,
    strength: str,
    seed: int,
    meter: FlopMeter | None = None,
    hosts: list[torch.Tensor | None] | None = None,
) -> ViewBank:
    """The bank of `v` views per image of uint8 `image_sets` (views computed through the
    encoder's fixed part once, `meter` charged for them), beside `originals`, the sets' own
    features (`precompute_features` of the same sets); `hosts` their CPU copies, as there."""
    hosts = hosts or [None] * len(image_sets)
    sources = [
        None if s is None else BankViews(s, v, strength, seed, stream=i, host=h)
        for i, (s, h) in enumerate(zip(image_sets, hosts, strict=True))
    ]
    return ViewBank(originals, precompute_features(encoder, sources, meter=meter), v)


def features_and_bank(
    encoder,
    image_sets: list[torch.Tensor | None],
    view_bank: int,
    views: str,
    seed: int,
    meter: FlopMeter | None = None,
    hosts: list[torch.Tensor | None] | None = None,
) -> tuple[list[torch.Tensor | None], ViewBank | None]:
    """What a trainer on a borrowed encoder's fixed part reads instead of uint8 `image_sets`: their
    features computed once (`precompute_features`, charged to `meter`; `hosts` their CPU copies,
    as there) and, when `view_bank` > 0, the bank of that many views of each (else None)."""
    features = precompute_features(encoder, image_sets, meter=meter, hosts=hosts)
    if not view_bank:
        return features, None
    return features, build_view_bank(encoder, image_sets, features, view_bank, views, seed, meter, hosts)
