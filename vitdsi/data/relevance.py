"""Relevance between query images and corpus images (paper section 2.1).

A query is relevant to a corpus image when they share a class (ImageNet-style, one
label per image) or any category (COCO-style, multi-hot labels); a query that is a new
view of a corpus image (the instance protocol, `ImageSet.view_of`) is relevant to that
image only. Where training may not see every label (the unseen-classes protocol), the true
labels are `ImageSet.relevance_labels` and decide relevance. Relevance is defined
by images and their labels, never by id tokens (a flaw of the original code). It is
held as the two label arrays, so gathering the relevance of a ranking is one vectorised
lookup; `to_sparse()` gives the explicit boolean matrix for storage or inspection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from vitdsi.data.captions import Captions
from vitdsi.data.imageset import ImageSet
from vitdsi.errors import VitDSIError

GRADINGS = ("binary", "shared", "jaccard")
# metric families a caption query (the text protocol) scores against its own image; the others
# read the categories it shares with the corpus images
OWN_IMAGE_FAMILIES = ("R", "MRR")


@dataclass(frozen=True)
class Relevance:
    query_labels: np.ndarray  # int64 [Q] classes, or bool [Q, C] multi-hot
    corpus_labels: np.ndarray  # int64 [N] classes, or bool [N, C] multi-hot
    # gain of a relevant corpus image for graded metrics (nDCG): 'binary' (1), 'shared' (the number
    # of categories it shares with the query) or 'jaccard' (shared / union); multi-hot labels only
    grading: str = "binary"

    def __post_init__(self) -> None:
        if self.query_labels.ndim != self.corpus_labels.ndim:
            raise VitDSIError("query and corpus labels must both be classes or both be multi-hot")
        if self.grading not in GRADINGS:
            raise VitDSIError(f"unknown relevance grading '{self.grading}'; known: {', '.join(GRADINGS)}")
        if self.grading != "binary" and self.query_labels.ndim != 2:
            raise VitDSIError(f"graded relevance ('{self.grading}') needs multi-label (multi-hot) data")
        if self.multilabel and self.query_labels.shape[1] != self.corpus_labels.shape[1]:
            raise VitDSIError(
                f"queries have {self.query_labels.shape[1]} categories but the corpus has "
                f"{self.corpus_labels.shape[1]}"
            )

    @staticmethod
    def between(queries: ImageSet, corpus: ImageSet, grading: str = "binary") -> Relevance:
        query_keys, corpus_keys = relevance_keys(queries, corpus)
        return Relevance(query_keys.cpu().numpy(), corpus_keys.cpu().numpy(), grading)

    @property
    def graded(self) -> bool:
        return self.grading != "binary"

    def for_family(self, family: str) -> Relevance:
        """The relevance metric family `family` reads: this one (see `SplitRelevance`)."""
        return self

    def gains(self, ids: np.ndarray) -> np.ndarray:
        """float64 [Q, k]: the gain of the corpus image at ids[q, j] for query q (0 for -1 and
        non-relevant images; 1 for relevant ones under binary grading)."""
        ids = np.asarray(ids)
        if not self.graded:
            return self.gather(ids).astype(np.float64)
        valid = ids >= 0
        docs = self.corpus_labels[np.where(valid, ids, 0)]  # [Q, k, C]
        shared = (docs & self.query_labels[:, None, :]).sum(axis=2).astype(np.float64)
        if self.grading == "jaccard":
            union = (docs | self.query_labels[:, None, :]).sum(axis=2)
            shared = shared / np.maximum(union, 1)
        return np.where(valid, shared, 0.0)

    def _dense_gains(self, rows: slice) -> np.ndarray:
        """float64 [q, N] gains of every corpus image for the queries in `rows` (graded only)."""
        q = self.query_labels[rows].astype(np.float64)
        c = self.corpus_labels.astype(np.float64)
        shared = q @ c.T
        if self.grading == "jaccard":
            union = q.sum(1)[:, None] + c.sum(1)[None, :] - shared
            shared = shared / np.maximum(union, 1)
        return shared

    def ideal_gains(self, k: int) -> np.ndarray:
        """float64 [Q, k]: each query's k largest gains over the whole corpus, descending (the
        ideal ranking of nDCG@k); binary grading: min(k, R) ones."""
        if not self.graded:
            return (np.arange(k)[None, :] < self.n_relevant()[:, None]).astype(np.float64)
        out = np.zeros((self.n_queries, k))
        kk = min(k, self.corpus_size)
        for s in range(0, self.n_queries, 1024):  # bounds memory at 1024 x N floats
            dense = self._dense_gains(slice(s, s + 1024))
            top = -np.partition(-dense, kk - 1, axis=1)[:, :kk] if kk < dense.shape[1] else dense
            out[s : s + 1024, :kk] = -np.sort(-top, axis=1)[:, :kk]
        return out

    def mean_gains(self) -> np.ndarray:
        """float64 [Q]: each query's gain averaged over the corpus (the expected gain at any rank
        of a uniformly random ranking); binary grading: R / N."""
        if not self.graded:
            return self.n_relevant() / self.corpus_size
        return (
            np.concatenate(
                [self._dense_gains(slice(s, s + 1024)).mean(1) for s in range(0, self.n_queries, 1024)]
            )
            if self.n_queries
            else np.zeros(0)
        )

    @property
    def multilabel(self) -> bool:
        return self.query_labels.ndim == 2

    @property
    def n_queries(self) -> int:
        return int(self.query_labels.shape[0])

    @property
    def corpus_size(self) -> int:
        return int(self.corpus_labels.shape[0])

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """bool [Q, k]: is the corpus image at ids[q, j] relevant to query q (False for -1)."""
        ids = np.asarray(ids)
        if ids.shape[0] != self.n_queries:
            raise VitDSIError(f"ranking has {ids.shape[0]} rows but there are {self.n_queries} queries")
        valid = ids >= 0
        safe = np.where(valid, ids, 0)
        if self.multilabel:
            rel = (self.corpus_labels[safe] & self.query_labels[:, None, :]).any(axis=2)
        else:
            rel = self.corpus_labels[safe] == self.query_labels[:, None]
        return rel & valid

    def n_relevant(self) -> np.ndarray:
        """int64 [Q]: how many corpus images are relevant to each query (computed once)."""
        cached = self.__dict__.get("_n_relevant")
        if cached is None:
            cached = self._count_relevant()
            object.__setattr__(self, "_n_relevant", cached)  # frozen dataclass: cache by hand
        return cached

    def _count_relevant(self) -> np.ndarray:
        if not self.multilabel:
            n_classes = int(max(self.query_labels.max(initial=-1), self.corpus_labels.max(initial=-1))) + 1
            per_class = np.bincount(self.corpus_labels, minlength=n_classes)
            return per_class[self.query_labels].astype(np.int64)
        # Multi-label: the corpus images relevant to q are the union over q's categories of
        # the images holding that category. Each category's images are a packed bitset over
        # the corpus; a query's union is an OR of its categories' bitsets (a loop over
        # categories, not images), and its size a popcount.
        packed = np.packbits(self.corpus_labels.T, axis=1)  # uint8 [C, ceil(N / 8)]
        words = -(-packed.shape[1] // 8)
        bits = np.zeros((packed.shape[0], words * 8), dtype=np.uint8)
        bits[:, : packed.shape[1]] = packed
        bits = bits.view(np.uint64)  # [C, ceil(N / 64)]: 64 corpus images per word
        out = np.empty(self.n_queries, dtype=np.int64)
        for s in range(0, self.n_queries, 4096):  # bounds memory at 4096 x N / 8 bytes
            q = self.query_labels[s : s + 4096]
            union = np.zeros((q.shape[0], words), dtype=np.uint64)
            for c in np.flatnonzero(q.any(axis=0)):
                rows = np.flatnonzero(q[:, c])
                union[rows] |= bits[c]
            out[s : s + 4096] = np.bitwise_count(union).sum(axis=1, dtype=np.int64)
        return out

    def to_sparse(self) -> sp.csr_matrix:
        """bool CSR [Q, N] of relevant (query, corpus image) pairs."""
        if not self.multilabel:
            q = sp.csr_matrix(
                (np.ones(self.n_queries, bool), (np.arange(self.n_queries), self.query_labels)),
                shape=(
                    self.n_queries,
                    int(max(self.query_labels.max(initial=0), self.corpus_labels.max(initial=0))) + 1,
                ),
            )
            c = sp.csr_matrix(
                (np.ones(self.corpus_size, bool), (np.arange(self.corpus_size), self.corpus_labels)),
                shape=(self.corpus_size, q.shape[1]),
            )
        else:
            q = sp.csr_matrix(self.query_labels)
            c = sp.csr_matrix(self.corpus_labels)
        return (q.astype(np.int32) @ c.astype(np.int32).T).astype(bool).tocsr()


@dataclass(frozen=True)
class SplitRelevance:
    """Relevance that differs by metric family (the text protocol: a caption's own image for R@K
    and MRR, shared categories for the rest). `vitdsi.metrics` asks `for_family`; everything
    else (counts, `gather` for figures) reads `default`."""

    default: Relevance  # what metric families not in `by_family` read
    by_family: dict[str, Relevance]  # metric family name ('R', 'MRR', ...) -> the relevance it reads

    def __post_init__(self) -> None:
        for family, rel in self.by_family.items():
            if (rel.n_queries, rel.corpus_size) != (self.default.n_queries, self.default.corpus_size):
                raise VitDSIError(
                    f"relevance of metric family {family} is {rel.n_queries} x {rel.corpus_size} but the "
                    f"default is {self.default.n_queries} x {self.default.corpus_size}"
                )

    def for_family(self, family: str) -> Relevance:
        return self.by_family.get(family, self.default)

    @property
    def n_queries(self) -> int:
        return self.default.n_queries

    @property
    def corpus_size(self) -> int:
        return self.default.corpus_size

    @property
    def graded(self) -> bool:
        return self.default.graded

    def gather(self, ids: np.ndarray) -> np.ndarray:
        return self.default.gather(ids)

    def n_relevant(self) -> np.ndarray:
        return self.default.n_relevant()


def relevance_keys(queries: ImageSet, corpus: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    """What decides relevance, as label-like keys: the labels, or for views (instance protocol)
    the source's corpus position against `arange(N)`. Training pairs (query -> a relevant
    corpus image) are drawn from the same keys, so no retriever pairs a view with another
    image of its class."""
    if queries.view_of is None:
        return _relevance_labels(queries), _relevance_labels(corpus)
    if len(queries) and (queries.view_of.min() < 0 or queries.view_of.max() >= len(corpus)):
        raise VitDSIError(
            f"views point at corpus positions outside 0..{len(corpus) - 1}; were they made from this corpus?"
        )
    return torch.as_tensor(queries.view_of, dtype=torch.int64), torch.arange(len(corpus), dtype=torch.int64)


def _relevance_labels(images: ImageSet) -> torch.Tensor:
    return images.labels if images.relevance_labels is None else images.relevance_labels


def as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def text_relevance(queries: Captions, corpus: ImageSet, grading: str = "binary") -> SplitRelevance:
    """Relevance of caption queries: their own image (R@K, MRR), or the corpus images that share a
    class / category with it (the other metrics, graded by `grading`)."""
    if len(queries) and int(queries.image.max()) >= len(corpus):
        raise VitDSIError(
            f"a caption query describes image {int(queries.image.max())} of a corpus of {len(corpus)}"
        )
    labels = (corpus.labels if corpus.relevance_labels is None else corpus.relevance_labels).cpu().numpy()
    own = Relevance(queries.image, np.arange(len(corpus), dtype=np.int64))
    shared = Relevance(labels[queries.image], labels, grading)
    return SplitRelevance(shared, {family: own for family in OWN_IMAGE_FAMILIES})
