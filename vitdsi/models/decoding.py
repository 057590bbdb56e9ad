"""Prefix-constrained beam search over the valid ids of a corpus (Tay et al. 2022, section 3.3;
De Cao et al. 2021, "Autoregressive Entity Retrieval", for the prefix trie).

The valid ids are held as a trie of tensors: at every level, for each valid prefix, the
index of its child per digit (-1 where no id continues). Each decoding step scores the
10 digits of every live hypothesis, masks the digits that leave the trie, and keeps the
best `beam` continuations per query, all queries at once. Every returned id exists and
none repeats (hypotheses are distinct trie paths); scores are full-sequence
log-probabilities (digits and EOS), sorted. There is no "nearest valid id" recovery and
no filler: if fewer than k ids can be returned the row is padded with -1 / -inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitdsi.models.vit_dsi import BOS, EOS, N_DIGITS, VitDSI


@dataclass
class IdTrie:
    """The set of valid ids as per-level child tables."""

    children: list[torch.Tensor]  # level l in 0..L-1: int64 [nodes at level l, 10] -> child node or -1
    leaf_position: torch.Tensor  # int64 [N]: corpus position of each leaf (level-L node)

    @staticmethod
    def build(codes: torch.Tensor) -> IdTrie:
        """From the digits of every valid id, int64 [N, L] (row i = id of corpus position i)."""
        codes = codes.long()
        n, length = codes.shape
        weights = N_DIGITS ** torch.arange(length, dtype=torch.int64, device=codes.device)
        node_of = []  # per level: node index of each item's prefix of that length
        for level in range(length + 1):
            prefix = (codes[:, :level] * weights[:level].flip(0)).sum(1) if level else codes.new_zeros(n)
            node_of.append(torch.unique(prefix, return_inverse=True)[1])
        children = []
        for level in range(length):
            table = torch.full(
                (int(node_of[level].max()) + 1, N_DIGITS), -1, dtype=torch.int64, device=codes.device
            )
            table[node_of[level], codes[:, level]] = node_of[level + 1]
            children.append(table)
        leaf_position = torch.empty(n, dtype=torch.int64, device=codes.device)
        leaf_position[node_of[length]] = torch.arange(n, device=codes.device)
        return IdTrie(children, leaf_position)

    @property
    def length(self) -> int:
        return len(self.children)

    def level_size(self, level: int) -> int:
        """Number of valid prefixes of `level` digits."""
        return self.children[level].shape[0] if level < self.length else self.leaf_position.shape[0]

    def to(self, device: torch.device | str) -> IdTrie:
        return IdTrie([c.to(device) for c in self.children], self.leaf_position.to(device))


@torch.no_grad()
def beam_search(
    model: VitDSI, images: torch.Tensor, trie: IdTrie, k: int, beam: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k valid ids for normalised float images [B, C, H, W].

    Returns corpus positions int64 [B, k] (-1 where fewer than k ids exist) and their
    sequence log-probabilities float32 [B, k], non-increasing per row. The beam width is
    max(beam, k) so that k distinct ids survive to the end.
    """
    return beam_search_memory(model, model.encode(images), trie, k, beam)


@torch.no_grad()
def beam_search_memory(
    model: VitDSI, memory: torch.Tensor, trie: IdTrie, k: int, beam: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`beam_search` from an encoded memory [B, P, D] (image patches, or caption tokens with their
    padding `mask`, bool [B, P])."""
    width = max(beam, k)
    kv = model.memory_kv(memory, mask)
    b, device = memory.shape[0], memory.device
    tokens = torch.full((b, 1, 1), BOS, dtype=torch.int64, device=device)  # [B, W, T]
    nodes = torch.zeros((b, 1), dtype=torch.int64, device=device)  # trie node of each hypothesis, -1 = dead
    scores = torch.zeros((b, 1), dtype=torch.float32, device=device)
    for level in range(trie.length):
        logp = F.log_softmax(model.decode(tokens, memory, kv, last_only=True, mask=mask).float(), -1)[
            ..., :N_DIGITS
        ]
        child = trie.children[level][nodes.clamp(min=0)]  # [B, W, 10]
        allowed = (child >= 0) & (nodes >= 0)[..., None]
        cand = (scores[..., None] + logp).masked_fill(~allowed, float("-inf")).flatten(1)  # [B, W*10]
        keep = min(width, trie.level_size(level + 1), cand.shape[1])
        scores, flat = cand.topk(keep, dim=1)
        parent, digit = flat // N_DIGITS, flat % N_DIGITS
        nodes = child.flatten(1).gather(1, flat).masked_fill(torch.isinf(scores), -1)
        tokens = torch.cat(
            [tokens.gather(1, parent[..., None].expand(-1, -1, tokens.shape[2])), digit[..., None]], 2
        )
    # close every id with EOS so scores are the same full-sequence log-probs as in training
    eos = F.log_softmax(model.decode(tokens, memory, kv, last_only=True, mask=mask).float(), -1)[..., EOS]
    scores = torch.where(nodes >= 0, scores + eos, torch.full_like(scores, float("-inf")))
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    nodes = nodes.gather(1, order)
    positions = torch.where(nodes >= 0, trie.leaf_position[nodes.clamp(min=0)], torch.full_like(nodes, -1))
    if positions.shape[1] < k:  # fewer valid ids than k
        pad = k - positions.shape[1]
        positions = F.pad(positions, (0, pad), value=-1)
        scores = F.pad(scores, (0, pad), value=float("-inf"))
    return positions[:, :k].contiguous(), scores[:, :k].contiguous()


@torch.no_grad()
def atomic_topk(model: VitDSI, images: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k corpus positions of the atomic head (one step): positions [B, k], log-probs [B, k]."""
    return atomic_topk_memory(model, model.encode(images), k)


@torch.no_grad()
def atomic_topk_memory(
    model: VitDSI, memory: torch.Tensor, k: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`atomic_topk` from an encoded memory [B, P, D] (and its padding `mask`, bool [B, P])."""
    logp = F.log_softmax(model.atomic_logits(memory, mask).float(), -1)
    scores, positions = logp.topk(min(k, logp.shape[1]), dim=1)
    if positions.shape[1] < k:
        pad = k - positions.shape[1]
        positions = F.pad(positions, (0, pad), value=-1)
        scores = F.pad(scores, (0, pad), value=float("-inf"))
    return positions, scores
