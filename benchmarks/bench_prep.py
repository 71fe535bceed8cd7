#!/usr/bin/env python
"""Benchmark ``mat2py.py`` on 1,000 and 5,000 synthetic Emotic persons: wall time, persons/s, peak resident memory.

    python benchmarks/bench_prep.py [--sizes 1000 5000] [--workers 2] [--keep DIR]

Each run is a fresh child process started through a tiny wrapper that reports the child's peak RSS as the kernel
counts it (``getrusage(RUSAGE_CHILDREN).ru_maxrss``), so file pages of the memory-mapped outputs are included.
Target (issue 2): peak at 5,000 within 1.3x of the peak at 1,000, i.e. memory does not grow with the dataset.
The synthetic datasets (``utils.synthetic.make_emotic``) are generated once and kept in ``--keep`` between runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs ``argv`` as a child and prints its peak RSS in KiB (Linux ru_maxrss unit) as the last line of stderr.
WRAPPER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
           "sys.exit(rc)")


def dataset(root: Path, n_persons: int) -> Path:
    """A synthetic Emotic of ``n_persons`` in the real raw layout, generated once per size."""
    from utils.synthetic import make_emotic

    folder = root / f"emotic_{n_persons}"
    stamp = folder / ".complete"
    if not stamp.is_file():
        t = time.perf_counter()
        make_emotic(folder, size="demo", seed=0, n_persons=n_persons)
        stamp.write_text("ok\n")
        print(f"  generated {n_persons} persons in {time.perf_counter() - t:.0f} s", flush=True)
    return folder


def run(data: Path, out: Path, workers: int) -> dict:
    cmd = [sys.executable, "-c", WRAPPER, sys.executable, str(REPO / "mat2py.py"), "--data-dir", str(data),
           "--out", str(out), "--workers", str(workers), "--descriptions", "file",
           "--descriptions-file", str(data / "descriptions.csv")]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)  # not a tty: progress bars stay off
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"mat2py.py failed:\n{proc.stderr}")
    peak_kb = int(proc.stderr.strip().splitlines()[-1].split()[1])
    manifest = json.loads((out / "manifest.json").read_text())
    persons = sum(s["persons"] for s in manifest["splits"].values())
    return {"persons": persons, "wall_s": wall, "persons_per_s": persons / wall, "peak_rss_mb": peak_kb / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=REPO / ".cache" / "bench_prep",
                    help="where the synthetic datasets are kept between runs")
    args = ap.parse_args(argv)

    results = {}
    for n in args.sizes:
        print(f"[{n} persons]", flush=True)
        data = dataset(args.keep, n)
        with tempfile.TemporaryDirectory(prefix="bench_mat2py_", dir=args.keep) as tmp:
            results[n] = r = run(data, Path(tmp) / "out", args.workers)
        print(f"  mat2py.py: {r['persons']} persons kept, {r['wall_s']:.1f} s wall, {r['persons_per_s']:.0f} "
              f"persons/s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)

    print(f"\n| persons (annotated) | kept | wall (s) | persons/s | peak RSS (MB) |\n|---|---|---|---|---|")
    for n, r in results.items():
        print(f"| {n} | {r['persons']} | {r['wall_s']:.1f} | {r['persons_per_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    if len(results) >= 2:
        lo, hi = min(results), max(results)
        ratio = results[hi]["peak_rss_mb"] / results[lo]["peak_rss_mb"]
        verdict = "OK" if ratio <= 1.3 else "FAIL (target <= 1.3)"
        print(f"\npeak RSS ratio {hi}/{lo}: {ratio:.2f}  {verdict}  (workers={args.workers})")
        return 0 if ratio <= 1.3 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
