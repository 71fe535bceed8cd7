#!/usr/bin/env python
"""Emotic (PAMI) -> arrays + CSV, the artefacts published Emotic code reads.

    python mat2py.py --data-dir /data/emotic --out data/full/emotic
    python mat2py.py --data-dir /data/emotic --out OUT --descriptions file --descriptions-file descriptions.csv
    python mat2py.py --data-dir /data/emotic --out OUT --descriptions captioner --captioner /models/blip-base

Per split it writes ``{split}_context_arr.npy`` (N,224,224,3 uint8, whole image squashed), ``{split}_body_arr.npy``
(N,128,128,3 uint8, box crop), ``{split}_cat_arr.npy`` (N,26 float32), ``{split}_cont_arr.npy`` (N,3 float32),
``{split}.csv`` (row i describes array row i; it also carries the columns Tandon-A/emotic's ``Emotic_CSVDataset``
reads, so one file serves both) and one ``manifest.json`` with counts and skip reasons. ``--keep-unlabelled`` keeps
persons without a category as all-zero label rows, as that code's own preparation does.

How it stays fast and flat: images are decoded on a thread pool, each once however many persons it holds; rows are
streamed into ``.npy`` files one block at a time (space reserved up front, ordinary writes), so peak memory does
not grow with the dataset. Everything is written in a staging folder and moved into place only when the whole run
succeeds: a failing run leaves a previous output untouched, and a rerun gives the same bytes.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from utils.prep import emotic, io as prep_io
from utils.prep.emotic import DESCRIPTION_SOURCES, SKIP_REASONS, SPLITS, Person, Record
from utils.labels import CATEGORIES
from utils.prep.io import PrepError
from utils import store

__version__ = "1.0.0"
CONTEXT_SIZE, BODY_SIZE = 224, 128
CSV_COLUMNS = ("index", "record", "person", "folder", "filename", "image_width", "image_height", "x1", "y1", "x2",
               "y2", "categories", "valence", "arousal", "dominance", "gender", "age", "description",
               *emotic.PUBLISHED_CSV_COLUMNS)  # the same person again, as Tandon-A/emotic's Emotic_CSVDataset reads it


# ---------------------------------------------------------------------------------------------------------------
# Decoding (runs on worker threads)
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Decoded:
    """What a worker returns for one record: only resized arrays, never the full image."""

    record: Record
    persons: list[Person]
    error: str | None = None  # a skip reason from SKIP_REASONS
    size: tuple[int, int] = (0, 0)  # decoded (width, height)
    context: np.ndarray | None = None
    boxes: list = field(default_factory=list)  # per person: pixel box or None
    bodies: list = field(default_factory=list)
    crops: list = field(default_factory=list)  # per person: PIL crop for the captioner, or None
    file_hash: str = ""


def decode_record(job: tuple[Record, list[Person], Path, int]) -> Decoded:
    """Decode one image once and cut every candidate person out of it; ``crop_side`` > 0 keeps captioner crops."""
    record, persons, images, crop_side = job
    path = images / record.folder / record.filename
    out = Decoded(record, persons)
    try:
        img = prep_io.load_rgb(path)
    except prep_io.ImageReadError:
        out.error = "unreadable_image" if path.is_file() else "missing_image"
        return out
    h, w = img.shape[:2]
    out.size = (w, h)
    out.context = prep_io.resize_rgb(img, CONTEXT_SIZE)
    if crop_side:
        out.file_hash = prep_io.sha256_prefix(path, 32)
    for p in persons:
        box = emotic.pixel_box(p.bbox, w, h)
        out.boxes.append(box)
        if box is None:
            out.bodies.append(None)
            out.crops.append(None)
            continue
        x1, y1, x2, y2 = box
        crop = np.ascontiguousarray(img[y1:y2, x1:x2])  # PIL copies a strided view ~50x slower
        out.bodies.append(prep_io.resize_rgb(crop, BODY_SIZE))
        if crop_side:
            small = Image.fromarray(crop)
            small.thumbnail((crop_side, crop_side), Image.BILINEAR)  # bounded memory in flight
            out.crops.append(small)
        else:
            out.crops.append(None)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Streaming arrays
# ---------------------------------------------------------------------------------------------------------------

# Per array of a split: the shape of one row and its dtype.
ROW_FORMATS = {"context": ((CONTEXT_SIZE, CONTEXT_SIZE, 3), np.uint8), "body": ((BODY_SIZE, BODY_SIZE, 3), np.uint8),
               "cat": ((len(CATEGORIES),), np.float32), "cont": ((3,), np.float32)}


def arrays_bytes(n_rows: int) -> int:
    """Disk bytes of one split's four arrays holding ``n_rows`` persons."""
    return sum(prep_io.npy_bytes((n_rows,) + shape, dtype) for shape, dtype in ROW_FORMATS.values())


