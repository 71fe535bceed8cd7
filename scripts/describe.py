#!/usr/bin/env python
"""Describe every Emotic person with a vision-language model, into the CSV ``mat2py.py --descriptions file`` reads.

    python scripts/describe.py --data-dir /data/emotic --model llava-hf/llava-1.5-7b-hf --out vlm.csv     # one GPU
    torchrun --nproc_per_node 4 scripts/describe.py --data-dir /data/emotic --model ... --out vlm.csv     # 4 GPUs
    python mat2py.py --data-dir /data/emotic --out data/full/emotic --descriptions file --descriptions-file vlm.csv

Per person (the persons ``mat2py.py`` keeps: same parser, same label checks, same clipped box), the box is drawn in
red on the whole image and the model is asked which of the 26 categories suit the person in the red box
(``utils.prep.vlm.PROMPT``; ``--prompt`` / ``--prompt-file`` replace it). The CSV has one row per described person:
``split, record, person, folder, filename, x1, y1, x2, y2, description`` (box keys, so ``mat2py.py`` matches rows
whatever it skips), and a ``.json`` of the same name beside it (``vlm.json``) says which model, prompt and
settings wrote it (``scripts/predict.py`` reads it to describe a new photo the same way).

Persons are cut into shards of ``--shard-size`` consecutive persons; shard i goes to rank i % world (``torchrun``:
each rank on ``cuda:LOCAL_RANK``, or the CPU with gloo). Answers are cached per (image content, box) in a folder
named by the model, its weights, the prompt and the generation settings, appended one batch at a time; a killed
run, rerun, redoes only the batches it had not finished. Rank 0 merges. Any number of processes writes the same
file. See docs/descriptions.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from pathlib import Path

from PIL import Image
from torch.distributed.elastic.multiprocessing.errors import record

from utils import distributed as D
from utils import store
from utils.prep import emotic, io as prep_io, vlm
from utils.prep.emotic import SPLITS
from utils.paths import cache_dir
from utils.prep.io import PrepError

COLUMNS = ("split", "record", "person", "folder", "filename", "x1", "y1", "x2", "y2", "description")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/describe.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, help="Emotic root holding Annotations/Annotations.mat and emotic/")
    ap.add_argument("--annotations", type=Path, help="Annotations.mat (default DATA_DIR/Annotations/Annotations.mat)")
    ap.add_argument("--images", type=Path,
                    help="image root the record folders are relative to (default DATA_DIR/emotic)")
    ap.add_argument("--out", type=Path, required=True,
                    help="descriptions CSV to write (and its record: the same name with .json)")
    ap.add_argument("--model", required=True, help="image-text-to-text model: hub name or local folder")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    prompt = ap.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="question template; {categories} becomes the 26 names (default: "
                                         "utils.prep.vlm.PROMPT, Xenos et al. 2024's wording)")
    prompt.add_argument("--prompt-file", type=Path, help="read the question template from this UTF-8 file")
    ap.add_argument("--max-new-tokens", type=int, default=vlm.MAX_NEW_TOKENS, help="token limit of each answer")
    ap.add_argument("--batch-size", type=int, default=8, help="persons generated together")
    ap.add_argument("--shard-size", type=int, default=256, help="persons per shard (the unit spread over ranks)")
    ap.add_argument("--cache", type=Path, help="answer cache root (default $MMER_CACHE/vlm)")
    ap.add_argument("--keep-unlabelled", action="store_true",
                    help="also describe persons without a category (as mat2py.py --keep-unlabelled keeps them)")
    ap.add_argument("--limit", type=int, help="describe only the first N persons (trials, benchmarks)")
    ap.add_argument("--workers", type=int, default=4, help="threads hashing images during the merge")
    ap.add_argument("--timeout-hours", type=float, default=72.0, help="longest wait for the slowest rank")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.data_dir is None and (args.annotations is None or args.images is None):
        ap.error("give --data-dir, or both --annotations and --images")
    args.annotations = args.annotations or args.data_dir / "Annotations" / "Annotations.mat"
    args.images = args.images or args.data_dir / "emotic"
    for name in ("max_new_tokens", "batch_size", "shard_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.prompt_file is not None:
        try:
            args.prompt = args.prompt_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            ap.error(f"{args.prompt_file}: cannot read the prompt file ({e})")
    args.prompt = args.prompt or vlm.PROMPT
    if not args.prompt.strip():
        ap.error("the prompt is empty")
    return args


def persons(annotations: dict, splits, keep_unlabelled: bool) -> list[tuple[str, emotic.Record, emotic.Person]]:
    """The persons ``mat2py.py`` would keep on their labels alone, in its order (split, record, person)."""
    return [(split, rec, p) for split in splits for rec in annotations[split] for p in rec.persons
            if p.label_skip_reason(keep_unlabelled) is None]


def image_info(path: Path, digests: dict) -> tuple:
    """(content digest, (width, height)) of an image file from its bytes and header (no decoding), or (None, skip
    reason); remembered in ``digests``."""
    if path not in digests:
        try:
            with Image.open(path) as im:
                size = im.size
            digests[path] = (prep_io.sha256_prefix(path, 32), size)
        except FileNotFoundError:
            digests[path] = None, "missing_image"
        except Exception:  # PIL.UnidentifiedImageError, OSError, ...: the verdict mat2py reaches when decoding
            digests[path] = None, "unreadable_image"
    return digests[path]


def locate(images: Path, rec: emotic.Record, p: emotic.Person, digests: dict) -> tuple[str, tuple | None, str]:
    """(skip reason or "", clipped pixel box, cache key) of one person."""
    digest, size = image_info(images / rec.folder / rec.filename, digests)
    if digest is None:
        return size, None, ""
    box = emotic.pixel_box(p.bbox, *size)
    if box is None:
        return "empty_box", None, ""
    return "", box, vlm.person_key(digest, box)


def describe_shard(model: vlm.VLM, items: list, images: Path, cache_file: Path, known: dict, batch_size: int) -> int:
    """Generate the shard's uncached answers one batch at a time, each batch appended to ``cache_file`` once done.
    Returns how many persons were generated."""
    done, digests = 0, {}
    for start in range(0, len(items), batch_size):
        todo: dict[str, tuple] = {}  # key -> (image path, box); one answer per (image content, box)
        for split, rec, p in items[start:start + batch_size]:
            skip, box, key = locate(images, rec, p, digests)
            if not skip and key not in known:
                todo[key] = (images / rec.folder / rec.filename, box)
        pictures, boxes, keys, records = [], [], [], []
        for key, (path, box) in todo.items():
            try:
                pictures.append(Image.fromarray(prep_io.load_rgb(path)))
            except prep_io.ImageReadError:
                records.append({"key": key, "skip": "unreadable_image", "description": ""})
                continue
            boxes.append(box)
            keys.append(key)
        texts = model.describe(pictures, boxes)
        records += [{"key": k, "description": t} for k, t in zip(keys, texts)]
        vlm.append_cache(cache_file, records)
        known.update({r["key"]: r for r in records})
        done += len(keys)
    return done


def merge(items: list, images: Path, known: dict, workers: int) -> tuple[list[dict], Counter]:
    """The CSV rows of every described person, in item order, and the count of persons skipped per reason."""
    paths = list(dict.fromkeys(images / rec.folder / rec.filename for _, rec, _ in items))
    digests = dict(zip(paths, prep_io.parallel_map(lambda path: image_info(path, {}), paths, workers=workers,
                                                   desc="hashing images", total=len(paths))))
    rows, skipped, missing = [], Counter(), []
    for split, rec, p in items:
        skip, box, key = locate(images, rec, p, digests)
        entry = known.get(key) if not skip else None
        if not skip and entry is None:
            missing.append(f"{split} record {rec.index} person {p.person}")
            continue
        skip = skip or entry.get("skip", "")
        if skip:
            skipped[skip] += 1
            continue
        rows.append({"split": split, "record": rec.index, "person": p.person, "folder": rec.folder,
                     "filename": rec.filename, "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3],
                     "description": entry["description"]})
    if missing:
        raise D.ShardError(f"{len(missing)} person(s) have no answer in the cache after every rank finished, e.g. "
                           f"{'; '.join(missing[:3])}: did an image change during the run? Rerun to describe them")
    return rows, skipped


def write_outputs(out: Path, rows: list[dict], info: dict) -> None:
    """The CSV and its ``.json`` record, each written atomically."""
    import pandas as pd

    store.atomic_write(out, pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(index=False, lineterminator="\n"))
    store.write_json(out.with_suffix(".json"), info)


def run(args, launch: D.Launch) -> dict | None:
    annotations = emotic.load_annotations(args.annotations, args.splits)
    if not args.images.is_dir():
        raise PrepError(f"{args.images}: image folder not found (expected DATA_DIR/emotic/<folder>/<image>; "
                        f"pass --images)")
    items = persons(annotations, args.splits, args.keep_unlabelled)[:args.limit]
    model = vlm.VLM(args.model, launch.device, args.prompt, args.max_new_tokens)
    listing = hashlib.sha256(json.dumps([prep_io.sha256_prefix(args.annotations, 32), args.splits,
                                         args.keep_unlabelled, args.limit, args.shard_size]).encode()).hexdigest()[:12]
    D.same_on_every_rank(launch, f"{model.fingerprint} {listing}", "the model, prompt, settings and persons")
    if args.cache is None:
        args.cache = cache_dir() / "vlm"
    folder = args.cache / model.fingerprint
    if launch.main:
        folder.mkdir(parents=True, exist_ok=True)
        store.write_json(folder / "settings.json", model.settings)
        launch.log(f"{len(items)} persons in shards of {args.shard_size}, {launch.world} process(es), model "
                   f"{args.model} on {launch.device}, cache {folder}")
    known = vlm.read_cache(folder)
    t, generated = time.perf_counter(), 0
    bounds = D.shard_bounds(len(items), args.shard_size)
    mine = D.shards_of(launch, len(bounds))
    for i in mine:
        a, b = bounds[i]
        generated += describe_shard(model, items[a:b], args.images, folder / f"{listing}-shard-{i:05d}.jsonl",
                                    known, args.batch_size)
    launch.log(f"shards {mine}: generated {generated} answer(s) in {time.perf_counter() - t:.1f} s")
    D.barrier(launch)
    if not launch.main:
        return None
    known = vlm.read_cache(folder)
    rows, skipped = merge(items, args.images, known, args.workers)
    info = {"tool": "describe", "source": "vlm", **model.settings, "fingerprint": model.fingerprint,
            "cache": str(folder), "splits": args.splits, "keep_unlabelled": args.keep_unlabelled,
            "annotations": str(args.annotations.resolve()), "persons": len(rows), "skipped": dict(skipped),
            "empty_answers": sum(not r["description"] for r in rows)}
    write_outputs(args.out, rows, info)
    return info


@record  # torchrun's summary then shows the failing rank's exception
def main(argv=None) -> int:
    args = parse_args(argv)
    launch = D.launch(args.timeout_hours)
    try:
        info = run(args, launch)
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        D.finish(launch)
    if info is not None:
        skips = ", ".join(f"{k} {v}" for k, v in info["skipped"].items()) or "none"
        print(f"wrote {args.out}: {info['persons']} persons described (skipped: {skips})")
        if info["empty_answers"]:
            print(f"note: {info['empty_answers']} answer(s) are empty; mat2py.py counts those persons as not "
                  f"described (see its --missing-descriptions)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
