"""Identifier schemes: fixed length, unique, the structure each scheme promises, and the inverse map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitdsi.errors import VitDSIError
from vitdsi.ids import IdMap, id_length, make_ids


def blobs(n_per: int, n_blobs: int = 10, dim: int = 16, seed: int = 0):
    """Well separated Gaussian blobs and their blob index."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_blobs, dim)) * 20
    labels = np.repeat(np.arange(n_blobs), n_per)
    return centers[labels] + rng.normal(size=(len(labels), dim)), labels


@pytest.mark.parametrize(
    "n,length", [(1, 1), (7, 1), (10, 1), (11, 2), (100, 2), (512, 3), (1000, 3), (1001, 4)]
)
def test_id_length(n, length):
    assert id_length(n) == length


@pytest.mark.parametrize("scheme", ["random", "clustered", "semantic"])
@pytest.mark.parametrize("n", [7, 100, 347])
def test_digit_schemes_are_unique_fixed_length_digits(scheme, n):
    feats, labels = blobs(n // 10 + 1)
    ids = make_ids(scheme, n, labels=labels[:n] % 10, features=feats[:n], seed=3)
    assert ids.codes.shape == (n, id_length(n))
    assert ids.codes.min() >= 0 and ids.codes.max() <= 9
    assert len(set(ids.strings())) == n
    assert all(len(s) == id_length(n) for s in ids.strings())


def test_random_ids_are_a_seeded_permutation_not_class_contiguous():
    labels = np.repeat(np.arange(10), 20)
    a = make_ids("random", 200, labels=labels, seed=0)
    assert sorted(a.values.tolist()) == list(range(200))  # dense
    assert torch.equal(a.codes, make_ids("random", 200, seed=0).codes)  # seeded
    assert not torch.equal(a.codes, make_ids("random", 200, seed=1).codes)
    # class-contiguous ids would give each class a range of width 20; random ones spread out
    spans = [np.ptp(a.values.numpy()[labels == c]) for c in range(10)]
    assert min(spans) > 50


def test_clustered_ids_number_each_class_consecutively():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=123)
    ids = make_ids("clustered", 123, labels=labels, seed=0)
    values = ids.values.numpy()
    for c in range(5):
        v = np.sort(values[labels == c])
        assert (np.diff(v) == 1).all(), f"class {c} ids are not consecutive"
    # classes come in label order
    assert values[labels == 0].max() < values[labels == 1].min()


def test_semantic_ids_share_a_prefix_within_a_blob():
    feats, labels = blobs(40)  # 400 points in 10 far-apart blobs
    ids = make_ids("semantic", 400, features=feats, seed=0)
    first = ids.codes[:, 0].numpy()
    # each blob maps to one first digit, and different blobs to different digits
    for b in range(10):
        assert len(set(first[labels == b])) == 1
    assert len(set(first)) == 10


def test_semantic_ids_respect_capacity_when_clusters_are_uneven():
    # one huge blob and a few small ones: a plain k-means tree would need more digits
    rng = np.random.default_rng(1)
    feats = np.concatenate([rng.normal(size=(900, 8)), rng.normal(size=(100, 8)) + 30])
    ids = make_ids("semantic", 1000, features=feats, seed=0)
    assert ids.length == 3 and len(set(ids.strings())) == 1000
    counts = np.bincount(ids.codes[:, 0].numpy(), minlength=10)
    assert counts.max() <= 100


def test_atomic_ids_are_one_token_per_image():
    ids = make_ids("atomic", 37)
    assert ids.atomic and ids.length == 1
    assert torch.equal(ids.codes[:, 0], torch.arange(37))


@pytest.mark.parametrize("scheme", ["random", "clustered", "semantic", "atomic"])
def test_positions_invert_codes_and_reject_unknown_ids(scheme):
    feats, labels = blobs(6)
    ids = make_ids(scheme, 57, labels=labels[:57], features=feats[:57], seed=2)
    assert torch.equal(ids.positions(ids.codes), torch.arange(57))
    perm = torch.randperm(57)
    assert torch.equal(ids.positions(ids.codes[perm]), perm)
    if not ids.atomic:
        assert int(ids.positions(torch.full((1, ids.length), 9))[0]) == -1  # "99" is not among 57 dense ids
    back = IdMap.from_state(ids.state())
    assert back.scheme == scheme and torch.equal(back.codes, ids.codes)


def test_errors_name_the_problem():
    with pytest.raises(VitDSIError, match="unknown id scheme 'dense'"):
        make_ids("dense", 10)
    with pytest.raises(VitDSIError, match="needs the class label"):
        make_ids("clustered", 10)
    with pytest.raises(VitDSIError, match="needs a feature vector"):
        make_ids("semantic", 10)
    with pytest.raises(VitDSIError, match="not unique"):
        IdMap("random", torch.tensor([[1, 2], [1, 2]]))


@pytest.mark.parametrize("n", [7, 100, 347])
def test_rq_ids_are_unique_digits_with_a_disambiguation_tail(n):
    feats, _ = blobs(n // 10 + 1)
    ids = make_ids("rq", n, features=feats[:n], seed=3)
    levels = max(1, id_length(n) - 1)
    assert ids.codes.shape[1] > levels  # the quantiser digits, then at least one disambiguation digit
    assert ids.codes.min() >= 0 and ids.codes.max() <= 9
    assert len(set(ids.strings())) == n
    again = make_ids("rq", n, features=feats[:n], seed=3)
    assert torch.equal(again.codes, ids.codes)  # seeded: the same ids every time


def test_rq_first_level_follows_the_features_not_the_labels():
    feats, labels = blobs(40)
    # labels are ignored
    ids = make_ids("rq", 400, features=feats, seed=0, labels=np.zeros(400, dtype=np.int64))
    first = ids.codes[:, 0].numpy()
    assert all(len(set(first[labels == b])) == 1 for b in range(10)) and len(set(first)) == 10
    # the second level quantises what is left inside a blob: points of one blob spread over its digits
    second = ids.codes[:, 1].numpy()
    assert len(set(second[labels == 0])) > 1