class SplitWriter:
    """The four arrays of one split, streamed row by row (``prep_io.RowWriter`` keeps memory flat)."""

    def __init__(self, stage: Path, split: str, capacity: int):
        self.writers = {k: prep_io.RowWriter(stage / f"{split}_{k}_arr.npy", (capacity,) + shape, dtype)
                        for k, (shape, dtype) in ROW_FORMATS.items()}
        self.n = 0

    def add(self, context: np.ndarray, body: np.ndarray, person: Person) -> int:
        w = self.writers
        w["context"].append(context)
        w["body"].append(body)
        w["cat"].append(person.multi_hot())
        w["cont"].append(np.asarray(person.vad, dtype=np.float32))
        self.n += 1
        return self.n - 1

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


# ---------------------------------------------------------------------------------------------------------------
# One split
# ---------------------------------------------------------------------------------------------------------------

def prepare_split(split: str, records: list[Record], images: Path, stage: Path, workers: int,
                  describer: "Describer", keep_unlabelled: bool = False) -> dict:
    skipped = Counter({r: 0 for r in SKIP_REASONS})
    jobs, capacity = [], 0
    for rec in records:
        keep = []
        for p in rec.persons:
            reason = p.label_skip_reason(keep_unlabelled)
            if reason:
                skipped[reason] += 1
            else:
                keep.append(p)
        if keep:  # a record with no usable person is never decoded
            jobs.append((rec, keep, images, describer.crop_side))
            capacity += len(keep)

    writer = SplitWriter(stage, split, capacity)
    rows, used_images, size_mismatch, unlabelled_kept = [], 0, 0, 0
    for dec in prep_io.parallel_map(decode_record, jobs, workers=workers, desc=f"{split} images", total=len(jobs)):
        if dec.error:
            skipped[dec.error] += len(dec.persons)
            continue
        rec, (w, h) = dec.record, dec.size
        size_mismatch += rec.annotated_size is not None and rec.annotated_size != (w, h)
        kept_here = 0
        for p, box, body, crop in zip(dec.persons, dec.boxes, dec.bodies, dec.crops):
            if box is None:
                skipped["empty_box"] += 1
                continue
            index = writer.add(dec.context, body, p)
            kept_here += 1
            unlabelled_kept += not p.categories
            row = {"index": index, "record": rec.index, "person": p.person, "folder": rec.folder,
                   "filename": rec.filename, "image_width": w, "image_height": h,
                   "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3],
                   "categories": ";".join(p.categories), "valence": p.vad[0], "arousal": p.vad[1],
                   "dominance": p.vad[2], "gender": p.gender, "age": p.age, "description": None,
                   **emotic.published_csv_fields(index, rec, p, box, w, h)}
            rows.append(row)
            describer.add(split, row, rec, p, box, (w, h), crop, dec.file_hash)
        used_images += kept_here > 0
    describer.finish(split)
    writer.close()
    write_csv(stage / f"{split}.csv", rows)
    n_people = sum(len(r.persons) for r in records)
    assert len(rows) + sum(skipped.values()) == n_people  # every annotated person is kept or counted once
    return {"persons": len(rows), "images": used_images, "records": len(records), "persons_annotated": n_people,
            "skipped": dict(skipped), "unlabelled_kept": unlabelled_kept, "annotated_size_mismatch": size_mismatch}


