"""The batch size and layout a model runs fastest at, measured once per device, model and input shape, not assumed:
a 2-core CPU wants batch 4-8 in channels_last (docs/encoders.md, "Batch size and layout"); and the frozen graphs the
attacks' searches run their encoders through."""

import contextlib
import json
import os
import timeit
import warnings
import weakref
from dataclasses import asdict, dataclass

import numpy as np
import torch

from . import paths, store

ENV = "MMER_INFERENCE_BATCH"
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# the climb stops after two sizes in a row below this share of the best: on a CPU the rate falls after batch 4-16
# and never recovers (0.35-0.67 of the best at 16-32 on an Intel Xeon and an AMD EPYC), and larger batches only cost
# probe time and memory
STOP_BELOW = 0.75
_MEMORY: dict[str, "Choice"] = {}
# backbone -> {"versions": its weights' version counters, input key: (frozen graph or None, batch sizes checked)}
_GRAPHS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


@dataclass
class Choice:
    batch: int
    channels_last: bool
    rate: float  # inputs per second at that batch and layout, as measured
    rates: dict  # "channels_last/8" -> inputs per second, every size probed
    source: str = "probe"  # "probe", "cache" (this machine's earlier probe) or ENV


def set_layout(module: torch.nn.Module, channels_last: bool) -> None:
    """Put a module's weights (in place) and the ``channels_last`` flags of it and its parts in the given layout."""
    module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for m in module.modules():
        if isinstance(getattr(m, "channels_last", None), bool):
            m.channels_last = channels_last


def probe(run, shape: tuple, dev: torch.device, layout, fixed: int | None = None) -> Choice:
    """Time ``run(x)`` for growing batches in both layouts (``layout(bool)`` switches them): the fastest wins."""
    sync, rates = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None), {}
    for cl in (True, False):
        layout(cl)
        best, slow = 0.0, 0
        for b in [fixed] if fixed else SIZES:
            x = torch.rand((b, *shape), device=dev)
            x = x.contiguous(memory_format=torch.channels_last) if cl and x.ndim == 4 else x
            try:
                with torch.inference_mode():  # three timed calls, the first a warm-up (kernel choice, allocation)
                    times = timeit.repeat(lambda: (run(x), sync()), setup=sync, repeat=3, number=1)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                break
            seconds = min(times[1:])
            rate = rates[f"{'channels_last' if cl else 'default'}/{b}"] = b / seconds
            slow, best = slow + 1 if rate < STOP_BELOW * best else 0, max(best, rate)
            if slow == 2 or seconds > 1.0:
                break
    if not rates:
        raise RuntimeError(f"utils/batching.py: not even batch {fixed or 1} fits on {dev}")
    key = max(rates, key=rates.get)
    name, b = key.split("/")
    return Choice(int(b), name == "channels_last", rates[key], rates, ENV if fixed else "probe")


def _saved() -> dict:
    file = paths.cache_dir() / "batch_probe.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def _choose(key: str, run, shape, dev, layout) -> Choice:
    # not keyed by the thread count: processes sharing the cache batch alike (the batch can change an output's bits)
    text = os.environ.get(ENV, "auto").strip().lower()
    if text not in ("", "auto") and (not text.isdigit() or int(text) < 1):
        raise ValueError(f"{ENV}={text!r}: expected 'auto' or a positive integer")
    fixed = int(text) if text not in ("", "auto") else None
    key = f"{key}|batch={fixed or 'auto'}"
    if key not in _MEMORY:
        if key in (saved := _saved()):
            _MEMORY[key] = Choice(**{**saved[key], "source": "cache"})
        else:
            _MEMORY[key] = probe(run, shape, dev, layout, fixed)
            store.write_json(paths.cache_dir() / "batch_probe.json", {**saved, key: asdict(_MEMORY[key])})
    layout(_MEMORY[key].channels_last)
    return _MEMORY[key]


def _name(module: torch.nn.Module) -> str:
    # the architecture decides the speed, not the weights: fine-tuned or retrained copies share a probe
    return f"{getattr(module, 'name', type(module).__name__)}/{sum(p.numel() for p in module.parameters())}"


