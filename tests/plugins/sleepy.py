"""Test-only retriever `test-sleepy-knn`: pixels-knn whose indexing takes `epochs` x `sleep`
seconds and keeps a per-epoch history (like a trained retriever), so tests can interrupt
a trial mid-way and check training curves. Studies load it with `plugins: [.../sleepy.py]`."""

from __future__ import annotations

import time

from vitdsi.errors import VitDSIError
from vitdsi.retrievers.pixels_knn import PixelsKNN
from vitdsi.retrievers.registry import register


@register("test-sleepy-knn")
class SleepyKNN(PixelsKNN):
    def __init__(
        self,
        *,
        sleep: float = 0.2,
        epochs: int = 3,
        fail: bool = False,
        center: bool = True,
        batch_size: int = 1024,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        super().__init__(center=center, batch_size=batch_size, seed=seed, device=device)
        self.sleep = float(sleep)  # seconds per fake epoch
        self.epochs = int(epochs)  # fake epochs
        self.fail = bool(fail)  # raise during indexing
        self.history: list[dict] = []

    reports_epochs = True

    def _index(self, corpus, train_queries) -> None:
        self.history = []
        for epoch in range(1, self.epochs + 1):
            time.sleep(self.sleep)
            entry = {"phase": "index", "epoch": epoch, "loss": 1.0 / epoch}
            self.history.append(entry)
            if self.on_epoch is not None:
                self.on_epoch(entry)
        if self.fail:
            raise VitDSIError("test-sleepy-knn: failing on purpose (fail=true)")
        super()._index(corpus, train_queries)
