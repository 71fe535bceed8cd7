#!/usr/bin/env python
"""Emotions of the persons in one's own photo, by a model the notebooks trained.

    python scripts/predict.py photo.jpg                                    # the whole photo is the person
    python scripts/predict.py photo.jpg --box 40,10,200,380 --box 220,30,400,390 --model "fusion (all)"
    python scripts/predict.py photo.jpg --text "A woman laughs with friends at a party."

The checkpoint is the one notebook 01 (or 03, for the joint models) saved under ``<MMER_OUTPUT>/checkpoints/``
for the current settings (``MMER_PROFILE``, ``MMER_<KNOB>``, as in the notebooks) and the prepared Emotic data it
was trained on (their validation split gives the thresholds). The photo is turned upright by its EXIF orientation;
each person is cropped as ``mat2py.py`` crops (scene squashed to 224, body box to 128) and, unless ``--text`` is
given, described by the source the model was trained with (the metadata sentence, or the vision-language model of
``scripts/describe.py``). Printed: the top categories with their probabilities, each category's threshold (highest
validation F1; ``*`` marks those above it) and valence / arousal / dominance on Emotic's 1..10 scale. See
docs/descriptions.md.

The checkpoint lookup, the thresholds and the description of a new person live here too (the tests import this
file as the module ``predict``); thresholds are, per category, the score threshold that maximises F1 on the
validation split over the model's own validation scores (of equal F1, the highest; NaN without a positive).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit

from utils import config, emotic, encoders, paths, store
from utils import device as devices
from utils import experiments as X
from utils.images import ImageReadError, load_rgb, pixel_box
from utils.labels import CATEGORIES, CONTINUOUS
from utils.training import predict


class PredictError(RuntimeError):
    """A bad photo, box, checkpoint or description source; the message names the file and the problem."""


@dataclass
class Loaded:
    label: str
    model: object
    checkpoint: Path
    data: X.Data
    thresholds: np.ndarray  # (26,) probability thresholds, NaN where validation has no positive


def _records(label: str) -> list[tuple[Path, dict]]:
    folder = paths.output_dir() / "checkpoints"
    out = []
    for record in sorted(folder.glob(f"emotic_{X.slug(label)}_*.json")):
        ckpt = record.with_suffix(".pt")
        try:
            key = json.loads(record.read_text())["key"]
        except (OSError, ValueError, KeyError) as e:
            raise PredictError(f"{record}: unreadable checkpoint record ({e})") from e
        # the headline model of the notebook: clean data, frozen encoders, the configured alignment weight
        if ckpt.is_file() and key.get("label") == label and key.get("tag") == "clean" and "finetune" not in key \
                and key.get("align_weight") is None:
            out.append((ckpt, key))
    return out


_NOT_SETTINGS = {"experiment", "label", "tag", "encoders", "align_weight"}


def find_checkpoint(label: str, cfg: dict, data: X.Data) -> Path:
    """The checkpoint of ``label`` trained on these data with these settings; the errors say what differs."""
    if label not in emotic.MODELS:
        raise PredictError(f"unknown model {label!r}: expected one of {', '.join(map(repr, emotic.MODELS))}")
    found = _records(label)
    if not found:
        raise PredictError(f"{paths.output_dir() / 'checkpoints'}: no checkpoint of {label!r}; run notebook 01 "
                           f"(or 03 for the joint models) with the same settings first")
    same_encoders = [(c, k) for c, k in found if k.get("encoders") == data.encoders]
    if not same_encoders:
        ckpt, key = found[-1]
        raise PredictError(f"{ckpt}: trained with other encoders ({key.get('encoders')}) than the current settings "
                           f"load ({data.encoders}); set MMER_IMAGE_ENCODER / MMER_TEXT_ENCODER / MMER_ENCODERS as "
                           f"for that training")
    want = {"seed": cfg["seed"], "train": data.digest["train"], "val": data.digest["val"], "code": X.training_code()}
    fits, differ = [], {}
    for ckpt, key in same_encoders:
        # every setting the record holds (the recipe's knobs) must be the current one; align_weight None means
        # "the configured value", which the record keeps under "align"
        differ = {k: (v, want[k] if k in want else cfg[k]) for k, v in key.items()
                  if (k in want and v != want[k]) or (k not in want and k not in _NOT_SETTINGS and k in cfg
                                                      and v != cfg[k])}
        if not differ:
            fits.append(ckpt)
    if not fits:
        raise PredictError(f"{same_encoders[-1][0]}: trained with other data or settings (checkpoint, now: {differ}); "
                           f"use the settings and prepared data it was trained with, or retrain")
    return max(fits, key=lambda p: p.stat().st_mtime)


def f1_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per category, the probability threshold (predict at >=) of highest F1 on (``probabilities``, ``labels``),
    the highest such threshold on ties; NaN when the category has no positive.

    F1 is computed from counts, 2 TP / (2 TP + FP + FN), rather than from ``precision_recall_curve``'s precision
    and recall, whose rounding can split exact ties and so pick another threshold on another machine.
    """
    out = np.full(labels.shape[1], np.nan)
    for j in range(labels.shape[1]):
        y = np.asarray(labels[:, j]) > 0
        if not y.any():
            continue
        order = np.argsort(-probabilities[:, j], kind="stable")
        p, hit = probabilities[order, j], y[order]
        last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # the last row of each distinct score
        tp = np.cumsum(hit)[last]
        fp = (last + 1) - tp
        f1 = 2 * tp / (2 * tp + fp + (y.sum() - tp))
        best = np.flatnonzero(f1 == f1.max())
        out[j] = p[last[best[0]]]  # scores descend, so the first best is the highest threshold
    return out


