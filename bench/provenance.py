"""Where a result came from: git commit, package versions and the device (docs/design.md,
"Optuna and MLflow": every run is tagged with them; reports print them in their header)."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from vitdsi.device import resolve_device

# distributions whose versions change the numbers
PACKAGES = (
    "vitdsi-bench",
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "scikit-learn",
    "opencv-contrib-python-headless",
    "faiss-cpu",
    "optuna",
    "mlflow",
)


@functools.cache
def git_info() -> dict[str, str]:
    """{'sha': ..., 'dirty': 'true'/'false', 'changed': tracked files with uncommitted changes
    (comma-separated, cut to an MLflow tag's length)} of the checkout holding the code."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        changed = ",".join(line[3:] for line in status.splitlines() if line.strip())
        return {"sha": sha, "dirty": str(bool(status.strip())).lower(), "changed": changed[:4000]}
    except (OSError, subprocess.SubprocessError):
        return {"sha": "unknown", "dirty": "unknown", "changed": ""}


@functools.cache
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def device_info(device: str | None = None) -> dict[str, str]:
    """The device a run uses, with the GPU's name or the CPU's thread count."""
    import torch

    dev = resolve_device(device)
    info = {
        "device": str(dev),
        "torch_threads": str(torch.get_num_threads()),
        "platform": platform.platform(),
    }
    if dev.type == "cuda":
        info["name"] = torch.cuda.get_device_name(dev)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info
