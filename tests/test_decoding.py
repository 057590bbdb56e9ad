"""Constrained beam search: exact when the beam holds every id, valid and distinct always."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitdsi.ids import make_ids
from vitdsi.models import IdTrie, VitDSI, VitDSIConfig, atomic_topk, beam_search, sequence_logprob


def model_for(ids, seed: int = 0, **kw) -> VitDSI:
    torch.manual_seed(seed)
    cfg = VitDSIConfig(
        image_size=16,
        patch_size=4,
        dim=32,
        ff_dim=64,
        depth=2,
        heads=2,
        dropout=0.0,
        id_length=ids.length,
        atomic=ids.atomic,
        n_ids=ids.n,
        **kw,
    )
    model = VitDSI(cfg).eval()
    # larger random weights than the training init, so rankings depend on the image
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    return model


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scheme,n", [("random", 37), ("semantic", 123), ("clustered", 9), ("rq", 80)])
def test_full_beam_equals_scoring_every_id(scheme, n):
    rng = np.random.default_rng(0)
    ids = make_ids(scheme, n, labels=rng.integers(0, 3, n), features=rng.normal(size=(n, 5)), seed=0)
    model, x = model_for(ids), images(6)
    with torch.no_grad():
        reference = sequence_logprob(model, x, ids.codes)  # [6, n] teacher-forced log P(id | image)
    ref_scores, ref_ids = reference.sort(dim=1, descending=True, stable=True)
    positions, scores = beam_search(model, x, IdTrie.build(ids.codes), k=n, beam=n)
    assert torch.equal(positions, ref_ids)
    assert torch.allclose(scores, ref_scores, atol=1e-4)
    # the ranking is not trivially the same for every query
    assert len({tuple(r[:5].tolist()) for r in positions}) > 1


@pytest.mark.parametrize("beam,k", [(1, 1), (3, 3), (4, 10), (10, 5)])
def test_narrow_beam_returns_distinct_valid_ids_with_true_scores(beam, k):
    ids = make_ids("random", 250, seed=4)
    model, x = model_for(ids, seed=3), images(8, seed=2)
    positions, scores = beam_search(model, x, IdTrie.build(ids.codes), k=k, beam=beam)
    assert positions.shape == (8, k) and scores.dtype == torch.float32
    assert ((positions >= 0) & (positions < 250)).all()
    for row in positions:
        assert len(set(row.tolist())) == k
    assert (scores[:, 1:] <= scores[:, :-1] + 1e-6).all()
    with torch.no_grad():
        reference = sequence_logprob(model, x, ids.codes)
    # each score is the model's log-probability of the id returned: no recovered or filler ids
    assert torch.allclose(scores, reference.gather(1, positions), atol=1e-4)
    # a wider beam never finds a worse best id
    wide, wide_scores = beam_search(model, x, IdTrie.build(ids.codes), k=1, beam=250)
    assert (wide_scores[:, 0] >= scores[:, 0] - 1e-5).all()
    assert torch.allclose(wide_scores[:, 0], reference.max(1).values, atol=1e-4)


def test_sparse_id_set_only_returns_members():
    # 12 ids scattered in a 3-digit space: most prefixes are invalid
    codes = torch.tensor(
        [
            [int(c) for c in s]
            for s in ["007", "070", "099", "100", "355", "356", "512", "513", "801", "802", "990", "999"]
        ]
    )
    from vitdsi.ids import IdMap

    ids = IdMap("semantic", codes)
    model, x = model_for(ids), images(5)
    positions, scores = beam_search(model, x, IdTrie.build(codes), k=12, beam=2)
    for row in positions:
        assert sorted(row.tolist()) == list(range(12))


def test_fewer_ids_than_k_pads_with_minus_one():
    ids = make_ids("random", 4, seed=0)
    model, x = model_for(ids), images(3)
    positions, scores = beam_search(model, x, IdTrie.build(ids.codes), k=7, beam=10)
    assert (positions[:, 4:] == -1).all() and torch.isinf(scores[:, 4:]).all()
    assert all(sorted(r[:4].tolist()) == [0, 1, 2, 3] for r in positions)


def test_trie_tables():
    codes = torch.tensor([[0, 1], [0, 3], [2, 1]])
    trie = IdTrie.build(codes)
    assert trie.length == 2 and trie.level_size(1) == 2 and trie.level_size(2) == 3
    assert trie.children[0][0].tolist() == [0, -1, 1, -1, -1, -1, -1, -1, -1, -1]
    assert (trie.children[1][0] >= 0).nonzero()[:, 0].tolist() == [1, 3]
    leaves = trie.children[1][trie.children[0][0, 2], 1]
    assert int(trie.leaf_position[leaves]) == 2  # "21" is corpus position 2


def test_atomic_topk_matches_sequence_logprob():
    ids = make_ids("atomic", 20)
    model, x = model_for(ids), images(4)
    positions, scores = atomic_topk(model, x, 20)
    with torch.no_grad():
        reference = sequence_logprob(model, x, ids.codes)
    ref_scores, ref_ids = reference.sort(dim=1, descending=True)
    assert torch.equal(positions, ref_ids) and torch.allclose(scores, ref_scores, atol=1e-5)