def load(label: str, cfg: dict, device=None) -> Loaded:
    """Data (for the encoders, the validation split and the training digests), the checkpoint and its thresholds."""
    data = emotic.data(cfg)
    ckpt = find_checkpoint(label, cfg, data)
    torch.manual_seed(cfg["seed"])
    model = store.load_state(ckpt, emotic.model(label, cfg, data.dims)).eval()
    if device is not None:
        model.to(device)
    val = data.features["val"]
    scores = predict(model, val, keys=("scores",))["scores"]
    return Loaded(label, model, ckpt, data, f1_thresholds(expit(scores), val["cat"]))


def description_source(data: X.Data) -> dict:
    """How the training descriptions were written (``manifest.json`` of the artefacts, and for a descriptions
    file written by ``scripts/describe.py`` its ``.json`` record)."""
    manifest = data.root / "manifest.json"
    try:
        info = json.loads(manifest.read_text())["descriptions"]
    except (OSError, ValueError, KeyError) as e:
        raise PredictError(f"{manifest}: cannot tell how the descriptions were written ({e}); pass --text") from e
    if info["source"] == "file":
        record = Path(info["file"]).with_suffix(".json")
        try:
            vlm_info = json.loads(record.read_text())
        except (OSError, ValueError):
            vlm_info = {}
        if vlm_info.get("source") == "vlm":
            return vlm_info
    return info


def describe(image: np.ndarray, boxes: list, source: dict, device) -> tuple[list[str], str]:
    """(one description per person, how they were made) with the training source; a box is a clipped pixel box
    or None (the whole photo). The model, if any, loads once for all persons."""
    from PIL import Image

    from utils.prep import emotic as prep  # the describers of the prep scripts, replayed for a new photo

    h, w = image.shape[:2]
    boxes = [box or (0, 0, w, h) for box in boxes]
    kind = source.get("source")
    if kind == "metadata":
        record = prep.Record("", 0, "", "", (w, h), "unknown", ())
        return [prep.metadata_description(prep.Person(0, 0, tuple(map(float, box)), (), (np.nan,) * 3, "", ""),
                                            record, box, w, h) for box in boxes], \
            "metadata sentence (no gender or age known)"
    if kind == "vlm":
        from utils.prep import vlm

        model = vlm.VLM(source["model"], device, source["prompt"], source["max_new_tokens"])
        texts = model.describe([Image.fromarray(image)] * len(boxes), boxes)
        note = f"{source['model']}, {model.settings['dtype']}"
        if model.settings["dtype"] != source.get("dtype"):
            note += f"; the training descriptions were written in {source.get('dtype')}"
        return texts, note
    if kind == "captioner":
        captioner = prep.Captioner(source["model"])
        crops = {}
        for i, (x1, y1, x2, y2) in enumerate(boxes):  # as mat2py.py hands crops to the captioner
            crop = Image.fromarray(np.ascontiguousarray(image[y1:y2, x1:x2]))
            crop.thumbnail((captioner.crop_side, captioner.crop_side), Image.BILINEAR)
            crops[str(i)] = crop
        texts = captioner.caption(crops)
        return [texts[str(i)] for i in range(len(boxes))], f"captioner {captioner.name}"
    raise PredictError(f"the model was trained on descriptions from {source.get('file', kind)!r}, which cannot be "
                       f"written for a new photo; pass --text \"...\"")


