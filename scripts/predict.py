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
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


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
    import numpy as np
    from PIL import Image, ImageOps

    from utils.prep.io import load_rgb

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
    from utils import config
    from utils import device as devices
    from utils import prediction as P
    from utils.labels import CATEGORIES
    from utils.prep import emotic
    from utils.prep.io import ImageReadError

    try:
        image = read_photo(args.photo)
    except ImageReadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    h, w = image.shape[:2]
    boxes = []
    for box in args.box:
        clipped = emotic.pixel_box(box, w, h)
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
        loaded = P.load(args.model, cfg, device)
        needs_text = "text" in getattr(loaded.model, "inputs", ("text",))
        source = P.description_source(loaded.data) if needs_text and not args.text else None
        image_encoder, text_encoder = loaded.data.image_encoder, loaded.data.text_encoder
        print(f"model {args.model!r} from {loaded.checkpoint} on {device}")
        print(f"thresholds: per category, the probability of highest F1 on the validation split "
              f"({len(loaded.data.splits['val'])} persons)")
        persons = boxes or [None]
        texts, how = [None] * len(persons), ""
        if needs_text and args.text:
            texts, how = [args.text[min(i, len(args.text) - 1)] for i in range(len(persons))], "given with --text"
        elif needs_text:
            texts, how = P.describe(image, persons, source, device)
        for i, (box, text) in enumerate(zip(persons, texts)):
            where = f"box {','.join(map(str, box))}" if box else f"no box given: the whole {w}x{h} photo is the person"
            out = P.run(loaded, image, box, text, image_encoder, text_encoder)
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
    except (P.PredictError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
