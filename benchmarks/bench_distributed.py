"""Benchmark (not a test): the Flickr8k robustness attack of scripts/robustness.py on a 2-core CPU, as
2 processes x 1 thread (``torchrun --nproc_per_node 2``, gloo) against 1 process x 2 threads (and 1 x 1).

Same data (the smoke or demo synthetic Flickr8k, prepared by ``scripts/run_all.py``), same models, same rows,
same budget. Every configuration starts from the same warm feature cache and checkpoints (made once, untimed), in
a fresh output folder. Printed per configuration: the wall time of the whole command (start-up, loading, attack,
merge), the attack phase alone (the slowest rank's "computed shards ... in X s"), the ratios, and whether the
merged results agree with the 2 x 1 run (decisions exactly; scores up to the rounding that another thread count
or batch composition brings).

    .venv/bin/python benchmarks/bench_distributed.py                       # smoke data, 4 images, 60 queries per k
    .venv/bin/python benchmarks/bench_distributed.py --profile demo --limit 8 --queries 100
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SCRIPT = str(REPO / "scripts" / "robustness.py")


def _env(profile: str, output: Path, cache: Path, threads: int, args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMER_")}
    env.update(MMER_PROFILE=profile, MMER_OUTPUT=str(output), MMER_CACHE=str(cache), MMER_DEVICE="cpu",
               MMER_PIXELS=args.pixels, MMER_ATTACK_QUERIES=str(args.queries), OMP_NUM_THREADS=str(threads),
               PYTHONPATH=str(REPO))
    return env


def _run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    attack = max(float(s) for s in re.findall(r"computed shards .* in ([0-9.]+) s", proc.stdout))
    return wall, attack, proc.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="smoke", choices=("smoke", "demo"))
    ap.add_argument("--limit", type=int, default=4, help="images attacked (the first N every model gets right)")
    ap.add_argument("--queries", type=int, default=60, help="queries per image and k")
    ap.add_argument("--pixels", default="[2, 16]", help="the k schedule (JSON list)")
    args = ap.parse_args(argv)

    subprocess.run([sys.executable, str(REPO / "scripts" / "run_all.py"), "--profile", args.profile,
                    "--prepare-only"], cwd=REPO, check=True, capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    cache, warm = work / "cache", work / "warm"
    base = ["flickr8k", "--rows", "correct", "--limit", str(args.limit)]
    half = -(-args.limit // 2)
    print(f"warming the feature cache and checkpoints in {work} ...", flush=True)
    # untimed warm-up: every split's features into the cache (sharded mode), then the models trained once
    subprocess.run([sys.executable, SCRIPT, "flickr8k", "--features-only"], env=_env(args.profile, warm, cache, 2,
                                                                                    args), cwd=REPO, check=True,
                   capture_output=True)
    warm_models = "import runpy; from utils import config; " \
                  "runpy.run_path('scripts/robustness.py')['attack_job'](config.load('flickr8k'))"
    subprocess.run([sys.executable, "-c", warm_models],
                   env=_env(args.profile, warm, cache, 2, args), cwd=REPO, check=True, capture_output=True)

    runs = {
        "2 processes x 1 thread": ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", SCRIPT,
                                    *base, "--shard-size", str(half)], 1),
        "1 process x 2 threads": ([sys.executable, SCRIPT, *base, "--shard-size", str(half)], 2),
        "1 process x 2 threads, one shard": ([sys.executable, SCRIPT, *base, "--shard-size", str(args.limit)], 2),
        "1 process x 1 thread": ([sys.executable, SCRIPT, *base, "--shard-size", str(half)], 1),
    }
    results, merged = {}, {}
    for name, (cmd, threads) in runs.items():
        out = work / re.sub(r"\W+", "_", name)
        shutil.copytree(warm / "checkpoints", out / "checkpoints")
        wall, attack, log = _run(cmd, _env(args.profile, out, cache, threads, args))
        results[name] = (wall, attack)
        path = Path(re.search(r"merged into (\S+)", log).group(1))
        with np.load(path, allow_pickle=False) as f:
            merged[name] = {k: f[k] for k in f.files}
        print(f"{name:34s} wall {wall:6.1f} s   attack {attack:6.1f} s", flush=True)

    ref_name = "2 processes x 1 thread"
    ref_wall, ref_attack = results[ref_name]
    ref = merged[ref_name]
    print(f"\n{args.profile} Flickr8k, {args.limit} images x 2 models, pixels {args.pixels}, {args.queries} queries "
          f"per k; {os.cpu_count()} CPUs (shared machine: compare runs made together)")
    for name, (wall, attack) in results.items():
        got = merged[name]
        decisions = all(np.array_equal(got[k], ref[k]) for k in ref if k.endswith(("_k_needed", "_attacked",
                                                                                      "_queries", "_pixels")))
        scores = max(float(np.abs(got[k].astype(float) - ref[k].astype(float)).max()) if got[k].size else 0.0
                     for k in ref if k.endswith(("_scores_before", "_scores_after")))
        print(f"  {name:34s} wall x{wall / ref_wall:4.2f}  attack x{attack / ref_attack:4.2f} of 2x1;  "
              f"decisions {'identical' if decisions else 'DIFFER'}, max score difference {scores:.1e}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