def run(loaded: Loaded, image: np.ndarray, box, text: str, image_encoder, text_encoder) -> dict:
    """Probabilities of the 26 categories (canonical order), above-threshold flags and VAD for one person."""
    top, vad = emotic.top_emotions(image, text, model=loaded.model, image_encoder=image_encoder,
                                   text_encoder=text_encoder, box=box, k=len(CATEGORIES), with_vad=True)
    logits = dict(top)
    prob = expit(np.array([logits[c] for c in CATEGORIES]))
    return {"probabilities": prob, "above": prob >= loaded.thresholds, "vad": vad}


# ---- one person of one photo, as mat2py.py crops and the notebooks' features are computed
def _box(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: a box is four numbers x1,y1,x2,y2 (pixels)")
    return values


def read_photo(path: Path):
    """The photo as (H, W, 3) uint8 RGB, turned upright by its EXIF orientation (as a viewer shows it, so boxes
    read off a viewer fit); a file PIL cannot read raises ``ImageReadError`` naming it."""
    from PIL import Image, ImageOps

    image = load_rgb(path)  # every decoding error, with the file named
    with Image.open(path) as im:
        orientation = im.getexif().get(0x0112, 1)
        if orientation in (1, None):
            return image
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8).copy()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/predict.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("photo", type=Path, help="any image file PIL reads")
    ap.add_argument("--box", type=_box, action="append", default=[], metavar="X1,Y1,X2,Y2",
                    help="a person's box in pixels (repeat for several persons; default: the whole photo); write "
                         "--box=-5,10,80,200 when it starts with a minus sign")
    ap.add_argument("--text", action="append", default=[],
                    help="the person's description (once for all boxes, or once per box); default: written by "
                         "the source the model was trained with")
    ap.add_argument("--model", default="fusion (all)", help="which trained model (a row label of notebook 01/03)")
    ap.add_argument("--top", type=int, default=5, help="categories printed per person (default 5)")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        image = read_photo(args.photo)
    except ImageReadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    h, w = image.shape[:2]
    boxes = []
    for box in args.box:
        clipped = pixel_box(box, w, h)
        if clipped is None:
            print(f"error: {args.photo}: box {','.join(f'{v:g}' for v in box)} lies outside the {w}x{h} photo "
                  f"(or is empty)", file=sys.stderr)
            return 2
        boxes.append(clipped)
    if len(args.text) > 1 and len(args.text) != max(1, len(boxes)):
        print(f"error: {len(args.text)} --text for {max(1, len(boxes))} person(s): give one, or one per box",
              file=sys.stderr)
        return 2
    device = devices.device()
    cfg = config.load("emotic")
    try:
        loaded = load(args.model, cfg, device)
        needs_text = "text" in getattr(loaded.model, "inputs", ("text",))
        source = description_source(loaded.data) if needs_text and not args.text else None
        image_encoder, text_encoder = loaded.data.image_encoder, loaded.data.text_encoder
        print(f"model {args.model!r} from {loaded.checkpoint} on {device}")
        print(f"thresholds: per category, the probability of highest F1 on the validation split "
              f"({len(loaded.data.splits['val'])} persons)")
        persons = boxes or [None]
        texts, how = [None] * len(persons), ""
        if needs_text and args.text:
            texts, how = [args.text[min(i, len(args.text) - 1)] for i in range(len(persons))], "given with --text"
        elif needs_text:
            texts, how = describe(image, persons, source, device)
        for i, (box, text) in enumerate(zip(persons, texts)):
            where = f"box {','.join(map(str, box))}" if box else f"no box given: the whole {w}x{h} photo is the person"
            out = run(loaded, image, box, text, image_encoder, text_encoder)
            print(f"\nperson {i + 1} ({where})")
            if text is not None:
                print(f"  description ({how}): {text}")
            order = sorted(range(len(CATEGORIES)), key=lambda j: -out["probabilities"][j])[:args.top]
            for j in order:
                t = loaded.thresholds[j]
                mark = "*" if out["above"][j] else " "
                print(f"  {mark} {CATEGORIES[j]:<16} {out['probabilities'][j]:.3f}   threshold "
                      + ("none (no validation positive)" if math.isnan(t) else f"{t:.3f}"))
            chosen = [CATEGORIES[j] for j in range(len(CATEGORIES)) if out["above"][j]]
            print(f"  above threshold: {', '.join(chosen) or 'none'}")
            print("  " + ", ".join(f"{k.lower()} {v:.2f}" for k, v in out["vad"].items()) + " (1..10)")
    except (PredictError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
