"""The device plumbing, tested without a GPU (docs/design.md, "Testing the device plumbing").

The retrievers are built with `device='cuda'` and run under `FakeCuda` (tests/fake_device.py),
which keeps every tensor on the CPU but knows which ones the code put on the device, and fails
where a GPU would: `.numpy()` of a device tensor, an op mixing device and CPU tensors, a CPU
generator drawing device tensors. The mode is shown to catch each of those, in isolation and as
bugs injected into the real code. Also: the autocast and loss scaler chosen for CUDA, a clear
error for a device the machine lacks, and the training images uploaded once, not per batch.
"""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import pytest
import torch
from conftest import smoke_retriever
from fake_device import DeviceMismatch, FakeCuda
from test_borrowed_encoder import BORROWED
from test_cli_errors import bench, one_error

import vitdsi.device
import vitdsi.training.augment
import vitdsi.training.optim
from bench.config import resolve
from bench.trial import run_trial
from vitdsi.errors import VitDSIError
from vitdsi.retrievers import create, load_retriever, save_retriever
from vitdsi.training.cached_features import host_fingerprint
from vitdsi.training.dsi import DSITrainer
from vitdsi.training.optim import autocast, grad_scaler

CUDA = torch.device("cuda")
# the autocast warning of a machine without CUDA: the fake run computes in float32 on the CPU
pytestmark = pytest.mark.filterwarnings("ignore:CUDA is not available", "ignore:.*GradScaler is enabled")


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with one bf16-capable CUDA device, as the code sees it; the mode to run under."""
    monkeypatch.setattr(vitdsi.device, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return FakeCuda()


@pytest.fixture
def autocasts(monkeypatch):
    """What every `torch.autocast` of the training and search code (`vitdsi.training.optim.autocast`,
    which they all go through) was asked for: (device_type, dtype, enabled)."""
    seen: list[tuple[str, torch.dtype | None, bool]] = []
    real = torch.autocast

    def recording(device_type, dtype=None, enabled=True, **kw):
        if sys._getframe(1).f_globals["__name__"] == vitdsi.training.optim.__name__:
            seen.append((device_type, dtype, enabled))
        if device_type == "cuda":
            # recorded only: the tests fake the GPU's bf16 support, which a real CUDA autocast
            # checks for itself (refusing bf16 where the fake says there is none)
            return contextlib.nullcontext()
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(vitdsi.training.optim.torch, "autocast", recording)
    return seen


# ---- the checker itself -------------------------------------------------------------------
def test_fake_cuda_tracks_tensors_and_fails_where_a_gpu_would():
    mode = FakeCuda()
    host = torch.arange(6.0).view(2, 3)
    gen = torch.Generator().manual_seed(0)
    with mode:
        dev = host.to("cuda")
        assert dev.device == torch.device("cuda", 0) and dev.is_cuda and host.device.type == "cpu"
        assert mode.on_device(dev * 2 + 1) and mode.on_device(dev[0]) and mode.on_device(dev.T)
        assert mode.on_device(torch.zeros(3, device=dev.device)) and not mode.on_device(torch.zeros(3))
        assert not mode.on_device(dev.cpu()) and not mode.on_device(dev.sum().item() + host)
        assert mode.on_device(dev + torch.tensor(2.0))  # a 0-dim CPU tensor is a scalar, as on CUDA
        assert mode.on_device(torch.arange(3).to(dev)) and not mode.on_device(dev.to(host.long()))
        assert mode.on_device(dev[torch.tensor([1, 0])])  # CPU indices into a device tensor: allowed
        layer = torch.nn.Linear(3, 2).to(CUDA)
        assert all(mode.on_device(p) for p in layer.parameters())
        layer(dev).sum().backward()
        assert mode.on_device(layer.weight.grad)
        np.asarray(dev.cpu())
        with pytest.raises(DeviceMismatch, match="numpy"):
            dev.numpy()
        with pytest.raises(DeviceMismatch, match="numpy"):
            np.asarray(dev)
        with pytest.raises(DeviceMismatch, match="mixes"):
            dev + host
        with pytest.raises(DeviceMismatch, match="mixes"):
            torch.cat([dev, host])
        with pytest.raises(DeviceMismatch, match="generator"):
            torch.randperm(4, generator=gen, device=CUDA)
    assert len(mode.violations) == 5
    # host, the arange, the layer's weight and bias
    assert [u.shape for u in mode.uploads] == [(2, 3), (3,), (2, 3), (2,)]
    assert [d.shape for d in mode.downloads] == [(2, 3)] * 3  # dev.cpu() twice, dev.to(a cpu tensor)


# ---- the real code paths ------------------------------------------------------------------
RUNS = {
    "dsi-vit beam search": ("dsi-vit", {"id_scheme": "clustered"}),
    "dsi-vit atomic, views": ("dsi-vit", {"id_scheme": "atomic", "views": "light", "index_views": 1}),
    "dsi-vit random, fine-tuned": ("dsi-vit", {"id_scheme": "random", "mode": "fine-tuned"}),
    "classifier": ("classifier", {"epochs": 2}),
    "dual-encoder (FAISS)": ("dual-encoder", {"epochs": 2, "views": "medium"}),
}


def _index_and_search(mode: FakeCuda, retriever, sets) -> tuple[list[int], torch.Tensor]:
    """Index and search under `mode`; the rows of every uint8 image set uploaded while indexing,
    and the ranking's ids."""
    with mode:
        retriever.index(sets.corpus, train_queries=sets.train)
        uploaded = [u.shape[0] for u in mode.uploads if u.dtype == torch.uint8 and len(u.shape) == 4]
        ranking = retriever.search(sets.test.images, 5)
    return uploaded, ranking.ids


