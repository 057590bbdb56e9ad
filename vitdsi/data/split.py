"""Honest splits (paper sections 2.1 and 3.2, without the original's leak).

From a source, N_total images are chosen (class-stratified, seeded); a `split_ratio`
fraction of them forms the indexed database (IDB) and the rest are query images, split
*by image* into train / val / test queries (default 0.8 / 0.1 / 0.1). A query image is
in exactly one of those parts and never in the IDB, so fine-tuning on train queries
cannot leak into test queries (the original split (query, id) pairs instead).
The split is plain position arrays plus its parameters, serialisable to json; it also stores
each chosen image's stable source id, verified when the split is applied again. Captions are
split by image too: a caption belongs to the part its image belongs to.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vitdsi.data.captions import Captions
from vitdsi.data.imageset import ImageSet
from vitdsi.data.relevance import Relevance, SplitRelevance, text_relevance
from vitdsi.data.sampling import stratified_sample
from vitdsi.errors import VitDSIError


@dataclass(frozen=True)
class SplitSets:
    corpus: ImageSet  # the indexed database (IDB)
    train: ImageSet  # train queries (retrieval fine-tuning)
    val: ImageSet  # validation queries (early stopping, model choice)
    test: ImageSet  # test queries (every reported number)
    grading: str = "binary"  # gains of graded metrics (Relevance.grading; the graded protocol)
    # the text protocol (vitdsi.data.text_protocol): caption queries of 'train', 'val' and 'test', each
    # describing the corpus image at its `image` position; the image parts are then empty. None = image
    # queries
    text: dict[str, Captions] | None = None
    # source images the split held out where a protocol made its own queries (instance: the class
    # split's test images): never indexed nor queried, they are what a latency study adds. None = none
    held_out: ImageSet | None = None

    @property
    def query_kind(self) -> str:
        """'image' or 'text': what the queries of this split are (`Retriever.query_kind`)."""
        return "image" if self.text is None else "text"

    def queries(self, part: str) -> torch.Tensor | list[str]:
        """The `part` queries as a retriever's `search` takes them: uint8 images [n, 3, H, W], or captions."""
        return getattr(self, part).images if self.text is None else self.text[part].texts.tolist()

    def n_queries(self, part: str) -> int:
        return len(getattr(self, part)) if self.text is None else len(self.text[part])

    def relevance(self, part: str) -> Relevance | SplitRelevance:
        """Relevance of the `part` queries ('train', 'val' or 'test') against the corpus."""
        if self.text is not None:
            return text_relevance(self.text[part], self.corpus, self.grading)
        return Relevance.between(getattr(self, part), self.corpus, self.grading)


