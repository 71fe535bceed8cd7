"""Where tensors live: the one place that picks the device, mixed precision and host <-> device copies.

Why a module of its own: the encoders, the training loop and the attacks all need the same three decisions (which
device, whether to autocast, how to get results back as NumPy), and one wrong ``.numpy()`` on a CUDA tensor is a
crash that no CPU-only test run would show. Everything in the package goes through these helpers.

- ``device()``: ``$MMER_DEVICE`` when set (``cpu``, ``cuda`` or ``cuda:N``), else CUDA when present, else CPU.
- ``autocast(dev)``: bfloat16 autocast on a CUDA device that supports it; a no-op elsewhere (CPU results stay
  float32 and bit-for-bit reproducible).
- ``host_tensor(array, dev)`` / ``to_device(t, dev)``: NumPy -> torch on the host (page-locked when the target is a
  GPU, so the copy can overlap with compute) and the ``non_blocking`` copy onto ``dev``.
- ``to_numpy(t)``: ``t.detach().cpu().numpy()``, with half-precision results widened to float32 first (NumPy has
  no bfloat16).
"""
from __future__ import annotations

import contextlib
import os
import re

import numpy as np
import torch

__all__ = ["ENV_VAR", "device", "resolve", "autocast_dtype", "autocast", "host_tensor", "to_device", "to_numpy"]

#: Environment variable that overrides the automatic choice.
ENV_VAR = "MMER_DEVICE"


def device() -> torch.device:
    """The device package code runs on: ``$MMER_DEVICE`` (``cpu`` | ``cuda`` | ``cuda:N``), else CUDA when
    available, else CPU. A CUDA request on a machine without CUDA is an error, not a silent CPU run."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise ValueError(f"{ENV_VAR}={value!r}: expected 'cpu', 'cuda' or 'cuda:N' (N = device index)")
    dev = torch.device(value)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"{ENV_VAR}={value!r} but torch sees no CUDA device on this machine "
                               f"(torch {torch.__version__}); unset {ENV_VAR} or set it to 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"{ENV_VAR}={value!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def resolve(dev: str | torch.device | None = None) -> torch.device:
    """``dev`` as a ``torch.device``; ``None`` means ``device()``."""
    return device() if dev is None else torch.device(dev)


def autocast_dtype(dev: str | torch.device) -> torch.dtype | None:
    """bfloat16 on a CUDA device that supports it (Ampere and newer), else ``None`` (full precision).

    bfloat16 keeps float32's exponent range, so no loss scaling is needed for training either.
    """
    dev = torch.device(dev)
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(dev: str | torch.device, enabled: bool = True):
    """Mixed-precision context for ``dev``: bf16 autocast on CUDA where supported, a no-op otherwise."""
    dtype = autocast_dtype(dev) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(dev).type, dtype=dtype)


def host_tensor(array, dev: str | torch.device | None = None) -> torch.Tensor:
    """A NumPy array (or memmap rows) as a CPU tensor sharing its memory where possible; page-locked when ``dev``
    is a GPU, so that ``to_device(..., non_blocking=True)`` really is asynchronous."""
    arr = np.ascontiguousarray(array)
    if not arr.flags.writeable:  # read-only memmap rows: torch wants writable memory
        arr = arr.copy()
    t = torch.from_numpy(arr)
    if dev is not None and torch.device(dev).type == "cuda":
        t = t.pin_memory()
    return t


def to_device(t: torch.Tensor, dev: str | torch.device) -> torch.Tensor:
    """``t.to(dev, non_blocking=True)``: asynchronous from pinned host memory, a plain copy otherwise."""
    return t.to(dev, non_blocking=True)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Detach, bring to the host and convert; bfloat16 / float16 become float32 (NumPy has no bfloat16)."""
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.cpu().numpy()
