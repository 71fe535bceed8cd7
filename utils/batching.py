"""The batch size and memory layout a model runs fastest at, measured on the device instead of assumed.

Why: model calls were sized for a GPU (128 images per attack call, 32 per extraction batch). On a 2-core CPU the
pretrained MobileNetV2 at 224 x 224 runs fastest at batch 4-8 in channels_last, two to ten times faster per image
than at batch 128 or in the default layout; a GPU wants hundreds. So a short probe per (device, architecture, input
shape) times growing batch sizes in both layouts and keeps the fastest. Sizes grow until the rate falls below half
the best twice, a call takes over a second, or the device runs out of memory: nothing assumes a batch fits.

The choice is remembered in memory and in ``<cache>/batch_probe.json`` (``MMER_CACHE``), so a machine probes once
and later runs batch the same way (the batch size can change the last bits of a model's output).
``MMER_INFERENCE_BATCH`` = ``auto`` (default) or an integer fixes the batch size (the layout is then probed at that
size alone). :func:`chosen` lists this process's choices, :func:`recorded` the machine's (``run.json`` has them).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import torch

from . import paths

__all__ = ["Choice", "setting", "for_module", "for_pipeline", "probe", "chosen", "recorded", "set_layout", "ENV"]

ENV = "MMER_INFERENCE_BATCH"
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_MEMORY: dict[str, "Choice"] = {}


@dataclass
class Choice:
    batch: int
    channels_last: bool
    rate: float  # inputs per second at that batch and layout, as measured
    rates: dict  # "channels_last/8" -> inputs per second, every size probed
    source: str = "probe"  # "probe", "cache" (this machine's earlier probe) or ENV


def setting(environ=None) -> int | None:
    """``MMER_INFERENCE_BATCH`` as an integer, or None for "auto"."""
    text = str((os.environ if environ is None else environ).get(ENV, "auto")).strip().lower()
    if text in ("", "auto"):
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{ENV}={text!r}: expected 'auto' or a positive integer")
    return int(text)


def set_layout(module: torch.nn.Module, channels_last: bool) -> None:
    """Put a module's weights (in place) and the ``channels_last`` flags of it and its parts in the given layout."""
    module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for m in module.modules():
        if isinstance(getattr(m, "channels_last", None), bool):
            m.channels_last = channels_last


def probe(run, shape: tuple, dev: torch.device, layout, fixed: int | None = None) -> Choice:
    """Time ``run(x)`` on random float inputs (b, *shape) for growing b in both layouts (``layout(bool)`` switches
    the model); return the fastest. Each rate is the best of two timed calls after a warm-up call."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rates = {}
    for cl in (True, False):
        layout(cl)
        best, slow = 0.0, 0
        for b in [fixed] if fixed else SIZES:
            x = torch.rand((b, *shape), device=dev)
            x = x.contiguous(memory_format=torch.channels_last) if cl and x.ndim == 4 else x
            times = []
            try:
                with torch.inference_mode():
                    for _ in range(3):  # the first call warms up (kernel choice, allocation)
                        sync()
                        t0 = time.perf_counter()
                        run(x)
                        sync()
                        times.append(time.perf_counter() - t0)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                break
            rate = b / min(times[1:])
            rates[f"{'channels_last' if cl else 'default'}/{b}"] = rate
            slow = slow + 1 if rate < best / 2 else 0  # twice in a row: one slow call may be another job's
            best = max(best, rate)
            if slow == 2 or min(times[1:]) > 1.0:
                break
    if not rates:
        raise RuntimeError(f"utils/batching.py: not even batch {fixed or 1} fits on {dev}")
    key = max(rates, key=rates.get)
    name, b = key.split("/")
    return Choice(int(b), name == "channels_last", rates[key], rates)


def _choose(key: str, run, shape, dev, layout) -> Choice:
    fixed = setting()
    # not keyed by the thread count: every process sharing the cache (a notebook, torchrun's one-thread ranks)
    # then batches alike, and the batch size can change the last bits of an output
    key = f"{key}|batch={fixed or 'auto'}"
    if key not in _MEMORY:
        file = paths.cache_dir() / "batch_probe.json"
        saved = json.loads(file.read_text()) if file.is_file() else {}
        if key in saved:
            _MEMORY[key] = Choice(**{**saved[key], "source": "cache"})
        else:
            _MEMORY[key] = probe(run, shape, dev, layout, fixed)
            _MEMORY[key].source = ENV if fixed else "probe"
            file.parent.mkdir(parents=True, exist_ok=True)
            saved[key] = asdict(_MEMORY[key])
            tmp = file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(saved, indent=1, sort_keys=True))
            tmp.replace(file)  # atomic: a parallel process never reads half a file
    layout(_MEMORY[key].channels_last)
    return _MEMORY[key]


def _device(module: torch.nn.Module) -> torch.device:
    return next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))


def for_module(module: torch.nn.Module, shape: tuple, name: str | None = None) -> Choice:
    """Batch and layout for ``module`` on inputs (b, *shape); the module is left in the chosen layout."""
    dev = _device(module)
    # the architecture decides the speed, not the weights: fine-tuned or retrained copies share a probe
    name = name or f"{getattr(module, 'name', type(module).__name__)}/{sum(p.numel() for p in module.parameters())}"
    return _choose(f"{dev}|{name}|{tuple(shape)}", module, shape, dev, lambda cl: set_layout(module, cl))


def for_pipeline(pipeline, shape: tuple, rows) -> Choice:
    """Batch and layout for an attack pipeline's scores on images (b, *shape) of ``rows`` (any valid rows)."""
    import numpy as np

    dev = pipeline.device
    rows = torch.as_tensor(np.resize(np.asarray(rows), SIZES[-1]), device=dev)

    def layout(cl):
        pipeline.channels_last = cl
        set_layout(pipeline.modules[0], cl)

    name = "|".join(f"{getattr(m, 'name', type(m).__name__)}/{sum(p.numel() for p in m.parameters())}"
                    for m in pipeline.modules)
    return _choose(f"{dev}|{type(pipeline).__name__}|{name}|{tuple(shape)}",
                   lambda x: pipeline.scores(x, rows[:len(x)]), shape, dev, layout)


def _short(c: Choice) -> dict:
    return dict(batch=c.batch, channels_last=c.channels_last, rate=round(c.rate, 1), source=c.source)


def chosen() -> dict:
    """This process's choices so far: key -> batch, layout, rate and where the choice came from."""
    return {k: _short(c) for k, c in _MEMORY.items()}


def recorded() -> dict:
    """For a run record: the setting and every choice this machine's cache holds (notebooks run in other
    processes, so the file, not this process's memory, says what they used)."""
    file = paths.cache_dir() / "batch_probe.json"
    saved = json.loads(file.read_text()) if file.is_file() else {}
    return {"setting": os.environ.get(ENV, "auto"), "choices": {k: _short(Choice(**v)) for k, v in saved.items()}}
