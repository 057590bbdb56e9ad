"""`bovw`: SIFT Bag of Visual Words with cosine similarity (ViT-DSI paper, section 3.1).

SIFT descriptors, a k-means vocabulary and tf / tf-idf weighted, L2-normalised word
histograms; searched by brute force or an inverted file (same rankings). Details, and
images without visual words: docs/design.md, "Label-free baselines".
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from vitdsi.data.imageset import ImageSet
from vitdsi.errors import VitDSIError
from vitdsi.features.sift import SiftConfig, extract_descriptors
from vitdsi.features.vocabulary import nearest_centroid, train_vocabulary
from vitdsi.log import get_logger
from vitdsi.ranking import Ranking
from vitdsi.retrievers.base import Retriever
from vitdsi.retrievers.registry import register

log = get_logger(__name__)

EMPTY_SCORE = -1.0  # score of a corpus image without visual words (cosine is in [0, 1] otherwise)
SEARCH_MODES = ("brute", "inverted")
WEIGHTINGS = ("tf", "tfidf")


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _array(v: Any) -> np.ndarray:
    return v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


@register("bovw")
class BoVW(Retriever):
    """SIFT bag of visual words; cosine similarity by brute force or an inverted file."""

    smoke_params: ClassVar[dict[str, Any]] = {
        "vocab_size": 16,
        "detector": "dense",
        "upscale": 2,
        "step": 8,
        "size": 8,
        "kmeans_iters": 5,
    }
    query_defaults: ClassVar[dict[str, Any]] = {
        "search": "brute",  # "brute" (dense matrix product) or "inverted" (inverted file); same rankings
        "batch_size": 512,  # queries scored at a time
    }

    def __init__(
        self,
        *,
        vocab_size: int = 200,
        detector: str = "dense",
        upscale: int = 2,
        step: int = 6,
        size: int = 8,
        contrast_threshold: float = 0.04,
        max_keypoints: int = 0,
        rootsift: bool = True,
        weighting: str = "tfidf",
        kmeans_sample: int = 100_000,
        kmeans_iters: int = 20,
        workers: int = 0,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        super().__init__(seed=seed, device=device)
        self.vocab_size = int(vocab_size)  # K, the number of visual words (the paper used 200)
        self.detector = detector  # "sparse" SIFT keypoints or a "dense" grid
        # integer upscaling before SIFT: small images give few keypoints. 2 suffices because
        # OpenCV's detector doubles the image again itself (32 px -> 64 -> a 128 px base octave)
        self.upscale = int(upscale)
        self.step = int(step)  # dense grid spacing, pixels of the upscaled image
        self.size = int(size)  # dense keypoint diameter, pixels of the upscaled image
        self.contrast_threshold = float(contrast_threshold)  # sparse: OpenCV contrastThreshold
        self.max_keypoints = int(max_keypoints)  # sparse: strongest n keypoints per image, 0 = all
        self.rootsift = bool(rootsift)  # RootSIFT descriptors (Hellinger kernel)
        self.weighting = weighting  # "tf" or "tfidf" (smooth idf, as scikit-learn's)
        self.kmeans_sample = int(kmeans_sample)  # descriptors sampled (seeded) to learn the vocabulary
        self.kmeans_iters = int(kmeans_iters)  # k-means iterations
        self.workers = int(workers)  # SIFT threads, 0 = all cores; does not change results
        if weighting not in WEIGHTINGS:
            raise VitDSIError(f"bovw: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if self.vocab_size < 1:
            raise VitDSIError(f"bovw: vocab_size must be >= 1, got {vocab_size}")
        self.sift = SiftConfig(
            detector=detector,
            upscale=self.upscale,
            step=self.step,
            size=self.size,
            contrast_threshold=self.contrast_threshold,
            max_keypoints=self.max_keypoints,
            rootsift=self.rootsift,
        )
        self._centroids: np.ndarray | None = None  # float32 [K, 128]
        self._idf: np.ndarray | None = None  # float64 [K], ones for tf
        self._corpus: sp.csr_matrix | None = None  # float64 [N, K], L2-normalised weighted histograms
        self._empty: np.ndarray | None = None  # bool [N], corpus images without visual words
        self._dense: torch.Tensor | None = None  # float64 [N, K] on the device, made on first brute search
        self._empty_t: torch.Tensor | None = None  # bool [N] on the device
        self._postings: sp.csr_matrix | None = None  # float64 [K, N], the inverted file, made on first use
        self.index_stats: dict[str, int] = {}  # descriptors and images without keypoints, for logs

    # ---- histograms -----------------------------------------------------------------
    def _words(self, images: torch.Tensor, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(owner int64 [M], word int64 [M]) of every SIFT descriptor of `images`; the
        vocabulary is learnt from these descriptors when there is none yet (indexing)."""
        desc, owner = extract_descriptors(images, self.sift, workers=self.workers, description=f"SIFT {what}")
        if len(desc) == 0:
            return owner, np.empty(0, np.int64)
        if self._centroids is None:
            self._centroids = train_vocabulary(
                desc, self.vocab_size, seed=self.seed, sample=self.kmeans_sample, iters=self.kmeans_iters
            )
        return owner, nearest_centroid(desc, self._centroids, device=self.device)

    def _counts(self, words: np.ndarray, owner: np.ndarray, n: int) -> sp.csr_matrix:
        """Word counts [n, K] (duplicates summed: one entry per image and word)."""
        counts = sp.csr_matrix((np.ones(len(words), np.float64), (owner, words)), shape=(n, self.vocab_size))
        counts.sum_duplicates()
        return counts

    def _weigh(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        """tf or tf-idf weights, each row L2-normalised (empty rows stay empty)."""
        hist = counts.copy()
        hist.data *= self._idf[hist.indices]
        rows = np.repeat(np.arange(hist.shape[0]), np.diff(hist.indptr))
        norms = np.sqrt(np.bincount(rows, weights=hist.data**2, minlength=hist.shape[0]))
        hist.data /= norms[rows]
        return hist

    def _histograms(self, images: torch.Tensor, what: str) -> sp.csr_matrix:
        owner, words = self._words(images, what)
        return self._weigh(self._counts(words, owner, len(images)))

    # ---- retriever hooks ------------------------------------------------------------
    def _index(self, corpus: ImageSet, train_queries: ImageSet | None) -> None:
        self._centroids = None  # re-indexing learns a new vocabulary
        owner, words = self._words(corpus.images, "corpus")
        if self._centroids is None:
            raise VitDSIError(
                f"bovw: SIFT found no keypoint in any of the {len(corpus)} corpus images; use "
                "detector='dense' or a larger upscale"
            )
        counts = self._counts(words, owner, len(corpus))
        if self.weighting == "tfidf":
            df = np.bincount(counts.indices, minlength=self.vocab_size)  # corpus images holding each word
            self._idf = np.log((1.0 + len(corpus)) / (1.0 + df)) + 1.0  # smooth idf, never zero
        else:
            self._idf = np.ones(self.vocab_size, np.float64)
        self._set_corpus(self._weigh(counts))
        self.index_stats = {"descriptors": len(words), "no_keypoints": int(self._empty.sum())}
        log.info(
            "bovw: %d images, %d descriptors (%.1f per image), %d without keypoints, K=%d",
            len(corpus),
            len(words),
            len(words) / len(corpus),
            int(self._empty.sum()),
            self.vocab_size,
        )

    def _add(self, images: ImageSet, train_queries: ImageSet | None) -> None:
        # quantised with the vocabulary and weighted with the idf learnt at index time, so the
        # histograms already indexed stay as they are; a new vocabulary means indexing again
        self._set_corpus(sp.vstack([self._corpus, self._histograms(images.images, "added images")]).tocsr())

    def _set_corpus(self, hist: sp.csr_matrix) -> None:
        self._corpus = hist
        self._empty = np.diff(hist.indptr) == 0
        self._dense = self._empty_t = None
        self._postings = None

    def _search(self, images: torch.Tensor, k: int) -> Ranking:
        mode = self.query_args["search"]
        if mode not in SEARCH_MODES:
            raise VitDSIError(f"bovw: search must be one of {SEARCH_MODES}, got {mode!r}")
        queries = self._histograms(images, "queries")
        rank = self._rank_brute if mode == "brute" else self._rank_inverted
        bs = int(self.query_args["batch_size"])
        parts = [rank(queries[s : s + bs], k) for s in range(0, queries.shape[0], bs)]
        return Ranking(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))

    def _rank_brute(self, q: sp.csr_matrix, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._dense is None:
            self._dense = torch.from_numpy(self._corpus.toarray()).to(self.device)
            self._empty_t = torch.from_numpy(self._empty).to(self.device)
        scores = (torch.from_numpy(q.toarray()).to(self.device) @ self._dense.T).float()
        scores[:, self._empty_t] = EMPTY_SCORE
        # a stable descending sort keeps equal scores in corpus order
        vals, ids = torch.sort(scores, dim=1, descending=True, stable=True)
        return ids[:, :k].cpu().long(), vals[:, :k].cpu().contiguous()

    def _rank_inverted(self, q: sp.csr_matrix, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._postings is None:
            self._postings = self._corpus.T.tocsr()
            # what follows the candidates, in order: images with words (score 0), then empty ones
            nonempty, empty = np.flatnonzero(~self._empty), np.flatnonzero(self._empty)
            self._filler = np.concatenate([nonempty, empty])
            self._filler_scores = np.concatenate(
                [np.zeros(len(nonempty), np.float32), np.full(len(empty), EMPTY_SCORE, np.float32)]
            )
        n = q.shape[0]
        s = (q @ self._postings).tocsr()  # [n, N]: only images sharing a word with the query
        s.sum_duplicates()
        s.sort_indices()
        counts = np.diff(s.indptr)
        rows = np.repeat(np.arange(n), counts)
        vals = s.data.astype(np.float32)
        order = np.lexsort((s.indices, -vals, rows))  # by row, then score descending, then id
        pos = np.arange(len(order)) - s.indptr[rows]  # rank of each sorted entry within its row
        ids = np.full((n, k), -1, np.int64)
        scores = np.full((n, k), -np.inf, np.float32)
        keep = pos < k
        ids[rows[keep], pos[keep]] = s.indices[order][keep]
        scores[rows[keep], pos[keep]] = vals[order][keep]
        short = np.flatnonzero(counts < k)
        if len(short):
            # a short row has c < k candidates; its next k - c results are the first
            # non-candidates of the filler order, all found among the filler's first k
            head = self._filler[:k]
            cand = s[short][:, head].tocoo()
            is_cand = np.zeros((len(short), len(head)), bool)
            is_cand[cand.row, cand.col] = True
            slot = counts[short, None] + np.cumsum(~is_cand, axis=1) - 1
            fill = ~is_cand & (slot < k)
            r, j = np.nonzero(fill)
            ids[short[r], slot[r, j]] = head[j]
            scores[short[r], slot[r, j]] = self._filler_scores[j]
        return torch.from_numpy(ids), torch.from_numpy(scores)

    # ---- persistence ----------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        # tensors and ints only, so that `load_retriever` can read it with weights_only=True
        c = self._corpus
        t = _tensor
        return {
            "centroids": t(self._centroids),
            "idf": t(self._idf),
            "data": t(c.data),
            "indices": t(c.indices),
            "indptr": t(c.indptr),
            "shape": [int(n) for n in c.shape],
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        a = _array
        self._centroids = a(state["centroids"]).astype(np.float32, copy=False)
        self._idf = a(state["idf"]).astype(np.float64, copy=False)
        self._set_corpus(
            sp.csr_matrix(
                (a(state["data"]), a(state["indices"]), a(state["indptr"])), shape=tuple(state["shape"])
            )
        )

    # ---- introspection --------------------------------------------------------------
    def histograms(self, images: torch.Tensor) -> sp.csr_matrix:
        """L2-normalised weighted word histograms [n, K] of uint8 images (after `index`)."""
        if self._centroids is None:
            raise VitDSIError("bovw: histograms() needs a vocabulary; index a corpus or load() one first")
        return self._histograms(images, "images")