def write_csv(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    store.atomic_write(path, pd.DataFrame(rows, columns=list(CSV_COLUMNS)).to_csv(index=False, lineterminator="\n"))


# ---------------------------------------------------------------------------------------------------------------
# Descriptions
# ---------------------------------------------------------------------------------------------------------------

class Describer:
    """Fills each row's ``description`` from the chosen source (README, 'Real data')."""

    def __init__(self, source: str, file: Path | None = None, captioner: str | None = None,
                 caption_cache: Path | None = None, missing: str = "error"):
        if source not in DESCRIPTION_SOURCES:
            raise PrepError(f"unknown description source {source!r} (expected {', '.join(DESCRIPTION_SOURCES)})")
        self.source, self.missing_policy = source, missing
        self.file = self.captioner = None
        self.fallbacks = 0
        self.missing: list[str] = []
        self._pending: dict[str, list[dict]] = {}
        self._pending_crops: dict = {}
        if source == "file":
            if file is None:
                raise PrepError("--descriptions file needs --descriptions-file CSV")
            self.file = emotic.DescriptionFile(file)
        if source == "captioner":
            self.captioner = emotic.Captioner(captioner or "Salesforce/blip-image-captioning-base",
                                              cache=caption_cache)
        self.crop_side = self.captioner.crop_side if self.captioner else 0

    def add(self, split, row, rec, person, box, size, crop, file_hash) -> None:
        if self.source == "metadata":
            row["description"] = emotic.metadata_description(person, rec, box, *size)
        elif self.source == "file":
            text = self.file.lookup(split, row["index"], rec, person, box)
            if text is None and self.missing_policy == "metadata":
                text = emotic.metadata_description(person, rec, box, *size)
                self.fallbacks += 1
            elif text is None:
                self.missing.append(f"{split} index {row['index']} ({rec.folder}/{rec.filename} "
                                    f"box {person.bbox})")
            row["description"] = text
        else:
            key = f"{file_hash}:{','.join(map(str, box))}"
            text = self.captioner.cached(key)
            if text is not None:
                row["description"] = text
                return
            self._pending.setdefault(key, []).append(row)
            self._pending_crops[key] = crop
            if len(self._pending_crops) >= self.captioner.batch_size:
                self._flush()

    def _flush(self) -> None:
        for key, text in self.captioner.caption(self._pending_crops).items():
            for row in self._pending.pop(key):
                row["description"] = text
        self._pending_crops = {}

    def finish(self, split: str) -> None:
        if self.captioner:
            self._flush()
        if self.missing:
            raise PrepError(f"{self.file.path}: no description for {len(self.missing)} kept person(s) of split "
                            f"{split!r}, e.g. {'; '.join(self.missing[:3])}. Add rows keyed by split,index or "
                            f"folder,filename,x1,y1,x2,y2, or pass --missing-descriptions metadata")

    def manifest(self) -> dict:
        info = {"source": self.source}
        if self.file:
            info.update(file=str(self.file.path), file_sha256=prep_io.sha256_prefix(self.file.path, 16),
                        bbox_tolerance_px=self.file.tolerance, missing_policy=self.missing_policy,
                        metadata_fallbacks=self.fallbacks)
        if self.captioner:
            c = self.captioner
            info.update(model=c.name, fingerprint=c.fingerprint, unit="person box crop", cache=str(c.cache.path),
                        cache_hits=c.hits, captioned=c.computed)
        return info


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="mat2py.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Skipped persons (counted in manifest.json): " + ", ".join(SKIP_REASONS))
    ap.add_argument("--data-dir", "--data_dir", dest="data_dir", type=Path,
                    help="Emotic root holding Annotations/Annotations.mat and emotic/<folder>/<image>")
    ap.add_argument("--annotations", type=Path, help="Annotations.mat (default DATA_DIR/Annotations/Annotations.mat)")
    ap.add_argument("--images", type=Path, help="image root that record folders are relative to "
                                                "(default DATA_DIR/emotic)")
    ap.add_argument("--out", type=Path, required=True, help="output folder (created; replaced file by file on success)")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to prepare")
    ap.add_argument("--descriptions", choices=DESCRIPTION_SOURCES, default="metadata",
                    help="text source: metadata sentence (offline, default), a user CSV, or an image captioner")
    ap.add_argument("--descriptions-file", "--descriptions_file", type=Path,
                    help="CSV for --descriptions file: columns description + split,index or "
                         "folder,filename,x1,y1,x2,y2")
    ap.add_argument("--missing-descriptions", choices=("error", "metadata"), default="error",
                    help="with --descriptions file: stop on a kept person the CSV does not describe (default), "
                         "or use the metadata sentence and count it in the manifest")
    ap.add_argument("--captioner", default="Salesforce/blip-image-captioning-base",
                    help="transformers image-to-text model: hub name or local folder")
    ap.add_argument("--caption-cache", type=Path, help="SQLite caption cache (default $MMER_CACHE/captions.sqlite)")
    ap.add_argument("--keep-unlabelled", "--keep_unlabelled", dest="keep_unlabelled", action="store_true",
                    help="keep persons without any category as all-zero rows of {split}_cat_arr.npy (as the "
                         "Tandon-A/emotic preparation does) instead of skipping them under no_category")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="image decoding threads")
    args = ap.parse_args(argv)
    if args.data_dir is None and (args.annotations is None or args.images is None):
        ap.error("give --data-dir, or both --annotations and --images")
    args.annotations = args.annotations or args.data_dir / "Annotations" / "Annotations.mat"
    args.images = args.images or args.data_dir / "emotic"
    return args


