"""utils.batching: the probe keeps the fastest batch and layout of a model whose cost per call is known, stops at
out-of-memory, is cached in memory and on disk, and MMER_INFERENCE_BATCH overrides it.

The model's cost is charged to a fake clock that the probe's ``timeit`` reads, so the probe's logic is tested
in milliseconds and its measured rates are exact."""
import json
import re
import timeit
import warnings
from types import SimpleNamespace

import pytest
import torch

from utils import batching


class Clock:
    """A clock that only the model's calls advance: ``perf_counter`` for the probe, ``spend`` for the model."""

    now = 0.0

    @classmethod
    def perf_counter(cls) -> float:
        return cls.now

    @classmethod
    def spend(cls, seconds: float) -> None:
        cls.now += seconds


class Timed(torch.nn.Module):
    """A model whose call costs a known time on :class:`Clock`: fixed + per image + a quadratic term (memory
    traffic), twice as much in the default layout. Fastest per image at batch 8 in channels_last (of the sizes
    probed)."""

    def __init__(self, oom_above=None):
        super().__init__()
        self.channels_last, self.calls, self.oom_above = True, 0, oom_above

    def forward(self, x):
        self.calls += 1
        b = len(x)
        if self.oom_above and b > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        Clock.spend(2 * (0.004 + 0.0005 * b + 0.00005 * b * b) * (1 if self.channels_last else 2))
        return x


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("MMER_CACHE", str(tmp_path))
    monkeypatch.delenv(batching.ENV, raising=False)
    monkeypatch.setattr(batching, "_MEMORY", {})
    return tmp_path


@pytest.fixture
def clock(fresh, monkeypatch):
    """``fresh``, and the probe reads the fake clock."""
    real = timeit.repeat
    monkeypatch.setattr(batching, "timeit", SimpleNamespace(
        repeat=lambda *a, **kw: real(*a, **{**kw, "timer": Clock.perf_counter})))
    return fresh


def expected_rate(b, cl):
    return b / (2 * (0.004 + 0.0005 * b + 0.00005 * b * b) * (1 if cl else 2))


def test_probe_keeps_the_fastest_batch_and_layout_and_caches_it(clock):
    model = Timed()
    choice = batching.for_module(model, (3, 4, 4), name="timed")
    assert (choice.batch, choice.channels_last, choice.source) == (8, True, "probe")
    assert model.channels_last is True  # left in the chosen layout
    # every measured rate is what the model's known cost allows (exactly, on the fake clock; the bounds are those
    # a real sleep met: it only overshoots)
    for key, rate in choice.rates.items():
        layout, b = key.split("/")
        want = expected_rate(int(b), layout == "channels_last")
        assert 0.6 * want < rate <= 1.02 * want, key
    # stopped at the second size in a row below 0.75 of the best (32: 0.63, 64: 0.37), in each layout
    for layout in ("channels_last", "default"):
        assert max(int(k.split("/")[1]) for k in choice.rates if k.startswith(layout)) == 64, layout
    # cached: in memory (no call at all), then on disk for a new process (memory cleared)
    calls = model.calls
    assert batching.for_module(model, (3, 4, 4), name="timed") is choice and model.calls == calls
    batching._MEMORY.clear()
    again = batching.for_module(model, (3, 4, 4), name="timed")
    assert (again.batch, again.channels_last, again.source, model.calls) == (8, True, "cache", calls)
    saved = json.loads((clock / "batch_probe.json").read_text())
    assert [v["batch"] for v in saved.values()] == [8]
    assert list(batching._MEMORY.values())[0].batch == 8
    # another input shape is another probe
    assert batching.for_module(model, (3, 8, 8), name="timed").source == "probe"


def test_the_setting_overrides_the_batch_size(clock, monkeypatch):
    monkeypatch.setenv(batching.ENV, "3")
    model = Timed()
    choice = batching.for_module(model, (3, 4, 4), name="timed")
    assert (choice.batch, choice.source) == (3, batching.ENV)
    assert set(choice.rates) == {"channels_last/3", "default/3"} and choice.channels_last
    monkeypatch.setenv(batching.ENV, "auto")
    assert batching.for_module(model, (3, 4, 4), name="timed").batch == 8
    for bad in ("0", "-2", "big"):
        monkeypatch.setenv(batching.ENV, bad)
        with pytest.raises(ValueError, match="MMER_INFERENCE_BATCH"):
            batching.for_module(model, (3, 4, 4), name="timed")


def test_out_of_memory_stops_the_growth(clock):
    choice = batching.probe(Timed(oom_above=4), (3, 4, 4), torch.device("cpu"), lambda cl: None)
    assert choice.batch == 4 and max(int(k.split("/")[1]) for k in choice.rates) == 4
    with pytest.raises(RuntimeError, match="not even batch 1 fits"):
        batching.probe(Timed(oom_above=0.5), (3, 4, 4), torch.device("cpu"), lambda cl: None)


def test_the_environment_variable_is_a_known_setting():
    from utils import config

    config.load("emotic", "smoke", environ={batching.ENV: "4"})  # not an unknown knob


