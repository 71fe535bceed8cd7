"""Where tensors live: the one place that picks the device, mixed precision and device -> host copies, so that
encoders, training and attacks agree, and no ``.numpy()`` of a CUDA tensor slips past CPU-only test runs."""

import contextlib
import os
import re

import numpy as np
import torch

ENV_VAR = "MMER_DEVICE"


def device(dev: str | torch.device | None = None) -> torch.device:
    """``dev``, else ``$MMER_DEVICE`` (cpu | cuda | cuda:N), else CUDA when present, else CPU (absent CUDA: error)."""
    if dev is not None:
        return torch.device(dev)
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise ValueError(f"{ENV_VAR}={value!r}: expected 'cpu', 'cuda' or 'cuda:N' (N = device index)")
    dev = torch.device(value)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{ENV_VAR}={value!r} but torch sees no CUDA device on this machine "
                           f"(torch {torch.__version__}); unset {ENV_VAR} or set it to 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(f"{ENV_VAR}={value!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def autocast_dtype(dev: str | torch.device) -> torch.dtype | None:
    """bfloat16 on a CUDA device that has it (float32's exponent range: no loss scaling), else None (float32)."""
    return torch.bfloat16 if torch.device(dev).type == "cuda" and torch.cuda.is_bf16_supported() else None


def autocast(dev: str | torch.device, enabled: bool = True):
    """bf16 autocast on CUDA where supported; a no-op elsewhere (CPU results stay float32 and reproducible)."""
    dtype = autocast_dtype(dev) if enabled else None
    return contextlib.nullcontext() if dtype is None else torch.autocast(torch.device(dev).type, dtype=dtype)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Detached, on the host, as NumPy; bfloat16 / float16 become float32 (NumPy has no bfloat16)."""
    t = t.detach()
    return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).cpu().numpy()
