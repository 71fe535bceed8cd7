"""One-command GPU check: does everything run on CUDA, and how fast?

    python scripts/gpu_check.py            # or: make gpu-check
    python scripts/gpu_check.py --skip-notebooks --budget 300

On a machine where torch sees a CUDA device, with ``MMER_DEVICE=cuda`` for every step:

1. the attack's throughput: queries per second of the few-pixel attack (paper population, 400) against the model's
   own batched scoring rate, on the packaged ImageNet MobileNetV2;
2. the unit tests (``pytest tests``);
3. the demo notebooks (``scripts/run_all.py --profile demo``), one at a time, with each one's wall time.

First it prints the batch size and memory layout ``utils.batching`` measured fastest on CUDA and on the CPU.

Then a summary. All steps share one time budget (``--budget``, default 600 s); a step that would overrun is stopped
and reported, and the exit status is non-zero when any step failed. Without CUDA it says so, runs nothing and
exits 0, so it is safe in any CI.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from utils import attack, batching
from utils.encoders import load_image_encoder

REPO = Path(__file__).resolve().parent.parent


def attack_api():
    """The attack's entry points, looked up in this one place: (classifier pipeline class, score_images, the
    differential evolution)."""
    return attack.ClassifierPixelPipeline, attack.score_images, attack.differential_evolution


def probe_choices(devices=("cuda", "cpu"), size: int = 224) -> dict:
    """device -> the batch size and layout ``utils.batching`` picks for MobileNetV2 on size x size images there
    (measured once per machine, then read from the cache)."""
    return {dev: batching.for_module(load_image_encoder("mobilenet_v2", device=dev), (3, size, size))
            for dev in devices}


def _sync(dev) -> None:
    import torch

    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize(dev)


def attack_rates(dev="cuda", images: int = 8, popsize: int = 400, generations: int = 2, batch_size: int = 400,
                 rate_images: int = 1024, image_size: int = 224, seed: int = 0) -> dict:
    """Queries/s of the few-pixel attack vs the batched scoring rate of the same pipeline, in float32.

    Model: MobileNetV2 with its ImageNet head (the paper's setting: untargeted, label = the clean prediction).
    Images: seeded smooth random pictures (no data needed). The two rates use the same batch size, so their
    ratio shows how much of the attack's time is spent outside the model.
    """
    import numpy as np
    import torch

    pipeline_cls, score_images, attack = attack_api()
    enc = load_image_encoder("mobilenet_v2", device=dev)
    model = torch.nn.Sequential(enc, enc.head).eval()
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(images, rate_images), 8, 8, 3)).astype(np.float32)
    scale = image_size // 8
    pics = np.clip(np.kron(coarse, np.ones((1, scale, scale, 1))) + rng.normal(0, 8, (len(coarse), scale * 8,
                   scale * 8, 3)), 0, 255).astype(np.uint8)

    probe = pipeline_cls(model, labels=np.zeros(len(pics), np.int64), n_classes=1000)
    score_images(probe, pics[:batch_size], batch_size=batch_size)  # warm-up: cuDNN picks its kernels
    _sync(dev)
    t0 = time.perf_counter()
    clean = score_images(probe, pics[:rate_images], batch_size=batch_size)
    _sync(dev)
    batched_rate = rate_images / (time.perf_counter() - t0)

    pipeline = pipeline_cls(model, labels=clean.argmax(1), n_classes=1000)
    t0 = time.perf_counter()
    report = attack(pipeline, pics[:images], pixels=1, popsize=popsize, generations=generations,
                    batch_size=batch_size, seed=seed)
    _sync(dev)
    seconds = time.perf_counter() - t0
    summary = report.summary()
    qps = summary.get("queries_per_second") or report.model_queries / seconds
    return {"device": str(dev), "images": images, "popsize": popsize, "generations": generations,
            "batch_size": batch_size, "batched_images_per_s": batched_rate, "attack_queries_per_s": qps,
            "ratio": qps / batched_rate, "attack_seconds": seconds, "successes": summary.get("successes")}


def _step(name: str, cmd: list, env: dict, deadline: float, results: list) -> bool:
    left = deadline - time.perf_counter()
    if left <= 5:
        results.append((name, "skipped (budget spent)", 0.0))
        return False
    print(f"\n[gpu-check] {name}: {' '.join(map(str, cmd))}", flush=True)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, timeout=left).returncode
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
    except subprocess.TimeoutExpired:
        status = "TIMED OUT (budget)"
    results.append((name, status, time.perf_counter() - t0))
    return status == "ok"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=600, help="seconds for all steps together (default 600)")
    ap.add_argument("--skip-attack", action="store_true")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-notebooks", action="store_true")
    ap.add_argument("--popsize", type=int, default=400, help="attack population (the paper's 400 by default)")
    ap.add_argument("--generations", type=int, default=2, help="attack generations (kept small: a rate, not a result)")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device on this machine; nothing was run.")
        return 0
    deadline = time.perf_counter() + args.budget
    env = {**os.environ, "MMER_DEVICE": "cuda"}
    os.environ["MMER_DEVICE"] = "cuda"
    props = torch.cuda.get_device_properties(0)
    print(f"[gpu-check] {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}", flush=True)
    results: list[tuple[str, str, float]] = []
    rates = None
    for dev, c in probe_choices().items():
        print(f"[gpu-check] fastest batch on {dev} (MobileNetV2, 224 x 224, utils.batching, {c.source}): {c.batch} "
              f"in {'channels_last' if c.channels_last else 'the default layout'}, {c.rate:.0f} images/s", flush=True)

    if not args.skip_attack:
        t0 = time.perf_counter()
        try:
            rates = attack_rates("cuda", popsize=args.popsize, generations=args.generations)
            results.append(("attack throughput", "ok", time.perf_counter() - t0))
        except Exception as e:  # noqa: BLE001 - report and go on with the other steps
            results.append(("attack throughput", f"FAILED ({type(e).__name__}: {e})", time.perf_counter() - t0))
    if not args.skip_tests:
        _step("unit tests", [sys.executable, "-m", "pytest", "tests", "-q", "-x"], env, deadline, results)
    if not args.skip_notebooks:
        run_all = REPO / "scripts" / "run_all.py"
        if _step("demo data", [sys.executable, run_all, "--profile", "demo", "--prepare-only"], env, deadline,
                 results):
            for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
                _step(f"notebook {nb.name}", [sys.executable, run_all, "--profile", "demo", "--notebooks",
                                              nb.name.split("_")[0]], env, deadline, results)

    print("\n[gpu-check] summary")
    width = max(len(r[0]) for r in results) if results else 10
    for name, status, seconds in results:
        print(f"  {name:<{width}}  {seconds:7.1f} s  {status}")
    if rates:
        print(f"  attack: {rates['attack_queries_per_s']:.0f} queries/s (pop {rates['popsize']}, "
              f"{rates['generations']} generations, {rates['images']} images) vs the model's batched "
              f"{rates['batched_images_per_s']:.0f} images/s at batch {rates['batch_size']}: "
              f"{100 * rates['ratio']:.0f}% of the model's rate")
    return 0 if all(status == "ok" for _, status, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