def for_module(module: torch.nn.Module, shape: tuple, name: str | None = None) -> Choice:
    """Batch and layout for ``module`` on inputs (b, *shape); the module is left in the chosen layout."""
    dev = next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))
    return _choose(f"{dev}|{name or _name(module)}|{tuple(shape)}", module, shape, dev,
                   lambda cl: set_layout(module, cl))


def for_pipeline(pipeline, shape: tuple, rows, autocast: torch.dtype | None = None, graphs: bool = False) -> Choice:
    """Batch and layout for an attack pipeline's scores on (b, *shape) images of ``rows``, under ``autocast`` if set,
    through frozen graphs if ``graphs``."""
    dev = pipeline.device
    rows = torch.as_tensor(np.resize(np.asarray(rows), SIZES[-1]), device=dev)

    def run(x):
        with (torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None),
              traced(*pipeline.modules, enabled=graphs)):
            return pipeline.scores(x, rows[:len(x)])
    # keyed by the encoder, not the heads behind it (a few matrix products): the models of a notebook share a probe
    return _choose(f"{dev}|{type(pipeline).__name__}|{_name(pipeline.modules[0])}|{tuple(shape)}"
                   + (f"|{autocast}" if autocast is not None else "") + ("|traced" if graphs else ""), run, shape, dev,
                   lambda cl: (setattr(pipeline, "channels_last", cl), set_layout(pipeline.modules[0], cl)))


def recorded() -> dict:
    """The setting and every choice in this machine's cache (the notebooks ran in other processes) for run.json."""
    choices = {k: dict(batch=v["batch"], channels_last=v["channels_last"], rate=round(v["rate"], 1),
                       source=v["source"]) for k, v in _saved().items()}
    return {"setting": os.environ.get(ENV, "auto"), "choices": choices}


@contextlib.contextmanager
def traced(*modules: torch.nn.Module, enabled: bool = True):
    """Within: the encoders in ``modules`` (those with a ``traced`` flag) run inference through ``frozen_graph``
    (nothing changes unless ``enabled``, as with ``torch.autocast``)."""
    flags = {m: m.traced for module in modules for m in module.modules()
             if enabled and isinstance(getattr(m, "traced", 0), bool)}
    try:
        for m in flags:
            m.traced = True
        yield
    finally:
        for m, before in flags.items():
            m.traced = before


def frozen_graph(backbone: torch.nn.Module, x: torch.Tensor, name: str):
    """``backbone`` traced and frozen by TorchScript for inputs like ``x``, checked against eager at each new batch
    size: faster (batch norms folded, activations fused; docs/attacks.md) but rounded otherwise, so searches confirm
    successes eagerly. Eager in training, under gradients or autocast, and where tracing fails or disagrees."""
    if backbone.training or torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
        return backbone
    versions = tuple(p._version for p in backbone.parameters())  # weights loaded or trained since: trace anew
    if (book := _GRAPHS.get(backbone)) is None or book["versions"] != versions:
        book = _GRAPHS[backbone] = {"versions": versions}
    key = (tuple(x.shape[1:]), x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last))
    if key not in book:
        try:  # a failure only costs speed: reported, and the eager backbone runs
            with warnings.catch_warnings():  # torch.jit.trace's deprecation notice and tracer remarks
                warnings.simplefilter("ignore")
                book[key] = (torch.jit.freeze(torch.jit.trace(backbone, x)), set())
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"{name}: backbone not traced ({type(e).__name__}: {e}); it runs eagerly")
            book[key] = (None, set())
    graph, checked = book[key]
    if graph is not None and len(x) not in checked:
        try:  # a graph can also have kept the traced batch size in a reshape
            bad = (graph(x) - (b := backbone(x))).abs().max() > 1e-3 * b.abs().max().clamp_min(1)
        except RuntimeError:
            bad = True
        if bad:
            warnings.warn(f"{name}: traced backbone disagrees with eager on {tuple(x.shape)}; it runs eagerly")
            book[key], graph = (None, checked), None
        checked.add(len(x))
    return graph if graph is not None else backbone
