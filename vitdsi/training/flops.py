"""Training compute: FLOPs counted on real training steps, and the examples seen.

`torch.utils.flop_counter.FlopCounterMode` counts the floating-point operations of the ops it
knows (matrix products, convolutions, attention) as they run, forward and backward. Running
every step under it is slow (it intercepts every op), so `FlopMeter` counts the first step of
each distinct key (the caller's phase and batch size) and charges every later step of that key
the measured FLOPs per example times its examples: a step's cost is linear in its batch, and
the keys keep a smaller last batch or another phase (another sequence length) apart. Work done
once, such as a frozen encoder's features computed before training, is counted whole (`once`).
Optimiser updates and elementwise ops are not counted, as in the usual 6 x parameters x tokens
estimate; evaluation (IA@1, validation checkpoints) is not training and is not counted. The
meter also carries the seconds of that frozen-encoder extraction (`extraction`), charged like
its FLOPs whether or not the feature cache held the features.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager

from torch.utils.flop_counter import FlopCounterMode

from vitdsi.features.extraction import ExtractionTime


class FlopMeter:
    """Training FLOPs and examples so far."""

    def __init__(self) -> None:
        self.flops = 0.0  # training FLOPs so far (forward + backward, and work counted once)
        self.examples = 0  # training examples so far (one per image or caption in a step)
        self._per_example: dict[Hashable, float] = {}  # key -> measured FLOPs per example
        self.extraction = ExtractionTime()  # seconds of the frozen features charged in `add`

    @contextmanager
    def step(self, key: Hashable, examples: int) -> Iterator[None]:
        """Wrap one training step (forward, loss, backward) of `examples` examples. The first
        step of each `key` runs under the counter; later ones are charged by example."""
        if key in self._per_example:
            yield
        else:
            with FlopCounterMode(display=False) as counter:
                yield
            self._per_example[key] = counter.get_total_flops() / max(1, examples)
        self.flops += self._per_example[key] * examples
        self.examples += examples

    def add(self, flops: float) -> None:
        """Charge work counted elsewhere (a frozen encoder's features, read from the feature cache
        or computed, are charged what computing them costs: `precompute_features`)."""
        self.flops += flops

    @contextmanager
    def once(self) -> Iterator[None]:
        """Count everything inside in full (work done once, e.g. a frozen encoder's features)."""
        with FlopCounterMode(display=False) as counter:
            yield
        self.flops += counter.get_total_flops()