def check_image_root(images: Path) -> None:
    if not images.is_dir():
        raise PrepError(f"{images}: image folder not found (expected DATA_DIR/emotic/<folder>/<image>; "
                        f"pass --images)")
    try:
        next(os.scandir(images), None)
    except OSError as e:
        raise PrepError(f"{images}: image folder cannot be read ({e.strerror})") from e


def prepare(args: argparse.Namespace) -> dict:
    """Run the whole preparation; returns the manifest. Raises PrepError for bad input."""
    annotations = emotic.load_annotations(args.annotations, args.splits)
    check_image_root(args.images)
    describer = Describer(args.descriptions, args.descriptions_file, args.captioner, args.caption_cache,
                          args.missing_descriptions)
    manifest = {"tool": "mat2py", "version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "source": {"annotations": str(args.annotations.resolve()),
                           "annotations_sha256": prep_io.sha256_prefix(args.annotations, 16),
                           "images": str(args.images.resolve())},
                "image_size": {"context": CONTEXT_SIZE, "body": BODY_SIZE},
                "categories": list(CATEGORIES), "skip_reasons_order": list(SKIP_REASONS),
                "keep_unlabelled": args.keep_unlabelled, "splits": {}}
    # Upper bound known before the first image: every annotated person gets a row.
    need = sum(arrays_bytes(sum(len(rec.persons) for rec in annotations[split])) for split in args.splits)
    with prep_io.staged_output(args.out, need_bytes=need) as stage:
        for split in args.splits:
            manifest["splits"][split] = prepare_split(split, annotations[split], args.images, stage,
                                                      max(1, args.workers), describer, args.keep_unlabelled)
        candidates = sum(s["persons"] + s["skipped"]["missing_image"] + s["skipped"]["unreadable_image"]
                         for s in manifest["splits"].values())
        if candidates and not any(s["images"] for s in manifest["splits"].values()):
            raise PrepError(f"{args.images}: not one annotated image could be read there; is --images right?")
        manifest["descriptions"] = describer.manifest()
        store.write_json(stage / "manifest.json", manifest)
    return manifest


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        manifest = prepare(args)
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, s in manifest["splits"].items():
        skips = ", ".join(f"{k} {v}" for k, v in s["skipped"].items() if v) or "none"
        kept = f"; {s['unlabelled_kept']} without a category kept as all-zero rows" if s["unlabelled_kept"] else ""
        print(f"{split}: {s['persons']} persons from {s['images']} images (skipped: {skips}){kept}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
