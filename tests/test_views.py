"""New views of images (vitdsi.data.views): seeded, vectorised, ordered by strength."""

from __future__ import annotations

import pytest
import torch

from vitdsi.data.views import PRESETS, ViewStrength, make_views, view_seed
from vitdsi.errors import VitDSIError


@pytest.fixture(scope="module")
def images(digits32):
    return digits32.images[:64]


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def test_views_are_seeded_and_keep_shape(images):
    a = make_views(images, "medium", seed=3)
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert torch.equal(a, make_views(images, "medium", seed=3))
    assert not torch.equal(a, make_views(images, "medium", seed=4))
    assert not torch.equal(a, images)


def test_stronger_presets_drift_further(images):
    d = {name: _distance(make_views(images, name, seed=0), images) for name in PRESETS}
    assert 0 < d["light"] < d["medium"] < d["strong"]


def test_roles_get_disjoint_seeds():
    seeds = {view_seed(0, role) for role in ("train", "val", "test")}
    assert len(seeds) == 3 and view_seed(0, "train") == view_seed(0, "train") != view_seed(1, "train")
    assert view_seed(0, "train", 1) != view_seed(0, "train", 0)


def test_identity_strength_without_jpeg_returns_the_image(images):
    identity = ViewStrength("none", (1.0, 1.0), (1.0, 1.0), 0.0, 0.0, 0.0, 0.0, None)
    assert torch.equal(make_views(images, identity, seed=0, hflip=False), images)
    # with flips allowed, about half the images come back mirrored, the rest unchanged
    flipped = make_views(images, identity, seed=0, hflip=True)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    same = (flipped == images).flatten(1).all(1)
    assert (mirrored | same).all() and 10 < int(mirrored.sum()) < 54


def test_jpeg_reencoding_changes_pixels_by_quality(images):
    base = dict(
        crop_area=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation=0.0, brightness=0.0, contrast=0.0, noise=0.0
    )
    high = make_views(images, ViewStrength("q95", jpeg_quality=(95, 95), **base), seed=0, hflip=False)
    low = make_views(images, ViewStrength("q10", jpeg_quality=(10, 10), **base), seed=0, hflip=False)
    assert 0 < _distance(high, images) < _distance(low, images)


def test_bad_input_is_a_clear_error(images):
    with pytest.raises(VitDSIError, match="unknown view strength 'heavy'; presets: light, medium, strong"):
        make_views(images, "heavy", seed=0)
    with pytest.raises(VitDSIError, match="uint8 images"):
        make_views(images.float(), "light", seed=0)
    with pytest.raises(VitDSIError, match="crop_area"):
        ViewStrength("bad", (0.0, 1.0), (1.0, 1.0), 0.0, 0.0, 0.0, 0.0, None)


def test_grey_images_stay_grey(images):
    view = make_views(images, "strong", seed=0)
    assert (view[:, 0] == view[:, 1]).all() and (view[:, 1] == view[:, 2]).all()
