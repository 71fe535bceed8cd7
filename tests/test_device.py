"""utils.device: the device choice, mixed precision and host copies (no GPU here: CUDA is simulated by patching
torch's availability queries, and the 'meta' device stands in for a device whose memory the host cannot read)."""
from __future__ import annotations

import ast
import contextlib
from pathlib import Path

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
    assert D.device("cpu") == torch.device("cpu") and D.device(None) == torch.device("cuda")


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


# ------------------------------------------------------------------ no `.numpy()` on a tensor that may be on a GPU
REPO = Path(__file__).resolve().parent.parent


def _receiver(node: ast.AST) -> tuple[list[str], ast.AST]:
    """The method names called along a receiver chain such as ``x.float().cpu()`` and the object it starts from."""
    names = []
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            names.append(node.func.attr)
        node = node.func if isinstance(node, ast.Call) else node.value
    return names, node


def device_unsafe_numpy_calls(source: str) -> list[int]:
    """Lines that call ``.numpy()`` on something not moved to the host first: no ``.cpu()`` in the receiver chain,
    and, for a plain variable, no ``.cpu()`` in a statement that assigned it in the same function (or module)."""
    tree = ast.parse(source)
    bad = set()
    for scope in [tree, *[n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]]:
        on_host = {t.id for n in ast.walk(scope) if isinstance(n, ast.Assign) and "cpu" in _receiver(n.value)[0]
                   for t in n.targets if isinstance(t, ast.Name)}
        for n in ast.walk(scope):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "numpy" and not n.args:
                names, base = _receiver(n.func.value)
                if "cpu" not in names and not (isinstance(base, ast.Name) and base.id in on_host):
                    bad.add(n.lineno)
    return sorted(bad)


def test_the_unsafe_numpy_detector_flags_device_tensors_and_passes_host_copies():
    src = ("def f(t, s):\n"
           "    a = t.float().numpy()\n"          # 2: may be on a GPU
           "    b = t.cpu().numpy()\n"
           "    h = s.detach().cpu()\n"
           "    c = h.view(-1).numpy()\n"
           "    d = s.numpy()\n"                  # 6: s was never moved
           "    return torch.tensor(a).numpy()\n")  # 7: flagged too (the rule is syntactic; use to_numpy)
    assert device_unsafe_numpy_calls(src) == [2, 6, 7]


@pytest.mark.parametrize("folder", ["utils", "scripts", "mat2py.py", "prepare_flickr8k.py"])
def test_package_code_never_calls_numpy_on_a_tensor_that_may_be_on_a_gpu(folder):
    files = [REPO / folder] if folder.endswith(".py") else sorted((REPO / folder).rglob("*.py"))
    found = {str(f.relative_to(REPO)): lines for f in files if (lines := device_unsafe_numpy_calls(f.read_text()))}
    assert found == {}, f"`.numpy()` without `.cpu()` first (use utils.device.to_numpy): {found}"