@pytest.mark.parametrize("run", list(RUNS))
def test_retrievers_compute_on_the_requested_device(run, fake_cuda, autocasts, tiny_split, tmp_path):
    name, params = RUNS[run]
    r = smoke_retriever(name, device="cuda", **params)
    assert r.device == CUDA
    uploaded, ids = _index_and_search(fake_cuda, r, tiny_split)
    assert fake_cuda.violations == []
    assert all(fake_cuda.on_device(p) for p in r.model.parameters())
    # the ranking comes back to the CPU, ready for numpy and the metrics
    assert not fake_cuda.on_device(ids) and ids.shape == (len(tiny_split.test), 5)
    assert ids.min() >= 0 and ids.max() < len(tiny_split.corpus)
    # the training sets go up once, whole, not batch by batch (smoke batches are 16 images); the
    # classifier and the dual encoder embed the corpus for their index once more after training
    n, q = len(tiny_split.corpus), len(tiny_split.train)
    assert uploaded == ([n, q] if name == "dsi-vit" else [n, q, n])
    # mixed precision on CUDA: every autocast asked for is CUDA's, in bf16 (the device supports it)
    assert autocasts and set(autocasts) == {("cuda", torch.bfloat16, True)}
    # an index built on the GPU is saved from it and answers the same on a CPU machine
    with fake_cuda:
        save_retriever(r, tmp_path / "index")
    on_cpu = load_retriever(tmp_path / "index", device="cpu")
    assert torch.equal(on_cpu.search(tiny_split.test.images, 5).ids, ids)


@pytest.mark.parametrize("name", ["pixels-knn", "embedding", "bovw"])
def test_untrained_baselines_search_on_the_requested_device(name, fake_cuda, tiny_split):
    r = smoke_retriever(name, device="cuda")
    _, ids = _index_and_search(fake_cuda, r, tiny_split)
    assert fake_cuda.violations == [] and ids.shape == (len(tiny_split.test), 5)
    assert not fake_cuda.on_device(ids)


@pytest.mark.parametrize("bank", [{}, {"views": "light", "view_bank": 2}], ids=["images", "view bank"])
def test_frozen_encoder_features_are_computed_and_kept_on_the_device(fake_cuda, autocasts, tiny_split, bank):
    params = {k: v for k, v in BORROWED.items() if k != "device"}
    r = create(
        "dsi-vit",
        **params,
        **bank,
        device="cuda",
        mode="multitask",
        id_scheme="atomic",
        index_epochs=2,
        retrieval_epochs=1,
    )
    images, ids = _index_and_search(fake_cuda, r, tiny_split)
    assert fake_cuda.violations == [] and ids.shape == (len(tiny_split.test), 5)
    assert all(fake_cuda.on_device(p) for p in r.model.parameters())
    n, q = len(tiny_split.corpus), len(tiny_split.train)
    # feature maps [rows, C, h, w] (the model's parameters go up too, none with n or q rows)
    features = [u.shape for u in fake_cuda.uploads if len(u.shape) == 4 and u.shape[0] in (n, q)]
    features = [s for s in features if s[1:] != tuple(tiny_split.corpus.images.shape[1:])]
    # each set's features go up once, from the cache
    assert images == [n, q] and [s[0] for s in features] == [n, q] and features[0][1:] == features[1][1:]
    # the feature cache's key hashes the CPU copies of the images: none comes back from the device
    assert fake_cuda.downloads and not [d.shape for d in fake_cuda.downloads if d.dtype == torch.uint8]
    assert set(autocasts) == {("cuda", torch.bfloat16, True)}


