"""The torch device a retriever runs on: CUDA when present, else the CPU, or the one asked for,
checked against this machine so that a missing GPU is one clear error before any work starts."""

from __future__ import annotations

import torch

from vitdsi.errors import VitDSIError


def cuda_device_count() -> int:
    """CUDA devices this process can use (0 without a driver or a CUDA build of torch)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_device() -> torch.device:
    """CUDA when present, else CPU (overridable per retriever with `device=`)."""
    return torch.device("cuda" if cuda_device_count() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch.device (None or '' = `default_device()`); a VitDSIError when it is not a
    device name or names a CUDA / MPS device this machine does not have."""
    if device is None or device == "":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise VitDSIError(f"device '{device}' is not a torch device; use e.g. cpu, cuda or cuda:1") from None
    if dev.type == "cuda":
        n = cuda_device_count()
        if n == 0:
            raise VitDSIError(
                f"device '{device}': CUDA is not available on this machine (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none'}); run on a GPU machine or use device cpu"
            )
        if dev.index is not None and dev.index >= n:
            raise VitDSIError(
                f"device '{device}': this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise VitDSIError(f"device '{device}': MPS is not available on this machine; use device cpu")
    return dev
