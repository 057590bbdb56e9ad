"""Captions as data: COCO caption files, coco-mosaic's generated captions, and how splits assign them."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from vitdsi.data import load_dataset, make_split
from vitdsi.data.captions import PART_PHRASING, Captions
from vitdsi.data.sources.mosaic_captions import TEMPLATES, literal_parts, template_ids
from vitdsi.errors import DatasetNotFoundError, VitDSIError

PARTS = ("corpus", "train", "val", "test")


def _caption_json(folder):
    return json.loads((folder / "annotations" / "captions.json").read_text())


def _by_image(anns):
    out = {}
    for a in anns:
        out.setdefault(a["image_id"], []).append(a)
    return out


def test_mosaic_writes_a_real_coco_caption_file_that_the_coco_loader_reads(captioned_mosaic, tmp_path):
    from pycocotools.coco import COCO

    from vitdsi.data.sources.mosaic import generate_coco_mosaic

    doc = _caption_json(captioned_mosaic)
    coco = COCO(str(captioned_mosaic / "annotations" / "captions.json"))  # pycocotools reads it as COCO does
    assert len(coco.getImgIds()) == 90 and len(coco.anns) == 90 * 3 * 2
    assert all({"id", "image_id", "caption"} <= set(a) for a in doc["annotations"])
    ds = load_dataset("coco", root=str(captioned_mosaic), size=24)
    assert ds.captions is not None and len(ds.captions) == 540
    assert (ds.captions.per_image(len(ds)) == 6).all()
    # every image's captions are exactly the file's captions for its COCO image id
    by_image = _by_image(doc["annotations"])
    for pos in (0, 17, 89):
        want = sorted((a["id"], a["caption"], a["phrasing"]) for a in by_image[int(ds.source_ids[pos])])
        rows = np.flatnonzero(ds.captions.image == pos)
        got = sorted(
            zip(
                ds.captions.ids[rows].tolist(),
                ds.captions.texts[rows].tolist(),
                ds.captions.phrasing[rows].tolist(),
            )
        )
        assert got == want
    # deterministic under the seed
    again = generate_coco_mosaic(tmp_path / "again", n_images=90, grid=3, tile_size=8, captions=2, seed=3)
    assert _caption_json(again) == doc


def test_captions_describe_the_tiles(captioned_mosaic):
    """The counting captions ("two bags and a sneaker") name each object of the mosaic."""
    from vitdsi.data.sources.mosaic_captions import NOUNS, NUMBERS

    inst = json.loads((captioned_mosaic / "annotations" / "instances.json").read_text())
    cats = {}
    for a in inst["annotations"]:
        cats.setdefault(a["image_id"], []).append(str(a["category_id"] - 1))
    counting = {
        k
        for k, (kind, _) in enumerate(t for p in ("train", "val", "test") for t in TEMPLATES[p])
        if kind == "count"
    }
    checked = 0
    for a in _caption_json(captioned_mosaic)["annotations"]:
        if a["template"] not in counting:
            continue
        for name, n in zip(*np.unique(cats[a["image_id"]], return_counts=True)):
            form = 0 if n == 1 else 1
            phrases = [
                (("an " if s[0] in "aeiou8" and not s.startswith("one") else "a ") + s)
                if n == 1
                else f"{NUMBERS[n]} {s}"
                for s in (f[form] for f in NOUNS[name])
            ]
            assert any(p in a["caption"] for p in phrases), (a["caption"], name, n)
        checked += 1
    assert checked > 100


def test_held_out_templates_never_appear_in_training_captions(captioned_mosaic):
    ds = load_dataset("coco", root=str(captioned_mosaic), size=24)
    sets = make_split(ds, n_total=90, split_ratio=0.4, seed=1).apply(ds)
    # the fixed words of every validation and test template (its longest literal piece)
    held_out = {p: [max(literal_parts(t), key=len) for _, t in TEMPLATES[p]] for p in ("val", "test")}
    assert all(len(m) >= 6 for ms in held_out.values() for m in ms)
    training_text = np.concatenate([sets.corpus.captions.texts, sets.train.captions.texts])
    # their 2 training-phrased captions each
    assert len(training_text) == 2 * (len(sets.corpus) + len(sets.train))
    for marker in held_out["val"] + held_out["test"]:
        assert not any(marker in t for t in training_text), marker
    for part in ("val", "test"):
        texts = getattr(sets, part).captions.texts
        assert len(texts) and all(any(m in t for m in held_out[part]) for t in texts)
    # and by the template each caption was written with, as the file records it
    template_of = {a["id"]: a["template"] for a in _caption_json(captioned_mosaic)["annotations"]}
    ids = template_ids()
    for part in PARTS:
        used = {template_of[i] for i in getattr(sets, part).captions.ids.tolist()}
        assert used and used <= set(ids[PART_PHRASING[part]]), part
    # every test template used
    assert {template_of[i] for i in sets.test.captions.ids.tolist()} == set(ids["test"])


def test_a_caption_goes_to_the_part_of_its_image(captioned_mosaic):
    ds = load_dataset("coco", root=str(captioned_mosaic), size=24)
    sets = make_split(ds, n_total=80, split_ratio=0.5, seed=0).apply(ds)
    full = ds.captions
    seen = set()
    for part in PARTS:
        s = getattr(sets, part)
        got = set(zip(s.source_ids[s.captions.image].tolist(), s.captions.ids.tolist()))
        in_part = np.isin(ds.source_ids[full.image], s.source_ids) & (full.phrasing == PART_PHRASING[part])
        assert got == set(zip(ds.source_ids[full.image[in_part]].tolist(), full.ids[in_part].tolist()))
        assert (s.captions.per_image(len(s)) == 2).all()  # each image keeps its part's 2 captions
        assert not got & seen
        seen |= got


def test_untagged_captions_follow_their_image_into_any_part(captioned_mosaic, tmp_path):
    """Real COCO: captions_X.json beside instances_X.json, no phrasing tags: every caption of an image
    goes with it. A caption file of other images beside it is not read."""
    ann = tmp_path / "annotations"
    ann.mkdir()
    shutil.copy(captioned_mosaic / "annotations" / "instances.json", ann / "instances_val2017.json")
    doc = _caption_json(captioned_mosaic)
    for a in doc["annotations"]:
        del a["phrasing"], a["template"]
    (ann / "captions_val2017.json").write_text(json.dumps(doc))
    decoy = {"images": [], "annotations": [{"id": 1, "image_id": 1, "caption": "from another file"}]}
    (ann / "captions_train2017.json").write_text(json.dumps(decoy))
    kw = dict(
        annotations=str(ann / "instances_val2017.json"), images=str(captioned_mosaic / "images"), size=24
    )
    ds = load_dataset("coco", **kw)
    assert len(ds.captions) == 540 and "from another file" not in ds.captions.texts
    assert set(ds.captions.phrasing.tolist()) == {""}
    sets = make_split(ds, n_total=80, split_ratio=0.5, seed=0).apply(ds)
    assert all((getattr(sets, p).captions.per_image(len(getattr(sets, p))) == 6).all() for p in PARTS)
    assert load_dataset("coco", captions=False, **kw).captions is None
    one = load_dataset("coco", captions=str(ann / "captions_train2017.json"), **kw)
    assert one.captions.texts.tolist() == ["from another file"] and one.captions.image.tolist() == [0]
    with pytest.raises(DatasetNotFoundError, match="caption file .*missing.json not found"):
        load_dataset("coco", captions=str(ann / "missing.json"), **kw)
    (ann / "captions_val2017.json").write_text(json.dumps({"annotations": [{"id": 1, "image_id": 1}]}))
    with pytest.raises(VitDSIError, match="lacks id, image_id or caption"):
        load_dataset("coco", **kw)


def test_image_only_data_have_no_captions(digits32, tiny_split, tmp_path):
    assert digits32.captions is None
    assert all(getattr(tiny_split, p).captions is None for p in PARTS)
    plain = load_dataset("coco-mosaic", root=str(tmp_path), n_images=12, tile_size=8, captions=0)
    assert plain.captions is None and plain.multilabel
    assert not (next(tmp_path.iterdir()) / "annotations" / "captions.json").exists()


def test_mosaic_cache_key_changed_so_old_caches_without_captions_are_not_reused(tmp_path):
    """A folder cached before captions existed (same parameters, the old key) is never read."""
    from vitdsi.data.sources.mosaic import generate_coco_mosaic

    old_params = {
        "base": "digits",
        "base_root": None,
        "n_images": 12,
        "grid": 2,
        "tile_size": 8,
        "p_empty": 0.25,
        "seed": 0,
    }
    old_key = hashlib.sha1(json.dumps(old_params, sort_keys=True).encode()).hexdigest()[:10]
    old = generate_coco_mosaic(tmp_path / old_key, captions=0, **old_params)
    (old / "mosaic.json").write_text(json.dumps(old_params))
    ds = load_dataset("coco-mosaic", root=str(tmp_path), n_images=12, tile_size=8)
    assert ds.captions is not None and len(ds.captions) == 12 * 3 * 3
    assert old_key not in ds.meta["annotations"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [old_key, ds.meta["annotations"].split("/")[-3]]
    )
    no_caps = load_dataset("coco-mosaic", root=str(tmp_path), n_images=12, tile_size=8, captions=0)
    assert no_caps.captions is None and torch.equal(no_caps.images, ds.images)  # same mosaics, own folder
    assert len(list(tmp_path.iterdir())) == 3


def test_subset_and_concat_keep_each_image_its_captions():
    texts = [f"caption {k}" for k in range(7)]
    caps = Captions.build(texts, [2, 0, 2, 1, 3, 2, 0], np.arange(7) + 100)
    assert caps.image.tolist() == [0, 0, 1, 2, 2, 2, 3]  # sorted by image, then id
    picked = caps.for_images(np.array([2, 0, 2, 4]))
    want = [(new, t) for new, old in enumerate([2, 0, 2, 4]) for t in caps.texts[caps.image == old]]
    assert list(zip(picked.image.tolist(), picked.texts.tolist())) == want
    assert want[:3] == [(0, "caption 0"), (0, "caption 2"), (0, "caption 5")]
    assert picked.per_image(4).tolist() == [3, 2, 3, 0]

    from vitdsi.data import ImageSet

    def images(n, caps):
        return ImageSet(
            torch.zeros(n, 3, 4, 4, dtype=torch.uint8),
            torch.zeros(n, dtype=torch.int64),
            np.array([str(i) for i in range(n)]),
            ("a",),
            captions=caps,
        )

    a, b = images(4, caps), images(2, Captions.build(["x", "y"], [1, 1], [7, 8]))
    both = a.concat(b)
    assert both.captions.image.tolist() == caps.image.tolist() + [5, 5]
    assert a.concat(images(2, None)).captions.image.tolist() == caps.image.tolist()
    assert images(2, None).concat(b).captions.image.tolist() == [3, 3]
    with pytest.raises(VitDSIError, match="a caption describes image 3 of 3"):
        images(3, caps)
    with pytest.raises(VitDSIError, match="unknown phrasing"):
        Captions.build(["x"], [0], [1], ["holdout"])
