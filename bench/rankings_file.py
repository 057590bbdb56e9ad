"""The arrays of a trial run's rankings.npz artifact (logged by bench.tracking, read by
bench.runs)."""

from __future__ import annotations

import numpy as np


def rankings_arrays(result) -> dict[str, np.ndarray]:
    """What rankings.npz holds: the first seed's split positions (`idb`, `test`), and per
    seed r its split (`idb_r`, `train_r`, `val_r`, `test_r`: positions in the source; the
    split seed moves with the repeat), the test and validation rankings (`test_ids_r`,
    `test_scores_r`, `val_ids_r`: rows follow test_r / val_r) and the indexing ranking
    (`ia_ids_r`, `ia_scores_r`: rows follow idb_r); ids are positions in that seed's IDB. Under the
    text protocol the test / validation rows follow that seed's caption queries (`SplitSets.text`)."""
    arrays: dict[str, np.ndarray] = {
        "idb": result.split.idb,
        "test": result.split.test,
        "seeds": np.array([r.seed for r in result.repeats], dtype=np.int64),
    }
    for i, rep in enumerate(result.repeats):
        for part in ("idb", "train", "val", "test"):
            arrays[f"{part}_{i}"] = getattr(rep.split, part)
        arrays[f"test_ids_{i}"] = rep.test.ids.numpy()
        arrays[f"test_scores_{i}"] = rep.test.scores.numpy()
        arrays[f"val_ids_{i}"] = rep.val.ids.numpy()
        if rep.indexing is not None:
            arrays[f"ia_ids_{i}"] = rep.indexing.ids.numpy()
            arrays[f"ia_scores_{i}"] = rep.indexing.scores.numpy()
    return arrays