def test_gpu_check_reports_the_choice_per_device(fresh, monkeypatch):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parent.parent / "scripts/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(batching, "SIZES", (1, 2, 4))  # the real model, timed for real: a few small batches suffice
    try:
        got = gpu_check.probe_choices(("cpu",), size=32)
    except Exception as e:
        if "mobilenet" in str(e).lower():
            pytest.skip(f"offline MobileNetV2 unavailable: {e}")
        raise
    c = got["cpu"]
    assert c.batch in batching.SIZES and c.rate == max(c.rates.values())
    assert batching.recorded()["choices"][next(iter(batching._MEMORY))]["batch"] == c.batch


# ------------------------------------------------------------------------------------- frozen graphs (attacks)
def small_encoder(seed=0):
    """A small CNN in an ImageEncoder: batch norms and ReLU6 for TorchScript to fold and fuse."""
    from utils.encoders import ImageEncoder
    torch.manual_seed(seed)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()
    for m in net.modules():  # non-trivial running statistics, so folding them into the convolutions matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    return ImageEncoder(net.to(memory_format=torch.channels_last), name="small", dim=5, fingerprint="small",
                        mean=[0.5] * 3, std=[0.25] * 3, channels_last=True).eval()


def test_traced_encoders_run_a_frozen_graph_close_to_eager_and_trace_once_per_input_shape(monkeypatch):
    enc, x = small_encoder(), torch.rand(3, 3, 32, 32)
    traces, real = [], torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda m, ex: traces.append(tuple(ex.shape)) or real(m, ex))
    with torch.inference_mode():
        eager = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eager_bf16 = enc(x)
        with batching.traced(enc):
            assert enc.traced
            out = enc(x)
            graph, checked = batching._GRAPHS[enc.backbone][((3, 32, 32), torch.float32, x.device, True)]
            assert isinstance(graph, torch.jit.ScriptModule) and checked == {3}
            torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
            assert not torch.equal(out, eager)  # the folded graph rounds differently: it is the graph that ran
            torch.testing.assert_close(enc(x[:2]), eager[:2], rtol=1e-4, atol=1e-5)  # another batch, same graph
            assert checked == {2, 3} and traces == [(3, 3, 32, 32)]
            enc(torch.rand(2, 3, 48, 48))  # another image size: a graph of its own
            assert traces == [(3, 3, 32, 32), (2, 3, 48, 48)]
        assert not enc.traced and torch.equal(enc(x), eager)  # eager again outside
        with torch.enable_grad(), batching.traced(enc):
            assert torch.equal(enc(x), eager) and len(traces) == 2  # gradients wanted: eager (white-box attacks)
        with batching.traced(enc), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(enc(x), eager_bf16) and len(traces) == 2  # under autocast: eager


def test_changed_weights_are_traced_anew():
    enc, x = small_encoder(), torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        with batching.traced(enc):
            before = enc(x)
            with torch.no_grad():  # in place, as load_state_dict and optimisers do; a weight the graph folds anew
                enc.backbone[0].weight.mul_(-2.0)
            after = enc(x)
        eager = enc(x)
    torch.testing.assert_close(after, eager, rtol=1e-4, atol=1e-5)
    assert (after - before).abs().max() > 0.01


def test_a_backbone_that_cannot_be_traced_or_disagrees_runs_eagerly_with_a_warning(monkeypatch):
    x = torch.rand(2, 3, 32, 32)

    def fail(m, ex):
        raise RuntimeError("cannot trace this")
    for patch, words in ((dict(trace=fail), "small: backbone not traced (RuntimeError: cannot trace this)"),
                         (dict(freeze=lambda g: (lambda t: g(t) + 1.0)),
                          "small: traced backbone disagrees with eager on (2, 3, 32, 32)")):
        enc = small_encoder()
        with torch.inference_mode():
            eager = enc(x)
            with monkeypatch.context() as m:
                for name, fn in patch.items():
                    m.setattr(torch.jit, name, fn)
                with batching.traced(enc), pytest.warns(UserWarning, match=re.escape(words)):
                    out = enc(x)
                with batching.traced(enc), warnings.catch_warnings():
                    warnings.simplefilter("error")  # decided once: no second warning
                    assert torch.equal(enc(x), eager)
        assert torch.equal(out, eager)


def test_a_graph_that_kept_the_traced_batch_size_runs_eagerly_for_other_sizes():
    class FixedBatch(torch.nn.Module):  # the batch size read as a number: the trace keeps it as a constant
        def forward(self, x):
            return x.reshape(int(x.shape[0]), -1).sum(1, keepdim=True)

    from utils.encoders import ImageEncoder
    enc = ImageEncoder(FixedBatch(), name="fixed", dim=1, fingerprint="fixed", mean=[0.0] * 3, std=[1.0] * 3).eval()
    x = torch.rand(3, 3, 8, 8)
    with torch.inference_mode(), batching.traced(enc):
        torch.testing.assert_close(enc(x), x.reshape(3, -1).sum(1, keepdim=True))
        with pytest.warns(UserWarning, match=re.escape("fixed: traced backbone disagrees with eager on (2, 3, 8, 8)")):
            out = enc(x[:2])  # the graph gives 3 rows for 2 images: caught, and the eager backbone answers
    torch.testing.assert_close(out, x[:2].reshape(2, -1).sum(1, keepdim=True))


def test_traced_changes_nothing_unless_enabled():
    enc = small_encoder()
    with batching.traced(enc, enabled=False):
        assert not enc.traced
    with batching.traced(enc, enabled=True):
        assert enc.traced
    assert not enc.traced
