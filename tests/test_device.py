"""utils.device: the device choice, mixed precision and host copies (no GPU here: CUDA is simulated by patching
torch's availability queries, and the 'meta' device stands in for a device whose memory the host cannot read)."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from utils import device as D


@pytest.fixture
def cuda(monkeypatch):
    """Pretend torch sees ``count`` CUDA devices (bf16-capable unless told otherwise)."""
    def set_(count=1, bf16=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return set_


def test_device_default_follows_cuda_availability(monkeypatch, cuda):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    cuda(0)
    assert D.device() == torch.device("cpu")
    cuda(1)
    assert D.device() == torch.device("cuda")
    assert D.resolve("cpu") == torch.device("cpu") and D.resolve(None) == torch.device("cuda")


def test_device_honours_the_environment(monkeypatch, cuda):
    cuda(2)
    for value, expected in [("cpu", "cpu"), ("CUDA", "cuda"), ("cuda:1", "cuda:1"), (" cpu ", "cpu")]:
        monkeypatch.setenv(D.ENV_VAR, value)
        assert D.device() == torch.device(expected)
    monkeypatch.setenv(D.ENV_VAR, "cuda:2")
    with pytest.raises(RuntimeError, match=r"MMER_DEVICE='cuda:2' but only 2 CUDA device"):
        D.device()
    monkeypatch.setenv(D.ENV_VAR, "gpu")
    with pytest.raises(ValueError, match=r"MMER_DEVICE='gpu': expected 'cpu', 'cuda' or 'cuda:N'"):
        D.device()
    cuda(0)
    monkeypatch.setenv(D.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        D.device()


def test_autocast_is_bf16_on_capable_cuda_and_a_no_op_elsewhere(cuda):
    cuda(1, bf16=True)
    ctx = D.autocast(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and ctx.device == "cuda"
    assert isinstance(D.autocast("cuda", enabled=False), contextlib.nullcontext)
    cuda(1, bf16=False)
    assert D.autocast_dtype("cuda") is None and isinstance(D.autocast("cuda"), contextlib.nullcontext)
    assert D.autocast_dtype("cpu") is None
    a = torch.rand(4, 4)
    with D.autocast("cpu"):
        assert (a @ a).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def test_to_numpy_detaches_copies_and_widens_half_precision():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).requires_grad_()
    out = D.to_numpy(t * 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3) * 2)
    half = D.to_numpy(torch.tensor([1.5, 2.25], dtype=torch.bfloat16))
    assert half.dtype == np.float32 and half.tolist() == [1.5, 2.25]


def test_host_tensor_shares_memory_and_copies_read_only_rows(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    t = D.host_tensor(arr, "cpu")
    assert not t.is_pinned() and t.data_ptr() == arr.ctypes.data  # no copy for a plain array on CPU
    np.save(tmp_path / "a.npy", arr)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r", allow_pickle=False)
    np.testing.assert_array_equal(D.host_tensor(mm[1:]).numpy(), arr[1:])
    assert D.to_device(t, "meta").device.type == "meta"
