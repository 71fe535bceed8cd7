"""Benchmark (not a test): our batched few-pixel attack against ``torchattacks.OnePixel`` on the same model.

Model: pretrained MobileNetV2 (offline weights, DESIGN section 6) with its own ImageNet classifier, so the attack is
the paper's setting (untargeted, label = the model's clean prediction). Both libraries get the same weights, the
same images and the same budget (population and generations). torchattacks gets the model as a user writes it
(torchvision default layout); ours runs through ``utils.attacks`` (channels_last, batched across images).

torchattacks is installed in its own environment, ``.cache/bench-venv`` (created here if missing: a venv that sees
the project's packages through a .pth file, plus ``pip install --no-deps torchattacks==3.5.1``); the script
re-runs itself there. Prints wall time, queries and success rate for each, the speed ratio, and the model's best
batched inference rate measured in the same run. Usage::

    .venv/bin/python benchmarks/bench_attack.py [--images 4] [--popsize 60] [--generations 5] [--pixels 1]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_VENV = REPO / ".cache" / "bench-venv"
TORCHATTACKS = "torchattacks==3.5.1"


def ensure_bench_venv() -> Path:
    """Create the benchmark's own venv (idempotent) and return its python."""
    py = BENCH_VENV / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import torchattacks, torch"], capture_output=True).returncode == 0:
        return py
    print(f"creating {BENCH_VENV} with {TORCHATTACKS} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", BENCH_VENV], check=True)
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # the project's venv (torch, torchvision, scipy) becomes visible without installing anything into it
    Path(purelib, "_project_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", TORCHATTACKS], check=True)
    return py


try:
    import torchattacks  # noqa: F401
except ImportError:
    if os.environ.get("_BENCH_ATTACK_REEXEC"):
        raise
    python = ensure_bench_venv()
    os.environ["_BENCH_ATTACK_REEXEC"] = "1"
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchattacks  # noqa: E402
import torchvision  # noqa: E402

sys.path.insert(0, str(REPO))
from utils.attack import ClassifierPixelPipeline, few_pixel_attack  # noqa: E402
from utils.encoders import load_image_encoder, packaged_mobilenet_file  # noqa: E402


