"""Identifier schemes for a Differentiable Search Index over an image corpus.

Follows Tay et al., "Transformer Memory as a Differentiable Search Index" (2022), section
3.2, and the ViT-DSI paper (Di Stefano), section 2.1:

    random     shuffle the corpus and number it consecutively ("dense random")
    clustered  images of the same class get consecutive numbers ("dense clustered")
    semantic   hierarchical k-means with branching 10 on image features (pixels by
               default), one digit per level, so a shared prefix means visual similarity
    rq         residual quantisation of image features (IRGen, Zhang et al. 2023): each
               level k-means (10 centroids) the residual the previous levels left, one
               digit per level, then disambiguation digits numbering images that share
               every level, so each id is unique
    atomic     one token per image: a softmax over the corpus, decoded in one step

Digit schemes give every image a fixed-length string of L = max(1, ceil(log10 N)) digits
(semantic k-means is capacity-constrained so L digits always suffice), or more when asked,
to leave room for images added later (`extend_ids`, DSI++: old ids never change). The
`IdMap` holds the id of each corpus position and answers the inverse lookup; it is saved
with the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vitdsi.errors import VitDSIError
from vitdsi.log import get_logger

log = get_logger(__name__)

ID_SCHEMES = ("random", "clustered", "semantic", "rq", "atomic")
BRANCHING = 10  # digits per position: one decimal digit per level


def id_length(n: int) -> int:
    """Digits needed to number n items 0..n-1 with fixed width (at least 1)."""
    return max(1, math.ceil(math.log10(n))) if n > 1 else 1


@dataclass
class IdMap:
    """The identifier of every corpus position, and the way back."""

    scheme: str  # one of ID_SCHEMES
    codes: torch.Tensor  # int64 [N, L]: digits of the id of corpus position i (atomic: [N, 1] = i)
    # int64 [N] class each clustered id was numbered by (-1 = none), so added images can join
    # their class's block (`extend_ids`); None for other schemes and for maps saved before
    classes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.codes = torch.as_tensor(self.codes, dtype=torch.int64).cpu()
        if self.classes is not None:
            self.classes = torch.as_tensor(self.classes, dtype=torch.int64).cpu()
            if self.classes.shape != (self.codes.shape[0],):
                raise VitDSIError(f"IdMap: {self.codes.shape[0]} ids but {tuple(self.classes.shape)} classes")
        if self.codes.ndim != 2 or self.codes.shape[0] == 0:
            raise VitDSIError(f"IdMap needs codes of shape [N, L] with N >= 1, got {tuple(self.codes.shape)}")
        values = self.values
        if torch.unique(values).numel() != values.numel():
            raise VitDSIError(f"IdMap '{self.scheme}': ids are not unique")
        # sorted id values and the corpus position of each, for the inverse lookup
        self._sorted_values, self._sorted_positions = torch.sort(values)

    @property
    def atomic(self) -> bool:
        return self.scheme == "atomic"

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])

    @property
    def length(self) -> int:
        """Tokens per id (digits; 1 for atomic)."""
        return int(self.codes.shape[1])

    @property
    def values(self) -> torch.Tensor:
        """int64 [N]: each id as one number (the digits read in base 10; atomic: the token)."""
        if self.atomic:
            return self.codes[:, 0].clone()
        weights = BRANCHING ** torch.arange(self.length - 1, -1, -1, dtype=torch.int64)
        return (self.codes * weights).sum(1)

    def positions(self, codes: torch.Tensor) -> torch.Tensor:
        """Corpus positions of ids given as digits [..., L]; -1 where a code is not a valid id."""
        codes = torch.as_tensor(codes, dtype=torch.int64).cpu()
        if self.atomic:
            v = codes[..., 0]
        else:
            weights = BRANCHING ** torch.arange(self.length - 1, -1, -1, dtype=torch.int64)
            v = (codes * weights).sum(-1)
        idx = torch.searchsorted(self._sorted_values, v).clamp_(max=self.n - 1)
        found = self._sorted_values[idx] == v
        return torch.where(found, self._sorted_positions[idx], torch.full_like(v, -1))

    def strings(self) -> list[str]:
        """Human-readable ids, e.g. '042' (for logs and reports)."""
        if self.atomic:
            return [str(int(v)) for v in self.codes[:, 0]]
        return ["".join(str(int(d)) for d in row) for row in self.codes]

    def state(self) -> dict:
        state = {"scheme": self.scheme, "codes": self.codes.clone()}
        if self.classes is not None:
            state["classes"] = self.classes.clone()
        return state

    @staticmethod
    def from_state(state: dict) -> IdMap:
        return IdMap(state["scheme"], state["codes"], state.get("classes"))


def digits_of(numbers: np.ndarray, length: int) -> np.ndarray:
    """int64 [n, length]: fixed-width base-10 digits of non-negative integers."""
    numbers = np.asarray(numbers, dtype=np.int64)
    powers = BRANCHING ** np.arange(length - 1, -1, -1, dtype=np.int64)
    return (numbers[:, None] // powers[None, :]) % BRANCHING


def make_ids(
    scheme: str,
    n: int,
    *,
    labels: np.ndarray | None = None,
    features: np.ndarray | torch.Tensor | None = None,
    seed: int = 0,
    length: int = 0,
) -> IdMap:
    """Ids for a corpus of n images, `length` digits each (0 = the fewest that number n).

    labels: int [n] primary class of each image (`clustered`; -1 = no class, numbered last).
    features: float [n, D] per-image features (`semantic`, `rq`; e.g. flattened pixels or an
    embedding). Everything is deterministic given `seed`. For `rq`, `length` - 1 quantiser
    levels (at least one) and as many disambiguation digits as the largest group needs.
    """
    if scheme not in ID_SCHEMES:
        raise VitDSIError(f"unknown id scheme '{scheme}'; choose one of {', '.join(ID_SCHEMES)}")
    if n < 1:
        raise VitDSIError("cannot assign ids to an empty corpus")
    rng = np.random.default_rng(seed)
    if scheme == "atomic":
        return IdMap(scheme, torch.arange(n, dtype=torch.int64)[:, None])
    length = check_length(length, n)
    if scheme == "random":
        numbers = rng.permutation(n)
    elif scheme == "clustered":
        if labels is None:
            raise VitDSIError("id scheme 'clustered' needs the class label of each corpus image")
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != (n,):
            raise VitDSIError(f"clustered ids need one label per image ({n}), got shape {labels.shape}")
        # classes in label order, unlabelled (-1) last; random order inside a class
        key = np.where(labels < 0, labels.max(initial=0) + 1, labels)
        order = np.lexsort((rng.permutation(n), key))
        numbers = np.empty(n, dtype=np.int64)
        numbers[order] = np.arange(n)
        codes = torch.from_numpy(digits_of(numbers, length))
        return IdMap(scheme, codes, torch.from_numpy(np.maximum(labels, -1)))
    else:
        if features is None:
            raise VitDSIError(f"id scheme '{scheme}' needs a feature vector per corpus image")
        feats = torch.as_tensor(np.asarray(features), dtype=torch.float32).reshape(n, -1)
        if scheme == "rq":
            return IdMap(scheme, torch.from_numpy(rq_codes(feats, max(1, length - 1), seed)))
        return IdMap(scheme, torch.from_numpy(semantic_codes(feats, length, seed)))
    return IdMap(scheme, torch.from_numpy(digits_of(numbers, length)))


def check_length(length: int, n: int) -> int:
    """`length` digits, or the fewest that number n ids when 0; too few is a clear error."""
    if length == 0:
        return id_length(n)
    if length < 1 or BRANCHING**length < n:
        raise VitDSIError(
            f"id_length={length} cannot number {n} images; use 0 (automatic) or at least {id_length(n)}"
        )
    return length


def extend_ids(ids: IdMap, m: int, *, labels: np.ndarray | None = None, seed: int = 0) -> IdMap:
    """The id map with m more images, appended at positions n .. n + m - 1; the ids of the
    first n images never change.

    atomic     the next tokens n .. n + m - 1 (the model's head grows by m rows)
    random     the lowest unused numbers, shuffled among the new images
    clustered  `labels` [m]: each new image takes a free id in a block of 10 (ids sharing
               their first L - 1 digits) that already holds its class; when those are
               full, a fresh block for that class, so a prefix still names one class
               (when no block is empty, any free id, with a warning)
    Raises a VitDSIError when the L-digit id space is full (build with a larger id_length).
    """
    if m < 1:
        raise VitDSIError("extend_ids: nothing to add")
    rng = np.random.default_rng(seed)
    if ids.atomic:
        appended = torch.arange(ids.n, ids.n + m, dtype=torch.int64)[:, None]
        return IdMap(ids.scheme, torch.cat([ids.codes, appended]))
    if ids.scheme not in ("random", "clustered"):
        raise VitDSIError(
            f"adding images to '{ids.scheme}' ids is not supported; use random, clustered or atomic ids"
        )
    capacity = BRANCHING**ids.length
    used = np.zeros(capacity, dtype=bool)
    used[ids.values.numpy()] = True
    if (~used).sum() < m:
        raise VitDSIError(
            f"the {ids.length}-digit id space holds {capacity} images: {ids.n} are indexed, {m} more do not "
            f"fit; index with id_length >= {id_length(ids.n + m)} to leave room for add()"
        )
    if ids.scheme == "random":
        numbers = rng.permutation(np.flatnonzero(~used)[:m])
    else:
        if labels is None or len(labels) != m:
            raise VitDSIError(f"clustered ids need the class label of each added image ({m})")
        labels = np.maximum(np.asarray(labels, dtype=np.int64), -1)
        numbers = _clustered_slots(ids, used, labels, rng)
        classes = torch.cat([ids.classes, torch.from_numpy(labels)])
        appended = torch.from_numpy(digits_of(numbers, ids.length))
        return IdMap(ids.scheme, torch.cat([ids.codes, appended]), classes)
    return IdMap(ids.scheme, torch.cat([ids.codes, torch.from_numpy(digits_of(numbers, ids.length))]))


def _clustered_slots(
    ids: IdMap, used: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Numbers for new images of class `labels` [m]: free ids in blocks of their class first,
    then fresh (empty) blocks, then any free id, class by class; `used` [capacity] is updated."""
    block = BRANCHING if ids.length > 1 else len(used)  # one block when ids have a single digit
    if ids.classes is None:
        raise VitDSIError("this clustered id map was saved without its classes; index again to add images")
    # the class of each block that holds ids: that of its highest id (the one next to free slots
    # under dense numbering); -2 marks an empty block
    order = torch.argsort(ids.values).numpy()
    blocks, classes = ids.values.numpy()[order] // block, ids.classes.numpy()[order]
    last = np.r_[blocks[1:] != blocks[:-1], True]
    block_class = np.full(len(used) // block, -2, dtype=np.int64)
    block_class[blocks[last]] = classes[last]
    numbers = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        mine = np.flatnonzero(labels == c)
        slots = np.flatnonzero(~used & np.repeat(block_class == c, block))
        if len(slots) < len(mine):  # open fresh blocks for this class
            empty = np.flatnonzero(block_class == -2)
            opened = empty[: -(-(len(mine) - len(slots)) // block)]
            block_class[opened] = c
            slots = np.concatenate([slots, (opened[:, None] * block + np.arange(block)[None, :]).ravel()])
        if len(slots) < len(mine):  # no empty block left: any free id (the prefix then mixes classes)
            spare = np.setdiff1d(np.flatnonzero(~used), slots)
            log.warning(
                "clustered ids: no free block left for class %d; %d added images take free ids of other "
                "blocks (index with a larger id_length to keep one class per prefix)",
                c,
                len(mine) - len(slots),
            )
            slots = np.concatenate([slots, spare[: len(mine) - len(slots)]])
        numbers[rng.permutation(mine)] = slots[: len(mine)]
        used[slots[: len(mine)]] = True
    return numbers


# ---- rq ids: residual quantisation -------------------------------------------------------
def rq_codes(features: torch.Tensor, levels: int, seed: int = 0, iters: int = 25) -> np.ndarray:
    """int64 [n, levels + d] digits: `levels` residual-quantiser digits (k-means with 10
    centroids on what the previous levels left), then d = digits needed to number the largest
    group of images that share all of them, numbering each group's images in a seeded order."""
    n = features.shape[0]
    x = _reduced(features)
    gen = torch.Generator().manual_seed(seed)
    digits = np.zeros((n, levels), dtype=np.int64)
    residual = x.clone()
    for level in range(levels):
        k = min(BRANCHING, n)
        centers = _lloyd(residual, k, gen, iters)
        assign = torch.cdist(residual, centers).argmin(1)
        digits[:, level] = assign.numpy()
        residual = residual - centers[assign]
    # number the members of each group of equal digits (a seeded random order inside a group)
    _, group = np.unique(digits, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.lexsort((torch.randperm(n, generator=gen).numpy(), group))
    first = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
    tail = digits_of(rank, id_length(int(rank.max()) + 1))
    return np.concatenate([digits, tail], axis=1)


def _reduced(features: torch.Tensor) -> torch.Tensor:
    """Centred features, projected to at most 64 dims (PCA) so k-means distances are cheap and
    less noisy."""
    n = features.shape[0]
    feats = features - features.mean(0, keepdim=True)
    if feats.shape[1] > 64 and n > 2:
        _, _, v = torch.pca_lowrank(feats, q=min(64, n - 1), center=False, niter=4)
        feats = feats @ v
    return feats


def _lloyd(x: torch.Tensor, k: int, gen: torch.Generator, iters: int) -> torch.Tensor:
    """k centres by Lloyd's k-means from a k-means++ start (seeded)."""
    centers = _kmeanspp(x, k, gen)
    for _ in range(iters):
        assign = torch.cdist(x, centers).argmin(1)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers)
        if torch.allclose(moved, centers):
            break
        centers = moved
    return centers


# ---- semantic ids: capacity-constrained hierarchical k-means -------------------------
def semantic_codes(features: torch.Tensor, length: int, seed: int = 0, iters: int = 25) -> np.ndarray:
    """int64 [n, length] digits from hierarchical k-means with branching 10 (Tay et al. 2022).

    Each node splits its items into up to 10 clusters; a child at depth d may hold at most
    10**(length - d - 1) items, so every image gets exactly `length` digits. The last digit
    numbers the items of a leaf (at most 10) in a seeded random order.
    """
    n = features.shape[0]
    if n > BRANCHING**length:
        raise VitDSIError(f"{n} items do not fit in {length}-digit ids")
    feats = _reduced(features)
    gen = torch.Generator().manual_seed(seed)
    codes = np.zeros((n, length), dtype=np.int64)
    stack = [(np.arange(n), 0)]
    while stack:
        items, depth = stack.pop()
        if depth == length - 1:  # leaf: number the (<= 10) items
            perm = torch.randperm(len(items), generator=gen).numpy()
            codes[items[perm], depth] = np.arange(len(items))
            continue
        capacity = BRANCHING ** (length - depth - 1)
        k = min(BRANCHING, len(items))
        assign = _balanced_kmeans(feats[torch.from_numpy(items)], k, capacity, gen, iters)
        codes[items, depth] = assign
        for c in range(k):
            members = items[assign == c]
            if len(members):
                stack.append((members, depth + 1))
    return codes


def _balanced_kmeans(x: torch.Tensor, k: int, capacity: int, gen: torch.Generator, iters: int) -> np.ndarray:
    """Cluster index in [0, k) per row of x, each cluster holding at most `capacity` rows.

    Lloyd's k-means (k-means++ seeding), then a capacity-constrained assignment done in
    vectorised rounds: every unassigned point proposes to its nearest open cluster, an
    over-full cluster keeps its closest proposers, and full clusters close.
    """
    n = x.shape[0]
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    centers = _lloyd(x, k, gen, iters)
    dist = torch.cdist(x, centers)
    assign = torch.full((n,), -1, dtype=torch.int64)
    room = torch.full((k,), capacity, dtype=torch.int64)
    for _ in range(k + 1):
        free = assign < 0
        if not free.any():
            break
        d = dist[free].masked_fill(room[None, :] <= 0, float("inf"))
        choice = d.argmin(1)
        best = d.gather(1, choice[:, None])[:, 0]
        idx = free.nonzero()[:, 0]
        # order proposers by (cluster, distance); each cluster accepts its first `room` ones
        order = np.lexsort((best.numpy(), choice.numpy()))
        choice_sorted = choice[order]
        start = torch.searchsorted(choice_sorted, choice_sorted, right=False)
        rank = torch.arange(len(order)) - start
        accept = rank < room[choice_sorted]
        assign[idx[order][accept]] = choice_sorted[accept]
        room -= torch.bincount(choice_sorted[accept], minlength=k)
    if (assign < 0).any():  # cannot happen while n <= k * capacity
        raise RuntimeError("balanced k-means left points unassigned")
    return assign.numpy()


def _kmeanspp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007), seeded."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centers = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # all remaining points coincide with a centre
            nxt = int(torch.randint(n, (1,), generator=gen))
        else:
            nxt = int(torch.multinomial(d2 / total, 1, generator=gen))
        centers.append(x[nxt])
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    return torch.stack(centers)
