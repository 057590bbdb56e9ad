"""FAISS inner-product indexes over L2-normalised vectors, shared by the dense retrievers
(`embedding`, `dual-encoder`): build, search with deterministic tie order, and
append to (continual indexing), (de)serialise as a uint8 tensor so a saved index loads with
`torch.load(weights_only=True)`.

    flat  exact inner product over all N vectors (IndexFlatIP)
    hnsw  HNSW graph (IndexHNSWFlat, inner product); build: hnsw_m, ef_construction;
          query: ef_search
    ivf   inverted lists over a k-means coarse quantiser (IndexIVFFlat, inner product);
          build: nlist; query: nprobe
    ivfpq inverted lists whose vectors are product-quantised (IndexIVFPQ, inner product;
          Jegou et al. 2011): pq_m codes of pq_bits bits per vector; build: nlist, pq_m,
          pq_bits; query: nprobe

`FaissConfig` holds the build settings; the retrievers that use it (`embedding`,
`dual-encoder`) take its fields as build parameters and `QUERY_DEFAULTS` as query arguments.

faiss is imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vitdsi.errors import VitDSIError
from vitdsi.ranking import Ranking

INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")
QUERY_DEFAULTS = {
    "ef_search": 64,  # hnsw: candidate list size while searching (higher = better recall, slower)
    "nprobe": 8,  # ivf / ivfpq: inverted lists visited per query (nlist = every list)
}


@dataclass
class FaissConfig:
    index_type: str = (
        "flat"  # 'flat' (exact), 'hnsw', 'ivf' or 'ivfpq' (named index_type: `index` is the method)
    )
    hnsw_m: int = 32  # hnsw: graph neighbours per node
    ef_construction: int = 40  # hnsw: candidate list size while building
    nlist: int = 0  # ivf / ivfpq: inverted lists; 0 = min(4 sqrt(N), N / 39)
    # ivfpq: sub-quantisers (code bytes per vector at 8 bits); 0 = the divisor of the width nearest width / 8
    pq_m: int = 0
    pq_bits: int = (
        8  # ivfpq: bits per sub-quantiser code (the corpus needs at least 2^pq_bits images to train)
    )


FAISS_PARAMS = tuple(FaissConfig.__dataclass_fields__)  # the build parameters a FAISS-backed retriever takes


class FaissParams:
    """FAISS_PARAMS as attributes of a retriever that takes them (a base class for type checkers)."""

    index_type: str
    hnsw_m: int
    ef_construction: int
    nlist: int
    pq_m: int
    pq_bits: int


def check_index_type(index_type: str, owner: str, allowed: tuple[str, ...] = INDEX_TYPES) -> None:
    """A clear error naming the retriever (`owner`) for an unknown index type."""
    if index_type not in allowed:
        raise VitDSIError(f"{owner}: index_type must be one of {allowed}, got {index_type!r}")


def build_index(
    x: np.ndarray,  # float32 [N, D], L2-normalised rows
    cfg: FaissConfig,
    *,
    seed: int = 0,  # ivf / ivfpq: k-means seed
    owner: str = "faiss",  # retriever name for error messages
) -> Any:
    """A FAISS inner-product index of `cfg.index_type` holding the rows of `x` (ids = row positions)."""
    import faiss  # heavy; only where an index is built, searched or (de)serialised

    check_index_type(cfg.index_type, owner)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if cfg.index_type == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index
    if cfg.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        add_vectors(index, x)
        return index
    nlist = cfg.nlist or max(1, min(round(4 * math.sqrt(n)), n // 39))
    if nlist > n:
        raise VitDSIError(
            f"{owner}: nlist={nlist} inverted lists need at least as many corpus images, got {n}"
        )
    if cfg.index_type == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        m = cfg.pq_m or min((v for v in range(1, d + 1) if d % v == 0), key=lambda v: (abs(v - d / 8), v))
        if d % m:
            raise VitDSIError(f"{owner}: pq_m={m} sub-quantisers must divide the vector width {d}")
        if n < 2**cfg.pq_bits:
            raise VitDSIError(
                f"{owner}: ivfpq with pq_bits={cfg.pq_bits} trains 2^{cfg.pq_bits} = {2**cfg.pq_bits} "
                f"centroids per sub-quantiser and needs at least as many corpus images, got {n}; "
                f"lower pq_bits or use index_type flat / hnsw / ivf"
            )
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, cfg.pq_bits, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = seed
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1  # small corpora: no warning for few points per list
    index.train(x)
    index.add(x)
    return index


def add_vectors(index: Any, x: np.ndarray) -> None:
    """Append the rows of `x` (float32 [n, D], L2-normalised) to a built index; they get the next
    ids. HNSW links them into the graph and IVF files them in its trained lists: no rebuild."""
    import faiss  # heavy; only where an index is built, searched or (de)serialised

    x = np.ascontiguousarray(x, dtype=np.float32)
    if not hasattr(index, "hnsw"):
        index.add(x)
        return
    # a parallel HNSW insert depends on thread timing; one thread makes it reproducible
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.add(x)
    finally:
        faiss.omp_set_num_threads(threads)


def search_index(index: Any, q: np.ndarray, k: int, *, ef_search: int = 64, nprobe: int = 8) -> Ranking:
    """Top-k of float32 queries [n, D]; `ef_search` applies to HNSW and `nprobe` to IVF indexes.
    Equal scores are ordered by corpus position (FAISS leaves their order to its heaps)."""
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(ef_search)
    if hasattr(index, "nprobe"):
        index.nprobe = int(nprobe)
    scores, ids = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    order = np.lexsort((ids, -scores), axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    return Ranking(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(scores))


def serialize_index(index: Any) -> torch.Tensor:
    """The index as a uint8 tensor (loads with `torch.load(weights_only=True)`)."""
    import faiss  # heavy; only where an index is built, searched or (de)serialised

    return torch.from_numpy(np.ascontiguousarray(faiss.serialize_index(index)))


def deserialize_index(blob: torch.Tensor | np.ndarray) -> Any:
    """Inverse of `serialize_index` (also reads the numpy arrays of older saved indexes)."""
    import faiss  # heavy; only where an index is built, searched or (de)serialised

    blob = blob.cpu().numpy() if isinstance(blob, torch.Tensor) else np.asarray(blob)
    return faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
