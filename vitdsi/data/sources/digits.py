"""`digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

Always present, so tests, the smoke scale and `make demo` never depend on a download.
"""

from __future__ import annotations

import numpy as np
import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.data.prep import prepare_batch


def load_digits(*, size: int = 32, fit: str = "resize") -> ImageSet:
    from sklearn.datasets import load_digits as sk_load_digits  # heavy; only for this dataset

    data = sk_load_digits()
    pixels = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return ImageSet(
        images=prepare_batch(pixels, size, fit=fit),
        labels=torch.as_tensor(data.target, dtype=torch.int64),
        source_ids=np.array([f"digits/{i}" for i in range(len(pixels))]),
        class_names=tuple(str(c) for c in range(10)),
        name="digits",
        meta={"source": "sklearn.datasets.load_digits", "size": size, "fit": fit},
    )
