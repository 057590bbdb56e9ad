"""A CUDA device simulated on the CPU, so that tests without a GPU run the device plumbing.

`FakeCuda` is a `TorchFunctionMode`: code is given `device='cuda'` and runs as it would on a GPU,
but every tensor really lives on the CPU. A tensor is *on the device* when its storage was made by
a factory call given the device (`torch.zeros(..., device=dev)`), by `.to(dev)` / `.cuda()` (always
a copy, as a real upload is), by an op on device tensors, or is the gradient of a device tensor;
for such a tensor `.device` says `cuda:0` and `.is_cuda` True. Being on the device belongs to the
storage, as on a GPU: views, `param.data = ...` and `Parameter(...)` keep it. What would fail on a
real GPU fails here too, with a `DeviceMismatch` that is also kept in `violations`:

- `.numpy()` (or `np.asarray`) of a device tensor;
- an op mixing device tensors with CPU tensors of one element or more (0-dim CPU tensors are
  scalars and allowed, as on CUDA; so are copies, `x[i] = v` and indexing a device tensor by CPU
  indices);
- a factory drawing device tensors from a CPU `torch.Generator`.

Each host-to-device copy is recorded in `uploads` (shape and dtype) so a test can count them,
and each device-to-host copy in `downloads`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map_only

CPU = torch.device("cpu")
_TENSOR = torch.Tensor
_DEVICE_GET = _TENSOR.device.__get__
_IS_CUDA_GET = _TENSOR.is_cuda.__get__
_GRAD_GET = _TENSOR.grad.__get__
_TO_NUMPY = (_TENSOR.numpy, _TENSOR.__array__)
# ops that may take tensors of both places: copies across devices, and what a parameter move does
_MAY_MIX = (
    _TENSOR.copy_,
    _TENSOR.__setitem__,
    _TENSOR.data.__set__,
    _TENSOR.grad.__set__,
    torch._has_compatible_shallow_copy_type,
)


class DeviceMismatch(RuntimeError):
    """What a real GPU run would have failed with."""


@dataclass
class Upload:
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class FakeCuda(TorchFunctionMode):
    """The mode; `device` is what tensors on the fake device report."""

    device: torch.device = torch.device("cuda", 0)
    violations: list[str] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list, repr=False)
    downloads: list[Upload] = field(default_factory=list, repr=False)  # device -> host copies
    # storages on the device, by their address; each held, so no address is reused while the mode lives
    _storages: dict[int, torch.UntypedStorage] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        super().__init__()

    # ---- where a tensor is ------------------------------------------------------------
    def on_device(self, t: object) -> bool:
        return isinstance(t, torch.Tensor) and _key(t) in self._storages

    def _tag(self, t: torch.Tensor) -> None:
        key = _key(t)
        if key is not None:
            self._storages[key] = t.untyped_storage()

    def _device_of(self, t: torch.Tensor) -> torch.device:
        return self.device if self.on_device(t) else t.device

    def _is_fake(self, device) -> bool:
        return device is not None and torch.device(device).type == self.device.type

    def _fail(self, message: str):
        self.violations.append(message)
        raise DeviceMismatch(message)

    # ---- the mode ---------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == _DEVICE_GET:
            return self.device if self.on_device(args[0]) else func(*args)
        if func == _IS_CUDA_GET:
            return self.on_device(args[0]) or func(*args)
        if func == _GRAD_GET:
            grad = func(*args)
            if grad is not None and self.on_device(args[0]):
                self._tag(grad)  # autograd makes a device tensor's gradient on its device
            return grad
        if func in _TO_NUMPY and self.on_device(args[0]):
            shape = tuple(args[0].shape)
            self._fail(f"{_name(func)}: a {self.device} tensor {shape} to numpy; copy it to the CPU first")
        if func is _TENSOR.to:
            return self._to(args[0], args[1:], kwargs)
        if func is _TENSOR.cuda:
            return self._move(args[0], self.device)
        if func is _TENSOR.cpu:
            return self._move(args[0], CPU)
        if kwargs.get("device") is not None:
            return self._factory(func, args, kwargs)
        return self._op(func, args, kwargs)

    def _to(self, t: torch.Tensor, args: tuple, kwargs: dict):
        if args and isinstance(args[0], torch.Tensor):  # t.to(other): other's device and dtype
            device, dtype, memory_format = self._device_of(args[0]), args[0].dtype, None
        else:
            kwargs = {k: v for k, v in kwargs.items() if k != "copy"}
            device, dtype, _, memory_format = torch._C._nn._parse_to(*args, **kwargs)
        if device is None:
            return self._op(_TENSOR.to, (t, *args), kwargs)
        out = self._move(t, device)
        if dtype is None and memory_format is None:
            return out
        converted = out.to(dtype=dtype or out.dtype, memory_format=memory_format or torch.preserve_format)
        if self.on_device(out):
            self._tag(converted)
        return converted

    def _move(self, t: torch.Tensor, device) -> torch.Tensor:
        """`t` on `device`: itself when it is there already, else a copy (tagged when uploaded)."""
        to_fake = self._is_fake(device)
        if to_fake == self.on_device(t):
            return t
        if torch.device(device).type != "cpu" and not to_fake:
            return t.to(device)
        out = t.clone()  # a copy, as a real move is (differentiable, like one)
        if to_fake:
            self.uploads.append(Upload(tuple(t.shape), t.dtype))
            self._tag(out)
        else:
            self.downloads.append(Upload(tuple(t.shape), t.dtype))
        return out

    def _factory(self, func, args: tuple, kwargs: dict):
        """A call given `device=`: made on the CPU, tagged when the device is the fake one."""
        if not self._is_fake(kwargs["device"]):
            out = func(*args, **kwargs)
            return tree_map_only(torch.Tensor, self._fresh_on_cpu, out)
        gen = kwargs.get("generator")
        if gen is not None and not self._is_fake(gen.device):
            self._fail(f"{_name(func)}(device={self.device}) draws from a {gen.device} generator")
        inputs = {_key(t) for t in _tensors(args, kwargs)}
        out = func(*args, **{**kwargs, "device": CPU})
        return tree_map_only(torch.Tensor, lambda t: self._fresh_tagged(t, inputs), out)

    def _fresh_on_cpu(self, t: torch.Tensor) -> torch.Tensor:
        if not self.on_device(t):
            return t
        self.downloads.append(Upload(tuple(t.shape), t.dtype))
        return t.clone()

    def _fresh_tagged(self, t: torch.Tensor, inputs: set) -> torch.Tensor:
        if _key(t) in inputs and not self.on_device(t):  # e.g. as_tensor(cpu_tensor, device=dev)
            t = t.clone()
            self.uploads.append(Upload(tuple(t.shape), t.dtype))
        self._tag(t)
        return t

    def _op(self, func, args: tuple, kwargs: dict):
        tensors = _tensors(args, kwargs)
        on = [t for t in tensors if self.on_device(t)]
        if on and func not in _MAY_MIX:
            indexing = func is _TENSOR.__getitem__ and self.on_device(args[0])
            off = [tuple(t.shape) for t in tensors if not self.on_device(t) and t.dim() > 0]
            if off and not indexing:
                self._fail(
                    f"{_name(func)} mixes {self.device} tensors {[tuple(t.shape) for t in on]} with cpu "
                    f"tensors {off}"
                )
        out = func(*args, **kwargs)
        if on and func not in _MAY_MIX:
            cpu_inputs = {_key(t) for t in tensors if not self.on_device(t)}
            for t in _tensors(out, {}):
                if _key(t) not in cpu_inputs:  # not an in-place op on a CPU input
                    self._tag(t)
        return out


def _key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # no storage (sparse, nested)
        return None


def _tensors(args, kwargs) -> list[torch.Tensor]:
    return [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
