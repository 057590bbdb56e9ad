"""Data sources, preparation, splits and relevance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitdsi.data import Relevance, Split, load_dataset, make_split
from vitdsi.data.prep import prepare_batch
from vitdsi.errors import DatasetNotFoundError, VitDSIError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_digits_is_uint8_rgb_square(digits32):
    assert digits32.images.shape == (1797, 3, 32, 32) and digits32.images.dtype == torch.uint8
    assert digits32.labels.dtype == torch.int64 and set(digits32.labels.tolist()) == set(range(10))
    assert len(set(digits32.source_ids.tolist())) == 1797
    assert torch.equal(digits32.images[:, 0], digits32.images[:, 2])  # grey replicated to RGB
    assert digits32.images.max() > 200  # 0..16 rescaled to 0..255


@pytest.mark.skipif(not FASHION.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion-mnist", size=28, fit="pad")
    assert ds.images.shape == (70000, 3, 28, 28)
    assert np.bincount(ds.labels.numpy()).tolist() == [7000] * 10
    assert ds.source_ids[0] == "train/0" and ds.source_ids[-1] == "test/9999"
    padded = load_dataset("fashion-mnist", size=32, fit="pad", limit=100, seed=1)
    assert padded.images.shape == (100, 3, 32, 32)
    assert (padded.images[:, :, :2] == 0).all()  # zero border from padding 28 -> 32


def test_fashion_mnist_missing_root_names_where_it_looked(tmp_path, monkeypatch):
    from vitdsi.data.sources import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", root=str(tmp_path / "empty"), download=False)
    msg = str(err.value)
    assert (
        str(tmp_path / "empty") in msg and "nowhere" in msg and "apt-get install dataset-fashion-mnist" in msg
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", download=False)
    assert "nowhere" in str(err.value) and "apt-get install dataset-fashion-mnist" in str(err.value)


def test_fashion_mnist_root_you_give_must_exist(tmp_path, monkeypatch):
    """A given root is never silently replaced by the default location, even when that one exists."""
    from vitdsi.data.sources import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", tmp_path / "debian")
    monkeypatch.setattr(fashion_mnist, "_has_all", lambda root: root == tmp_path / "debian")
    assert fashion_mnist.locate(None, download=False) == tmp_path / "debian"  # unset root: the default
    with pytest.raises(DatasetNotFoundError, match=r"root .*no-such-dir does not exist"):
        fashion_mnist.locate(str(tmp_path / "no-such-dir"), download=True)
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"not found in the given root .*other"):
        fashion_mnist.locate(str(tmp_path / "other"), download=False)


def _write_fashion(root: Path, n: int = 6) -> None:
    """The four Fashion-MNIST idx files, gzipped, with `n` random 28x28 images per part."""
    import gzip

    rng = np.random.default_rng(0)
    for images, labels in (
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ):
        pixels = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8).tobytes()
        head = b"\x00\x00\x08\x03" + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28))
        (root / f"{images}.gz").write_bytes(gzip.compress(head + pixels))
        tags = (np.arange(n) % 10).astype(np.uint8).tobytes()
        (root / f"{labels}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + n.to_bytes(4, "big") + tags))


@pytest.mark.parametrize("damage", ["truncated gzip", "not gzip", "short body", "wrong magic"])
def test_corrupt_or_truncated_fashion_mnist_file_is_named(tmp_path, damage):
    import gzip

    _write_fashion(tmp_path)
    assert load_dataset("fashion-mnist", root=str(tmp_path), size=28, download=False).images.shape == (
        12,
        3,
        28,
        28,
    )
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = path.read_bytes()
    if damage == "truncated gzip":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not gzip":
        path.write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 64)
    elif damage == "short body":
        path.write_bytes(gzip.compress(gzip.decompress(data)[:-100]))
    else:
        path.write_bytes(gzip.compress(b"<html>" + gzip.decompress(data)[6:]))
    with pytest.raises(VitDSIError, match=rf"fashion-mnist file {path} is corrupt or truncated \("):
        load_dataset("fashion-mnist", root=str(tmp_path), size=28, download=False)


def test_truncated_fashion_mnist_label_header_is_named(tmp_path):
    from vitdsi.data.sources import fashion_mnist

    _write_fashion(tmp_path)
    assert fashion_mnist.count(tmp_path) == 12
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(VitDSIError, match=rf"{path} is corrupt or truncated"):
        fashion_mnist.count(tmp_path)


def test_unknown_dataset_and_parameter_and_limit_errors():
    with pytest.raises(
        VitDSIError, match="known datasets: digits, fashion-mnist, imagefolder, coco, coco-mosaic"
    ):
        load_dataset("mnist")
    with pytest.raises(VitDSIError, match=r"unknown parameter\(s\) \['sise'\]"):
        load_dataset("digits", sise=32)
    with pytest.raises(VitDSIError, match="has 1797 images but limit=5000"):
        load_dataset("digits", limit=5000)


def test_limit_is_stratified_and_seeded():
    a = load_dataset("digits", size=8, limit=200, seed=3)
    b = load_dataset("digits", size=8, limit=200, seed=3)
    c = load_dataset("digits", size=8, limit=200, seed=4)
    assert (a.source_ids == b.source_ids).all() and not (a.source_ids == c.source_ids).all()
    counts = np.bincount(a.labels.numpy(), minlength=10)
    assert counts.min() >= 19 and counts.max() <= 21


def _write_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for cls, shade in (("cat", 40), ("dog", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            arr = np.full((40, 42, 3), shade, np.uint8) + rng.integers(0, 10, (40, 42, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
        Image.fromarray(np.zeros((20, 60, 3), np.uint8)).save(root / cls / "wide.png")  # aspect 3: dropped
    (root / "dog" / "notes.txt").write_text("not an image")


def test_imagefolder_square_filter_crop_resize(tmp_path):
    _write_tree(tmp_path)
    ds = load_dataset("imagefolder", root=str(tmp_path), size=16)
    assert ds.images.shape == (12, 3, 16, 16)
    assert ds.class_names == ("cat", "dog")
    assert ds.meta["skipped"] == 2
    assert ds.images[ds.labels == 0].float().mean() < 60 < ds.images[ds.labels == 1].float().mean()
    assert (
        load_dataset("imagefolder", root=str(tmp_path), size=16, limit=4, seed=0).labels.tolist().count(0)
        == 2
    )


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset("imagefolder", root=str(tmp_path / "missing"))
    with pytest.raises(VitDSIError, match="needs root"):
        load_dataset("imagefolder")


def test_coco_mosaic_is_real_coco_and_deterministic(tmp_path):
    from vitdsi.data.sources.mosaic import generate_coco_mosaic

    a = generate_coco_mosaic(tmp_path / "a", n_images=30, grid=2, tile_size=8, seed=5)
    b = generate_coco_mosaic(tmp_path / "b", n_images=30, grid=2, tile_size=8, seed=5)
    ja = json.loads((a / "annotations" / "instances.json").read_text())
    jb = json.loads((b / "annotations" / "instances.json").read_text())
    assert ja == jb
    assert (a / "images" / "mosaic_000000.png").read_bytes() == (
        b / "images" / "mosaic_000000.png"
    ).read_bytes()
    ds = load_dataset("coco", root=str(a), size=16)
    assert ds.multilabel and ds.labels.shape == (30, 10) and ds.labels.dtype == torch.bool
    assert ds.labels.any(1).all()
    # categories per image agree with the annotations
    cats = {}
    for ann in ja["annotations"]:
        cats.setdefault(ann["image_id"], set()).add(ann["category_id"] - 1)
    for row, sid in zip(ds.labels.numpy(), ds.source_ids):
        assert set(np.flatnonzero(row)) == cats[int(sid)]


def test_coco_mosaic_loader_caches(tmp_path):
    first = load_dataset("coco-mosaic", root=str(tmp_path), n_images=20, tile_size=8, seed=1)
    second = load_dataset("coco-mosaic", root=str(tmp_path), n_images=20, tile_size=8, seed=1)
    assert torch.equal(first.images, second.images) and first.images.shape == (20, 3, 16, 16)
    assert len(list(tmp_path.iterdir())) == 1


def test_coco_missing_annotations(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="annotation file"):
        load_dataset("coco", root=str(tmp_path))


def test_multilabel_relevance_any_shared_category():
    q = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], bool)
    c = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 1]], bool)
    rel = Relevance(q, c)
    dense = rel.to_sparse().toarray()
    assert dense.tolist() == [[True, False, False, True], [True, True, False, True], [False] * 4]
    assert rel.n_relevant().tolist() == [2, 3, 0]
    assert rel.gather(np.array([[0, 1], [2, -1], [0, 3]])).tolist() == [
        [True, False],
        [False, False],
        [False, False],
    ]


def test_single_label_relevance_matches_dense():
    rng = np.random.default_rng(0)
    q, c = rng.integers(0, 5, 30), rng.integers(0, 5, 50)
    rel = Relevance(q, c)
    assert (rel.to_sparse().toarray() == (q[:, None] == c[None, :])).all()
    assert (rel.n_relevant() == (q[:, None] == c[None, :]).sum(1)).all()


def test_split_is_by_image_disjoint_stratified_and_serialisable(digits32):
    split = make_split(digits32, n_total=1000, split_ratio=0.25, seed=0)
    sizes = split.sizes()
    assert sizes == {"idb": 250, "train": 600, "val": 75, "test": 75}
    parts = [set(p.tolist()) for p in (split.idb, split.train, split.val, split.test)]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 1000
    labels = digits32.labels.numpy()
    for part in (split.idb, split.train):
        share = np.bincount(labels[part], minlength=10) / len(part)
        assert np.abs(share - 0.1).max() < 0.02
    again = Split.from_json(split.to_json())
    assert all((x == y).all() for x, y in zip((split.idb, split.test), (again.idb, again.test)))
    assert again.params == json.loads(split.to_json())["params"]
    assert make_split(digits32, 1000, 0.25, seed=0).fingerprint() == split.fingerprint()
    assert make_split(digits32, 1000, 0.25, seed=1).fingerprint() != split.fingerprint()
    sets = split.apply(digits32)
    assert len(sets.corpus) == 250 and len(sets.test) == 75


def test_split_errors(digits32):
    with pytest.raises(VitDSIError, match="asked for 5000 images"):
        make_split(digits32, n_total=5000)
    with pytest.raises(VitDSIError, match="split_ratio"):
        make_split(digits32, n_total=100, split_ratio=1.5)
    with pytest.raises(VitDSIError, match="query_fractions"):
        make_split(digits32, n_total=100, query_fractions=(0.5, 0.5, 0.5))
    split = make_split(digits32, n_total=100)
    with pytest.raises(VitDSIError, match="made for a source of 1797|source ids"):
        split.apply(digits32.subset(np.arange(10)))


def test_prepare_batch_centre_crops_and_resizes():
    x = np.zeros((2, 10, 14), np.uint8)
    x[:, :, 2:12] = 255  # the centre 10x10 square is white, the side bands black
    out = prepare_batch(x, 5)
    assert out.shape == (2, 3, 5, 5) and (out == 255).all()
    with pytest.raises(VitDSIError, match="fit='pad' needs size"):
        prepare_batch(x, 5, fit="pad")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grey_image_is_scaled_not_clipped(tmp_path, suffix):
    from PIL import Image

    from vitdsi.data.prep import load_image_file

    ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    ramp[:8, :8] = 32768  # mid grey
    path = tmp_path / f"g16{suffix}"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_image_file(path, 16)
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
    assert abs(int(out[0, 2, 2]) - 128) <= 1  # mid grey stays mid grey (was 255)
    assert (
        out[:, 8:, 8:].float() / 255 - torch.from_numpy(ramp[8:, 8:] / 65535.0).float()
    ).abs().max() < 0.01
    assert int(out[0, 15, 15]) == 255


def test_split_without_queries_or_test_set_is_a_named_error(digits32):
    """split_ratio 1.0 and n_total 3 used to raise ZeroDivisionError, an empty test set nan metrics."""
    from vitdsi.data.split import split_sizes

    with pytest.raises(VitDSIError, match="no query images.*split_ratio=1.0"):
        make_split(digits32, n_total=100, split_ratio=1.0)
    with pytest.raises(VitDSIError, match="empty test set.*n_total=3"):
        make_split(digits32, n_total=3)
    with pytest.raises(VitDSIError, match="empty val set.*at least 6 queries"):
        make_split(digits32, n_total=6, split_ratio=0.2, query_fractions=(0.5, 0.1, 0.4))
    assert split_sizes(12, 0.25) == {"idb": 3, "train": 7, "val": 1, "test": 1}
    # a part with fraction 0 may be empty (latency studies: all queries are test queries)
    assert split_sizes(12, 0.25, (0.0, 0.0, 1.0)) == {"idb": 3, "train": 0, "val": 0, "test": 9}
    with pytest.raises(VitDSIError, match="empty test set.*give the test queries a share"):
        split_sizes(12, 0.25, (0.9, 0.1, 0.0))
    sizes = make_split(digits32, n_total=12, split_ratio=0.25).sizes()
    assert sizes == split_sizes(12, 0.25)


def test_imagefolder_skips_corrupt_and_truncated_files_alike(tmp_path, caplog):
    """A corrupt header and a truncated body are both skipped and counted; the load goes on."""
    import io
    import logging

    _write_tree(tmp_path)
    (tmp_path / "cat" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
        buf, format="PNG"
    )
    (tmp_path / "dog" / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("imagefolder", root=str(tmp_path), size=16)
    assert ds.images.shape == (12, 3, 16, 16) and ds.meta["unreadable"] == 2 and ds.meta["skipped"] == 4
    assert not any("truncated.png" in s for s in ds.source_ids.tolist())
    assert "skipped 2 unreadable image file(s)" in caplog.text


def test_split_stores_source_ids_and_refuses_changed_data(digits32, tmp_path):
    split = make_split(digits32, n_total=100, split_ratio=0.25, seed=0)
    chosen = np.concatenate([split.idb, split.train, split.val, split.test])
    stored = json.loads(split.to_json())["params"]["source_ids"]
    assert len(stored) == 100 and stored[str(int(chosen[0]))] == str(digits32.source_ids[chosen[0]])
    again = Split.from_json(split.to_json())
    assert len(again.apply(digits32).corpus) == 25  # the same data: fine
    # the same number of images, but one of the split's images is another file now
    ids = digits32.source_ids.astype(object)
    ids[split.test[0]] = "digits/renamed"
    changed = type(digits32)(
        digits32.images, digits32.labels, ids, digits32.class_names, digits32.name, digits32.meta
    )
    with pytest.raises(
        VitDSIError,
        match=rf"data changed.*image {split.test[0]} of 'digits' was 'digits/{split.test[0]}' and is now "
        r"'digits/renamed'",
    ):
        again.apply(changed)
    # positions the split did not choose (e.g. another seed's repeat) are checked by the digest
    others = np.setdiff1d(np.arange(len(digits32)), chosen)[:10]
    other = Split(others[:2], others[2:4], others[4:6], others[6:], params=again.params)
    ids = digits32.source_ids.astype(object)
    ids[others[0]] = "digits/moved"
    moved = type(digits32)(
        digits32.images, digits32.labels, ids, digits32.class_names, digits32.name, digits32.meta
    )
    with pytest.raises(VitDSIError, match="source ids of 'digits' differ"):
        other.apply(moved)
    assert len(other.apply(digits32).test) == 4


def test_mosaic_cache_is_written_atomically(tmp_path):
    """Workers that start together each build the mosaics in a folder of their own and rename it
    into place, so none reads another's half-written PNGs; a folder left without its marker by
    an interrupted run is rebuilt."""
    from concurrent.futures import ThreadPoolExecutor

    from vitdsi.data.sources.mosaic import load_coco_mosaic

    kw = dict(root=str(tmp_path), base="digits", n_images=40, grid=2, tile_size=8, size=16)
    with ThreadPoolExecutor(max_workers=3) as pool:
        sets = list(pool.map(lambda _: load_coco_mosaic(**kw), range(3)))
    assert all(torch.equal(s.images, sets[0].images) for s in sets)
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and (folders[0] / "mosaic.json").exists()  # no temporary folder left
    # an interrupted generation: a truncated image and no marker
    (folders[0] / "mosaic.json").unlink()
    (folders[0] / "images" / "mosaic_000004.png").write_bytes(b"\x89PNG")
    again = load_coco_mosaic(**kw)
    assert torch.equal(again.images, sets[0].images)


def test_mosaic_generation_keeps_the_copy_another_worker_finished_first(tmp_path, monkeypatch):
    import vitdsi.data.sources.mosaic as mosaic

    real = mosaic.generate_coco_mosaic
    kw = dict(root=str(tmp_path), base="digits", n_images=12, grid=2, tile_size=8, size=16)
    first = mosaic.load_coco_mosaic(**kw)  # the other worker's finished copy
    folder = next(tmp_path.iterdir())
    stamp = (folder / "mosaic.json").stat().st_mtime_ns
    (folder / "mosaic.json").rename(folder.with_name("saved-marker"))

    def racing(out_dir, **params):  # while this worker generates, the other one completes
        real(out_dir, **params)
        folder.with_name("saved-marker").rename(folder / "mosaic.json")

    monkeypatch.setattr(mosaic, "generate_coco_mosaic", racing)
    again = mosaic.load_coco_mosaic(**kw)
    assert torch.equal(again.images, first.images)
    assert (folder / "mosaic.json").stat().st_mtime_ns == stamp  # the other worker's copy was kept
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # and no temporary folder is left


def test_sources_do_not_import_the_registry():
    """The registry imports every source; a source importing the registry back is a cycle."""
    import ast

    import vitdsi.data.sources as sources

    for path in Path(sources.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not imported & {"vitdsi.data", "vitdsi.data.registry"}, path.name


def test_imagefolder_decompression_bomb_is_a_named_error(tmp_path, monkeypatch):
    """PIL refuses to open an image with more than 2 x MAX_IMAGE_PIXELS pixels; the load and the
    cheap probe of `bench run --check` stop with an error naming the file, not a traceback."""
    from vitdsi.data.prep import load_image_file
    from vitdsi.data.sources.imagefolder import probe

    _write_tree(tmp_path)
    bomb = tmp_path / "dog" / "bomb.png"
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 40x42 images pass, 200x200 is over twice it
    with pytest.raises(VitDSIError, match=rf"image {bomb} is too large to decode: .*MAX_IMAGE_PIXELS"):
        load_dataset("imagefolder", root=str(tmp_path), size=16)
    with pytest.raises(VitDSIError, match=rf"image {bomb} is too large"):
        load_image_file(bomb, 16)  # a `bench search` query image
    with pytest.raises(VitDSIError, match=rf"image {bomb} is too large"):
        probe(str(tmp_path))


def test_imagefolder_warns_about_an_empty_class_folder(tmp_path, caplog):
    import logging

    _write_tree(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("imagefolder", root=str(tmp_path), size=16)
    assert ds.class_names == ("cat", "dog", "empty") and len(ds) == 12
    assert "1 class folder(s) with no usable image" in caplog.text and "empty" in caplog.text
