"""The command line, and ``make_all``: the folder layout it writes.

    python -m utils.synthetic --size {smoke,demo} --seed 0 --out DIR
    python -m utils.synthetic --check DIR       # learnability report with frozen MobileNetV2 / MiniLM features
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .emotic import make_emotic
from .flickr import build_content, write_layout
from .learnability import learnability_report
from .sizes import SIZES


def make_all(out, size: str = "smoke", seed: int = 0) -> dict:
    """Emotic plus both Flickr8k layouts under ``out``: ``emotic/``, ``flickr8k_kaggle/``, ``flickr8k_original/``."""
    out = Path(out)
    flickr = build_content(size, seed)
    return {"emotic": make_emotic(out / "emotic", size, seed),
            "flickr8k_kaggle": write_layout(out / "flickr8k_kaggle", "kaggle", flickr),
            "flickr8k_original": write_layout(out / "flickr8k_original", "original", flickr)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m utils.synthetic",
        description="Synthetic Emotic and Flickr8k datasets, written in exactly the real raw formats.")
    ap.add_argument("--size", choices=list(SIZES), default="smoke")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="folder to write emotic/, flickr8k_kaggle/, flickr8k_original/ into")
    ap.add_argument("--check", metavar="DIR", help="report learnability of a folder written by this tool")
    args = ap.parse_args(argv)
    if args.check:
        t0 = time.perf_counter()
        report = learnability_report(args.check)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(report, indent=2))
        return 0
    if not args.out:
        ap.error("--out is required (or --check DIR)")
    t0 = time.perf_counter()
    written = make_all(args.out, args.size, args.seed)
    e = written["emotic"]["splits"]
    print(f"wrote {args.out} ({args.size}, seed {args.seed}) in {time.perf_counter() - t0:.1f}s: Emotic persons "
          + ", ".join(f"{s} {v['persons']} (kept {v['kept']})" for s, v in e.items())
          + f"; Flickr8k images {len(written['flickr8k_kaggle']['images'])}")
    return 0