@pytest.mark.parametrize(
    "name, params",
    [("classifier", {}), ("dual-encoder", {"views": "medium", "view_bank": 2})],
    ids=["classifier", "dual-encoder, view bank"],
)
def test_frozen_encoder_baselines_key_the_cache_without_a_copy_back(name, params, fake_cuda, tiny_split):
    borrowed = {k: v for k, v in BORROWED.items() if k != "device"}
    r = create(name, **borrowed, **params, freeze_encoder=True, epochs=1, device="cuda")
    _, ids = _index_and_search(fake_cuda, r, tiny_split)
    assert fake_cuda.violations == [] and ids.shape == (len(tiny_split.test), 5)
    assert fake_cuda.downloads and not [d.shape for d in fake_cuda.downloads if d.dtype == torch.uint8]


def test_the_cache_key_of_images_on_a_device_hashes_their_cpu_copy(fake_cuda, tiny_split):
    host = tiny_split.corpus.images
    with fake_cuda:
        on_device = host.to(CUDA)
        # the same key as the images on the CPU give, without a copy back
        assert host_fingerprint(on_device, host) == host_fingerprint(host, None)
        assert fake_cuda.downloads == []
        with pytest.raises(VitDSIError, match=r"the CPU copy given for images \(60, 3, 32, 32\) .* is \(59,"):
            host_fingerprint(on_device, host[:-1])
        assert host_fingerprint(on_device, None) == host_fingerprint(host, None)  # no copy: one back
    assert [d.shape for d in fake_cuda.downloads] == [tuple(host.shape)]


def test_a_whole_trial_runs_on_the_requested_device(fake_cuda, autocasts):
    """The harness's trial on top: validation checkpoints during training, IA@1, the metrics and
    the rankings it keeps, for a DSI under the instance protocol (the scale study's)."""
    study = resolve(
        {
            "name": "on-device",
            "retriever": "dsi-vit",
            "scale": "smoke",
            "fixed": {"id_scheme": "atomic", "index_epochs": 3, "retrieval_epochs": 2, "val_every": 1},
            "metrics": ["R@1", "MAP@10", "IA@1"],
            "dataset": {"n_total": 64, "split_ratio": 0.5, "protocol": "instance"},
        }
    )
    with fake_cuda:
        result = run_trial(study.trial_config({}), device="cuda")
    assert fake_cuda.violations == [] and result.device == "cuda"
    assert all(fake_cuda.on_device(p) for p in result.retriever.model.parameters())
    rep = result.repeats[0]
    assert not any(fake_cuda.on_device(t) for t in (rep.test.ids, rep.val.ids, rep.indexing.ids))
    assert 0 <= result.summary["IA@1"].mean <= 1 and rep.training["checkpoints"]  # validation ran
    assert set(autocasts) == {("cuda", torch.bfloat16, True)}


# ---- bugs injected into the real code are caught ------------------------------------------
def test_a_factory_that_drops_its_device_is_caught(fake_cuda, tiny_split, monkeypatch):
    real = torch

    def arange_on_cpu(*args, device=None, **kw):
        return real.arange(*args, **kw)

    # the views' shift builds its gather indices with torch.arange(..., device=x.device)
    broken = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    broken.arange = arange_on_cpu
    monkeypatch.setattr(vitdsi.training.augment, "torch", broken)
    r = smoke_retriever("dsi-vit", device="cuda", id_scheme="atomic", views="light")
    with fake_cuda, pytest.raises(DeviceMismatch, match="mixes"):
        r.index(tiny_split.corpus, train_queries=tiny_split.train)