class Counted(nn.Module):
    """Counts the images that go through the wrapped model (torchattacks' queries)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.count = model, 0

    def forward(self, x):
        self.count += len(x)
        return self.model(x)


def default_layout_model() -> nn.Module:
    """MobileNetV2 + ImageNet classifier as a torchattacks user builds it: [0,1] input, default (NCHW) layout."""
    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(packaged_mobilenet_file(), map_location="cpu", weights_only=True))
    norm = torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return nn.Sequential(norm, net).eval()


def inference_rate(model, batch: int, channels_last: bool, reps: int = 2) -> float:
    """Best images/s of plain batched forward passes (fp32, inference_mode)."""
    x = torch.rand(batch, 3, 224, 224)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.inference_mode():
        model(x[:8])  # warm-up
        for _ in range(reps):
            t = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t)
    return batch / best


def load_images(n_pool: int) -> tuple[np.ndarray, str]:
    """Prepared fixture images if the main job has written any, else smooth random images."""
    for prof in ("demo", "smoke"):
        f = REPO / "data" / prof / "flickr8k" / "test_images.npy"
        if f.is_file():
            arr = np.load(f, mmap_mode="r")
            return np.array(arr[:n_pool]), str(f.relative_to(REPO))
    from scipy.ndimage import gaussian_filter
    noise = np.random.default_rng(0).random((n_pool, 224, 224, 3))
    smooth = gaussian_filter(noise, sigma=(0, 6, 6, 0))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8), "smooth random images"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4, help="images attacked (the least confident of a pool)")
    ap.add_argument("--pool", type=int, default=16, help="candidate images scored once to pick the attacked ones")
    ap.add_argument("--pixels", type=int, default=1)
    ap.add_argument("--popsize", type=int, default=50, help="population per image (paper: 400)")
    ap.add_argument("--generations", type=int, default=4, help="DE generations (paper: 100)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                    help="also run our search through torch.compile: cheaper queries for a one-off compilation "
                         "(minutes here), which pays only for long runs; timed and reported separately")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, threads {torch.get_num_threads()}")

    # --- the same weights, two layouts -----------------------------------------------------------------------
    enc = load_image_encoder("mobilenet_v2", device="cpu")
    ours_model = nn.Sequential(enc, enc.head).eval()  # utils.encoders: channels_last on CPU
    ta_model = default_layout_model()
    pool, source = load_images(args.pool)
    x_pool = torch.from_numpy(pool).permute(0, 3, 1, 2).float().div(255)
    with torch.inference_mode():
        lo_ours, lo_ta = ours_model(x_pool), ta_model(x_pool.contiguous())
    print(f"same model: max |logit difference| between the two layouts = {(lo_ours - lo_ta).abs().max():.2e}")
    probs = lo_ta.softmax(1)
    top2 = probs.topk(2).values
    pick = torch.argsort(top2[:, 0] - top2[:, 1])[:args.images].sort().values.numpy()
    images, labels = pool[pick], lo_ta.argmax(1).numpy()[pick]
    print(f"images: {args.images} least-confident of {args.pool} from {source}; labels = clean predictions")

    # --- the model's own batched inference rate --------------------------------------------------------------
    rates = {}
    for layout, model, cl in (("default layout", ta_model, False), ("channels_last", ours_model, True)):
        for b in (64, args.batch_size):
            rates[(layout, b)] = inference_rate(model, b, cl)
            print(f"inference rate, fp32 {layout:14s} batch {b:4d}: {rates[(layout, b)]:7.1f} img/s", flush=True)
    pipe = ClassifierPixelPipeline(ours_model, labels, n_classes=1000)
    compile_s = 0.0
    if args.compile:  # one-off: compile + freeze for the search batch shape, then measure it like the others
        t = time.perf_counter()
        with pipe.compiled(args.batch_size), torch.inference_mode():
            pipe.model(torch.rand(args.batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last))
        compile_s = time.perf_counter() - t
        print(f"torch.compile (freezing, static batch {args.batch_size}): {compile_s:.1f} s one-off", flush=True)
        with pipe.compiled(args.batch_size):
            rates[("channels_last compiled", args.batch_size)] = inference_rate(pipe.model, args.batch_size, True)
        print(f"inference rate, fp32 channels_last compiled batch {args.batch_size:4d}: "
              f"{rates[('channels_last compiled', args.batch_size)]:7.1f} img/s", flush=True)
    best_key = max(rates, key=rates.get)
    best_rate = rates[best_key]

    # --- settings --------------------------------------------------------------------------------------------
    d = 5 * args.pixels
    ta_popsize = args.popsize  # torchattacks: scipy-style multiplier popsize // (5 * pixels), times 5 * pixels
    ta_total = max(5, (ta_popsize // d) * d)
    print("\nsettings")
    print(f"  ours        : pixels={args.pixels} popsize={args.popsize} generations={args.generations} F=0.5 "
          f"DE/rand/1 no crossover, batch_size={args.batch_size}, fp32, channels_last, "
          f"compile={args.compile}, early stop per image")
    print(f"  torchattacks: OnePixel(pixels={args.pixels}, steps={args.generations}, popsize={ta_popsize}, "
          f"inf_batch={args.batch_size}) -> its scipy-style DE: population = (popsize // {d}) * {d} = {ta_total}, "
          f"maxiter={args.generations}, strategy best1bin, mutation dithered in (0.5, 1), recombination 1, "
          f"init random, early stop when the best member succeeds (checked once per generation)")

    # --- ours ------------------------------------------------------------------------------------------------
    t = time.perf_counter()
    rep = few_pixel_attack(pipe, images, pixels=args.pixels, popsize=args.popsize, generations=args.generations,
                           batch_size=args.batch_size, seed=args.seed, compile=args.compile, progress=False)
    ours_time = time.perf_counter() - t
    tab = rep.table()
    with torch.inference_mode():  # independent re-check of every reported success, default-layout model
        adv_pred = ta_model(torch.from_numpy(rep.adversarial).permute(0, 3, 1, 2).float().div(255)).argmax(1).numpy()
    assert (tab.success.to_numpy() == (adv_pred != labels)).all(), "a reported success did not re-check"
    ours_q = int(tab.queries.sum())

    # --- torchattacks ----------------------------------------------------------------------------------------
    counted = Counted(ta_model)
    attack = torchattacks.OnePixel(counted, pixels=args.pixels, steps=args.generations, popsize=ta_popsize,
                                   inf_batch=args.batch_size)
    np.random.seed(args.seed)  # its DE draws from numpy's global RNG
    xs = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous()
    t = time.perf_counter()
    adv = attack(xs, torch.from_numpy(labels))
    ta_time = time.perf_counter() - t
    ta_q = counted.count
    with torch.inference_mode():
        ta_success = (ta_model(adv).argmax(1).numpy() != labels)

    # --- report ----------------------------------------------------------------------------------------------
    n = len(images)
    print("\nresults")
    print(f"  {'':13s} {'wall s':>8s} {'queries':>8s} {'queries/s':>10s} {'success':>8s}")
    print(f"  {'ours':13s} {ours_time:8.1f} {ours_q:8d} {rep.model_queries / rep.search_seconds:10.1f} "
          f"{tab.success.sum():4d}/{n}")
    print(f"  {'torchattacks':13s} {ta_time:8.1f} {ta_q:8d} {ta_q / ta_time:10.1f} {ta_success.sum():4d}/{n}")
    print(f"\nspeed ratio (torchattacks wall / ours wall): {ta_time / ours_time:.2f}x "
          f"(target >= 3x at equal or higher success)")
    if args.compile:
        print(f"  counting the one-off compilation ({compile_s:.1f} s) too: {ta_time / (ours_time + compile_s):.2f}x")
    print(f"ours per query vs torchattacks per query: {(ta_time / ta_q) / (ours_time / ours_q):.2f}x cheaper")
    print(f"model's best batched inference rate: {best_rate:.1f} img/s ({best_key[0]}, batch {best_key[1]}); "
          f"ours searched at {rep.model_queries / rep.search_seconds:.1f} queries/s = "
          f"{rep.model_queries / rep.search_seconds / best_rate:.0%} of it (target >= 90%)")
    print(f"share of our search time inside the model's forward pass: {rep.model_seconds / rep.search_seconds:.1%} "
          f"(the rest: writing pixels, fitness, DE bookkeeping; load-independent view of the same target)")
    print(f"ours per image: {tab[['row', 'success', 'queries', 'generations']].to_dict('records')}")


if __name__ == "__main__":
    main()
