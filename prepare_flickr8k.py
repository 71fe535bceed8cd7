#!/usr/bin/env python
"""Flickr8k as downloaded -> one image row per photo plus a captions table, per split.

    python prepare_flickr8k.py --data-dir ROOT --out DIR [--seed 0] [--workers N] [--image-size 224]

ROOT is either layout of the download (Kaggle ``captions.txt`` + ``Images/``, or the original
``Flickr8k_text/`` + ``Flickr8k_Dataset/``; see ``utils/prep/flickr.py``). DIR receives, per split (train, val, test):

- ``{split}_images.npy``: (M, S, S, 3) uint8 RGB, each photo squashed to S x S (no aspect keeping), one row per image;
- ``{split}_captions.csv``: ``image_index, image, caption_number, caption``, where ``image_index`` is the row in
  the ``.npy`` and ``caption`` is the exact text of the source file (read it with ``keep_default_na=False`` in pandas);

and ``manifest.json`` with counts, every skipped record and why, the split source and the source paths.
The standard split lists are used when present, otherwise a seeded split by image in the same proportions.

Images are decoded in parallel and streamed to disk one block of rows at a time, so memory stays flat. Everything
is written to a staging folder and moved into DIR only when the whole run succeeded: a failed run leaves a previous
output untouched, and re-running gives byte-identical files. Bad input, and a disk too small for the arrays, stop
with ``error: <file>: <reason>``, exit code 2.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from utils import __version__, store
from utils.prep.flickr import SPLITS, STANDARD_SIZES, ImageItem, Plan, find_source, plan_splits
from utils.prep.io import (ImageReadError, PrepError, RowWriter, load_rgb, npy_bytes, parallel_map, resize_rgb,
                           sha256_prefix, staged_output)

TOOL = "prepare_flickr8k"
MISSING_IMAGE = "image file missing"
UNREADABLE_IMAGE = "image unreadable"
MAX_LISTED_SKIPS = 2000     # the manifest stays readable even when a whole image folder is missing


def decode(path: Path, size: int) -> np.ndarray | str:
    """The resized photo, or the reason it cannot be used (a skip, not an error)."""
    if not path.is_file():
        return MISSING_IMAGE
    try:
        return resize_rgb(load_rgb(path), size)
    except (ImageReadError, Image.DecompressionBombError):
        return UNREADABLE_IMAGE


def write_split(plan: Plan, split: str, stage: Path, size: int, workers: int) -> dict:
    """Stream one split's photos into ``{split}_images.npy`` and its captions into ``{split}_captions.csv``."""
    items: list[ImageItem] = plan.splits[split]
    npy = stage / f"{split}_images.npy"
    images = RowWriter(npy, (len(items), size, size, 3), np.uint8)
    n_rows = n_captions = 0
    paths = (plan.source.image_dir / it.name for it in items)
    captions = io.StringIO()
    table = csv.writer(captions, lineterminator="\n")
    table.writerow(["image_index", "image", "caption_number", "caption"])
    results = parallel_map(lambda p: decode(p, size), paths, workers=workers, desc=f"{split} images",
                           total=len(items))
    for item, result in zip(items, results, strict=True):
        if isinstance(result, str):
            plan.skip(split, item.name, None, result, n_captions=len(item.captions))
            continue
        images.append(result)
        table.writerows([n_rows, item.name, number, text] for number, text in item.captions)
        n_rows += 1
        n_captions += len(item.captions)
    store.atomic_write(stage / f"{split}_captions.csv", captions.getvalue())
    images.close()
    return {"images": n_rows, "captions": n_captions, "skipped": plan.skipped_counts(split)}


def prepare(data_dir: str | Path, out: str | Path, seed: int = 0, workers: int | None = None,
            image_size: int = 224, layout: str = "auto") -> dict:
    """Write the artefacts for ``data_dir`` into ``out`` and return the manifest."""
    source = find_source(data_dir, layout)
    plan = plan_splits(source, seed)
    workers = workers or min(8, os.cpu_count() or 1)
    need = sum(npy_bytes((len(plan.splits[split]), image_size, image_size, 3), np.uint8) for split in SPLITS)
    with staged_output(out, need_bytes=need) as stage:
        splits = {split: write_split(plan, split, stage, image_size, workers) for split in SPLITS}
        manifest = {                    # no timestamp, so that a re-run writes byte-identical files
            "tool": TOOL,
            "version": __version__,
            "source": {**source.as_dict(), "captions_sha256": sha256_prefix(source.captions_file, 16)},
            "split_source": plan.split_source,
            "seed": seed if plan.split_source == "seeded" else None,
            "split_proportions": STANDARD_SIZES if plan.split_source == "seeded" else None,
            "image_size": image_size,
            "resize": "squashed to image_size x image_size (aspect not kept), PIL bilinear",
            "caption_text": "exact text of the source file (line ending removed); empty captions skipped",
            "splits": splits,
            "unassigned": plan.skipped_counts(None),
            "skipped_items": [s.as_dict() for s in plan.skips[:MAX_LISTED_SKIPS]],
            "skipped_items_omitted": max(0, len(plan.skips) - MAX_LISTED_SKIPS),
        }
        store.write_json(stage / "manifest.json", manifest)
    return manifest


def parse_args(argv=None) -> argparse.Namespace:
    paragraphs = __doc__.strip().split("\n\n")
    p = argparse.ArgumentParser(description=paragraphs[0], epilog="\n\n".join(paragraphs[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", "--data_dir", dest="data_dir", required=True, metavar="ROOT",
                   help="Flickr8k folder as downloaded (Kaggle or original layout)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split by image when no split lists exist")
    p.add_argument("--workers", type=_positive, default=None,
                   help="parallel image decoders (default: CPU count, at most 8)")
    p.add_argument("--image-size", "--image_size", dest="image_size", type=_positive, default=224,
                   help="side of the square output images in pixels (default 224)")
    p.add_argument("--layout", choices=("auto", "kaggle", "original"), default="auto",
                   help="force a layout when a folder holds both (default: original if present, else Kaggle)")
    return p.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _skip_note(skipped: dict) -> str:
    """'; skipped 1 image (image file missing: 1), 6 captions (...)' or '' when nothing was skipped."""
    parts = []
    for kind, counts in skipped.items():
        if counts:
            detail = ", ".join(f"{reason}: {n}" for reason, n in counts.items())
            parts.append(f"{sum(counts.values())} {kind} ({detail})")
    return f"; skipped {', '.join(parts)}" if parts else ""


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        manifest = prepare(args.data_dir, args.out, args.seed, args.workers, args.image_size, args.layout)
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:            # e.g. the output folder cannot be written
        print(f"error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"Flickr8k ({manifest['source']['layout']} layout, split from {manifest['split_source']}) -> {args.out}")
    for split, s in manifest["splits"].items():
        print(f"  {split:5s} {s['images']:6d} images {s['captions']:7d} captions{_skip_note(s['skipped'])}")
    if manifest["unassigned"]["images"]:
        print(f"  not in any split list:{_skip_note(manifest['unassigned'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
