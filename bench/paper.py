"""The paper's Table 1 (Di Stefano, ViT DSI, section 4), for side-by-side columns in `table1` reports.

What the paper states (section 4 and footnotes): ImageNet at 160 px with 10 classes, database
sizes 512 / 1024 / 2048 with 25% indexed, IA@K over all indexed images, and "MAP@10" and
Recall@100 each averaged over N = 10 query images. What its code computes for "MAP@10"
(`compute_mean_average_precision_at_k` in `src/scripts/evaluation.py` of the original
repository): for each of 10 random test queries, |top-10 ∩ relevant| / min(10, returned),
i.e. Precision@10, then the mean. So the paper's "MAP@10" column goes beside our P@10, not
beside our MAP@10 (which divides AP@10 by min(10, R) and averages every test query).
"""

from __future__ import annotations

# (method, mode, id_scheme, db_size) -> {metric: value}; None where the paper has no value
TABLE1: dict[tuple[str, str | None, str | None, int], dict[str, float | None]] = {}


def _add(method, mode, ids, size, ia1, ia5, p10, r100):
    # the paper's "MAP@10" column is Precision@10 over 10 queries (see the module docstring)
    TABLE1[(method, mode, ids, size)] = {"IA@1": ia1, "IA@5": ia5, "P@10": p10, "R@100": r100}


for _size, _map, _r in ((512, 0.58, 0.875), (1024, 0.5, 0.825), (2048, 0.42, 0.78)):
    _add("bovw", None, None, _size, None, None, _map, _r)
for _size, _c, _rnd in (
    (512, (0.415, 0.566, 0.32, 0.58), (0.402, 0.472, 0.21, 0.365)),
    (1024, (0.378, 0.404, 0.28, 0.38), (0.266, 0.3, 0.18, 0.265)),
    (2048, (0.305, 0.333, 0.17, 0.22), (0.233, 0.275, 0.07, 0.135)),
):
    _add("dsi-vit", "fine-tuned", "clustered", _size, *_c)
    _add("dsi-vit", "fine-tuned", "random", _size, *_rnd)
for _size, _c, _rnd in (
    (512, (0.833, 0.962, 0.18, 0.275), (0.794, 0.871, 0.1, 0.23)),
    (1024, (0.763, 0.828, 0.12, 0.21), (0.725, 0.766, 0.07, 0.175)),
    (2048, (0.678, 0.774, 0.1, 0.195), (0.533, 0.719, 0.06, 0.16)),
):
    _add("dsi-vit", "zero-shot", "clustered", _size, *_c)
    _add("dsi-vit", "zero-shot", "random", _size, *_rnd)

METHOD_NOTE = (
    "Paper columns are copied from Table 1 of the ViT-DSI paper (ImageNet at 160 px, 10 classes, DB size = "
    'all images, 25% indexed). The paper\'s column named "MAP@10" is printed here beside our P@10: its code '
    "(`compute_mean_average_precision_at_k` in the original repository's `src/scripts/evaluation.py`) "
    "computes "
    "Precision@10, |top-10 ∩ relevant| / 10, and the paper averages it, like Recall@100, over N = 10 query "
    "images. Our P@10, MAP@10 (AP@10 divided by min(10, R)) and R@100 are means over every test query, each "
    "with a 95% CI and the chance level of the same split; the paper had no label-matched baseline, so its "
    "DSI rows should be read beside our `classifier` and `dual-encoder` rows."
)


def paper_row(
    method: str, mode: str | None, id_scheme: str | None, db_size: int
) -> dict[str, float | None] | None:
    """The paper's numbers for one configuration, or None when the paper did not run it."""
    if method != "dsi-vit":
        mode, id_scheme = None, None
    return TABLE1.get((method, mode, id_scheme, int(db_size)))