def test_a_device_tensor_summed_into_a_cpu_total_is_caught(fake_cuda, tiny_split, monkeypatch):
    real = DSITrainer._batch_sums
    # an epoch's running sums live on the CPU; a batch's sums left on the device cannot join them
    monkeypatch.setattr(DSITrainer, "_batch_sums", staticmethod(lambda *a: real(*a).to(CUDA)))
    r = smoke_retriever("dsi-vit", device="cuda", id_scheme="atomic")
    with fake_cuda, pytest.raises(DeviceMismatch, match="mixes"):
        r.index(tiny_split.corpus, train_queries=tiny_split.train)


def test_a_ranking_left_on_the_device_is_caught_at_numpy(fake_cuda, tiny_split, monkeypatch):
    from vitdsi.ranking import Ranking

    r = smoke_retriever("dsi-vit", device="cuda", id_scheme="atomic", mode="zero-shot", index_epochs=1)
    monkeypatch.setattr(Ranking, "cpu", lambda self: self)  # search() hands back what it computed
    with fake_cuda:
        r.index(tiny_split.corpus)
        ids = r.search(tiny_split.test.images, 5).ids
        with pytest.raises(DeviceMismatch, match="numpy"):
            ids.numpy()  # as the harness's rankings file does


# ---- mixed precision on CUDA --------------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "precision", "bf16", "asked"),
    [
        ("cuda", "auto", True, ("cuda", torch.bfloat16, True)),
        ("cuda", "auto", False, ("cuda", torch.float16, True)),
        ("cuda", "bf16", False, ("cuda", torch.bfloat16, True)),
        ("cuda", "fp32", True, ("cuda", None, False)),
        ("cpu", "auto", True, ("cpu", torch.bfloat16, False)),
        ("cpu", "bf16", True, ("cpu", torch.bfloat16, True)),
    ],
)
def test_autocast_of_each_precision(device, precision, bf16, asked, autocasts, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    autocast(torch.device(device), precision)
    assert autocasts == [asked]


@pytest.mark.parametrize("run", list(RUNS))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_search_computes_in_the_precision_the_retriever_trained_in(run, precision, autocasts, tiny_split):
    """`precision` is the retriever's arithmetic, not only its training's: a model trained in
    bf16 on the CPU is also searched (and validated) under bf16 autocast, one trained in fp32 in
    float32."""
    name, params = RUNS[run]
    r = smoke_retriever(name, precision=precision, **params)
    r.index(tiny_split.corpus, train_queries=tiny_split.train)
    autocasts.clear()
    r.search(tiny_split.test.images, 5)
    want = ("cpu", torch.bfloat16, True) if precision == "bf16" else ("cpu", None, False)
    assert autocasts and set(autocasts) == {want}


@pytest.mark.parametrize(
    ("device", "bf16", "scaled"), [("cuda", False, True), ("cuda", True, False), ("cpu", False, False)]
)
def test_a_loss_scaler_only_for_fp16_training_on_cuda(device, bf16, scaled, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    scaler = grad_scaler(torch.device(device))
    assert isinstance(scaler, torch.amp.GradScaler) if scaled else scaler is None
    if scaled:
        assert scaler._device == "cuda"


# ---- a device the machine lacks -----------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "devices", "message"),
    [
        ("cuda", 0, "device 'cuda': CUDA is not available on this machine"),
        ("cuda:2", 2, "device 'cuda:2': this machine has 2 CUDA device"),
        ("gpu", 0, "device 'gpu' is not a torch device"),
    ],
)
def test_a_missing_device_is_one_clear_error(device, devices, message, monkeypatch):
    monkeypatch.setattr(vitdsi.device, "cuda_device_count", lambda: devices)
    with pytest.raises(VitDSIError, match=message):
        create("pixels-knn", device=device)


def test_bench_run_on_a_missing_device_stops_before_any_store(tmp_path, monkeypatch):
    monkeypatch.setattr(vitdsi.device, "cuda_device_count", lambda: 0)
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nretriever: pixels-knn\nscale: smoke\n")
    mlflow, optuna = tmp_path / "mlflow.db", tmp_path / "optuna.db"
    code, out = bench(
        "run", str(study), "--device", "cuda",
        "--tracking-uri", f"sqlite:///{mlflow}", "--storage", f"sqlite:///{optuna}",
    )  # fmt: skip
    assert code == 2, out
    assert "device 'cuda': CUDA is not available" in one_error(out)
    assert not mlflow.exists() and not optuna.exists()
