"""Memory a latency trial measures: the bytes of a retriever's model and the peak resident set
of the process while it searches.

`model_bytes` sums the parameters and buffers of the torch module a retriever answers with (its
`model`: a DSI's, a trained baseline's, an embedding's pretrained network). The peak is Linux's
VmHWM (/proc/self/status), which writing "5" to /proc/self/clear_refs resets to the current
resident set: `reset_peak_rss` before the searches, `peak_rss_bytes` after. Where either file is
missing or refused (another OS, a locked-down container) both return None and nothing is logged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitdsi.retrievers.base import Retriever

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def model_bytes(retriever: Retriever) -> int | None:
    """Bytes of the parameters and buffers of the retriever's torch model; None without one."""
    model = getattr(retriever, "model", None)
    if not isinstance(model, torch.nn.Module):
        return None
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set to its current one; False where that is unavailable."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int | None:
    """The process's peak resident set in bytes since start or the last reset (VmHWM); None
    where it cannot be read."""
    try:
        lines = STATUS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmHWM:"):
            value, unit = line.split()[1:3]
            return int(value) * {"kB": 1024, "mB": 2**20, "gB": 2**30}.get(unit, 1)
    return None