@dataclass(frozen=True)
class Split:
    idb: np.ndarray  # int64 positions in the source of the indexed images
    train: np.ndarray  # int64 positions of train queries
    val: np.ndarray  # int64 positions of validation queries
    test: np.ndarray  # int64 positions of test queries
    # n_total, split_ratio, query_fractions, seed, source fingerprint
    params: dict = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {"idb": len(self.idb), "train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def apply(self, dataset: ImageSet) -> SplitSets:
        """The four image sets. The positions must point at the images the split was made from:
        the source size and, where the split stored them, each image's source id (file path
        relative to the root, COCO image id, dataset index) are checked, so changed data (files
        added, removed or renamed, another root) is a clear error, never silently other images.
        Captions go with their image: a query image's captions are text queries of its part, an
        indexed image's stay with the corpus, each part keeping its own phrasing (`Captions.for_part`)."""
        expected = self.params.get("source_size")
        if expected is not None and expected != len(dataset):
            raise VitDSIError(
                f"this split was made for a source of {expected} images but the dataset has {len(dataset)}; "
                "the data changed since (files added or removed?), or load the same dataset with the same "
                "parameters"
            )
        self._verify_ids(dataset)
        parts = {"corpus": self.idb, "train": self.train, "val": self.val, "test": self.test}
        return SplitSets(*(dataset.subset(index).for_part(part) for part, index in parts.items()))

    def indexed_captions(self, dataset: ImageSet) -> Captions | None:
        """Every caption of the indexed images, in any phrasing, at their corpus positions (the text
        protocol draws its queries from them; `apply` keeps the training phrasing only)."""
        return None if dataset.captions is None else dataset.captions.for_images(self.idb)

    def _verify_ids(self, dataset: ImageSet) -> None:
        stored = self.params.get("source_ids")
        if not stored:
            return  # a split written before source ids were stored
        positions = np.concatenate([self.idb, self.train, self.val, self.test])
        known = np.array([str(int(p)) in stored for p in positions], dtype=bool)
        current = dataset.source_ids
        changed = [
            (int(p), stored[str(int(p))], str(current[p]))
            for p in positions[known]
            if stored[str(int(p))] != str(current[p])
        ]
        if changed:
            p, was, now = changed[0]
            more = (
                f" (and {len(changed) - 1} more of the split's {len(positions)} images)"
                if len(changed) > 1
                else ""
            )
            raise VitDSIError(
                f"the data changed since this split was made: image {p} of '{dataset.name}' was '{was}' and "
                f"is now '{now}'{more}; point the dataset at the data the split was made from (e.g. the same "
                "root)"
            )
        digest = self.params.get("source_ids_sha1")
        if not known.all() and digest and digest != source_ids_digest(current):
            raise VitDSIError(
                f"the data changed since this split was made: the source ids of '{dataset.name}' differ "
                "(files renamed or reordered); point the dataset at the data the split was made from"
            )

    def to_json(self) -> str:
        return json.dumps(
            {
                "idb": self.idb.tolist(),
                "train": self.train.tolist(),
                "val": self.val.tolist(),
                "test": self.test.tolist(),
                "params": self.params,
            },
            indent=None,
        )

    @staticmethod
    def from_json(text: str) -> Split:
        d = json.loads(text)
        return Split(
            *(np.asarray(d[k], dtype=np.int64) for k in ("idb", "train", "val", "test")), params=d["params"]
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @staticmethod
    def load(path: str | Path) -> Split:
        return Split.from_json(Path(path).read_text())

    def fingerprint(self) -> str:
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]


def _largest_remainder(total: int, fractions: tuple[float, ...]) -> list[int]:
    exact = np.asarray(fractions, dtype=np.float64) * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def split_sizes(
    n_total: int, split_ratio: float, query_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict[str, int]:
    """How many images `make_split` puts in each part ({"idb", "train", "val", "test"}), from the
    numbers alone (no data needed, so a study can be checked before any work). A split without
    queries, without test queries, or with an empty part whose fraction is above zero is a
    VitDSIError naming the numbers: metrics over an empty test set are undefined (nan)."""
    if not 0.0 < split_ratio <= 1.0:
        raise VitDSIError(f"split_ratio must be in (0, 1], got {split_ratio}")
    if (
        len(query_fractions) != 3
        or any(f < 0 for f in query_fractions)
        or abs(sum(query_fractions) - 1) > 1e-6
    ):
        raise VitDSIError(
            f"query_fractions must be three non-negative numbers summing to 1, got {query_fractions}"
        )
    if n_total < 2:
        raise VitDSIError(f"n_total must be at least 2 (one indexed image and one query), got {n_total}")
    n_idb = max(1, round(split_ratio * n_total))
    n_queries = n_total - n_idb
    if n_queries == 0:
        raise VitDSIError(
            f"the split has no query images: split_ratio={split_ratio} indexes all n_total={n_total} images; "
            f"lower split_ratio (e.g. {min(0.9, (n_total - 1) / n_total):.2g}) or raise n_total"
        )
    counts = dict(
        zip(("train", "val", "test"), _largest_remainder(n_queries, tuple(query_fractions)), strict=True)
    )
    for part, fraction in zip(
        ("test", "val", "train"), (query_fractions[2], query_fractions[1], query_fractions[0]), strict=True
    ):
        if counts[part] == 0 and (fraction > 0 or part == "test"):
            need = next(
                (
                    q
                    for q in range(n_queries + 1, 100_000)
                    if _largest_remainder(q, tuple(query_fractions))[("train", "val", "test").index(part)]
                ),
                None,
            )
            hint = (
                f"raise n_total so that there are at least {need} queries (now {n_queries} = n_total "
                f"{n_total} - {n_idb} indexed), or lower split_ratio"
                if need
                else "give the test queries a share in query_fractions (every reported number is on test)"
            )
            raise VitDSIError(
                f"the split has an empty {part} set: n_total={n_total}, split_ratio={split_ratio} and "
                f"query_fractions={list(query_fractions)} give {n_queries} queries and 0 {part} queries; "
                f"{hint}"
            )
    return {"idb": n_idb, **counts}


def make_split(
    source: ImageSet | np.ndarray,
    n_total: int | None = None,
    split_ratio: float = 0.25,
    query_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> Split:
    """Split `source` (an ImageSet, or its one-class-per-image labels) as described above."""
    labels = source.primary_labels() if isinstance(source, ImageSet) else np.asarray(source)
    n_source = len(labels)
    n_total = n_source if n_total is None else int(n_total)
    if n_total > n_source:
        raise VitDSIError(
            f"asked for {n_total} images (n_total) but the source has only {n_source}; use n_total <= "
            f"{n_source}"
        )
    n_idb = split_sizes(n_total, split_ratio, tuple(query_fractions))["idb"]
    chosen = stratified_sample(labels, n_total, seed, what="images (n_total)")
    in_idb = stratified_sample(labels[chosen], n_idb, seed + 1, what="indexed images")
    mask = np.zeros(n_total, dtype=bool)
    mask[in_idb] = True
    idb, queries = chosen[mask], chosen[~mask]
    parts, rest = [], queries
    counts = _largest_remainder(len(queries), tuple(query_fractions))
    for i, count in enumerate(counts[:-1]):
        pick = stratified_sample(labels[rest], count, seed + 2 + i, what="queries")
        keep = np.zeros(len(rest), dtype=bool)
        keep[pick] = True
        parts.append(rest[keep])
        rest = rest[~keep]
    parts.append(rest)
    params = {
        "n_total": n_total,
        "split_ratio": float(split_ratio),
        "query_fractions": tuple(float(f) for f in query_fractions),
        "seed": int(seed),
        "source_size": n_source,
    }
    if isinstance(source, ImageSet):  # each chosen image's stable id, checked when the split is applied again
        params["source_ids"] = {str(int(p)): str(source.source_ids[p]) for p in np.sort(chosen)}
        params["source_ids_sha1"] = source_ids_digest(source.source_ids)
    return Split(np.sort(idb), *(np.sort(p) for p in parts), params=params)


def source_ids_digest(source_ids: np.ndarray) -> str:
    """sha1 of a source's ids in order: the same data loaded the same way gives the same digest."""
    h = hashlib.sha1()
    for sid in source_ids:
        h.update(str(sid).encode())
        h.update(b"\0")
    return h.hexdigest()
