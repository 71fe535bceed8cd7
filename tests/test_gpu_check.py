"""scripts/gpu_check.py: without CUDA it runs nothing and succeeds; its throughput probe runs end to end (on CPU
here, with a tiny budget, through the same code the GPU run uses)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a machine without CUDA")
def test_without_cuda_nothing_runs_and_the_exit_status_is_zero(capsys):
    # in-process (``main`` is what ``sys.exit`` gets): a subprocess would only import torch once more
    assert load_script().main([]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device" in out and "nothing was run" in out
    assert "[gpu-check]" not in out                      # no step started


def test_attack_throughput_probe_runs(one_thread):
    gpu_check = load_script()
    try:
        rates = gpu_check.attack_rates("cpu", images=2, popsize=8, generations=1, batch_size=16, rate_images=16,
                                       image_size=64)
    except Exception as e:
        if "mobilenet" in str(e).lower():
            pytest.skip(f"offline MobileNetV2 unavailable: {e}")
        raise
    assert rates["batched_images_per_s"] > 0 and rates["attack_queries_per_s"] > 0
    assert rates["ratio"] == pytest.approx(rates["attack_queries_per_s"] / rates["batched_images_per_s"])
