"""Synthetic Emotic written as the real download: ``Annotations.mat`` in the PAMI nesting, JPEGs, descriptions.

``make_emotic`` samples the latent scenes (``scenes``), renders and stores each image, writes the per-person
descriptions a captioner would give (:func:`describe`) and the MATLAB struct arrays, and returns the ground truth
a correct parser must reproduce.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import scipy.io

from utils.labels import CATEGORIES

from .cues import CUES, NEUTRAL_CLOTHES, NEUTRAL_SCENES, P_SEEN, SUBJECTS
from .scenes import (EMOTIC_FOLDERS, Person, Record, encode_image, plant_bad_records, render, sample_records,
                     split_budget)
from .sizes import check_size

MAT_HEADER = b"MATLAB 5.0 MAT-file, synthetic Emotic fixture written by utils.synthetic"
SKIP_REASONS = ("nan_continuous", "no_category", "empty_box", "missing_image")  # what the planted records break


# ----------------------------------------------------------------------------------------------------------
# The stand-in captioner
# ----------------------------------------------------------------------------------------------------------
def describe(person: Person, rec: Record, rng: np.random.Generator) -> str:
    """A captioner-like sentence about the scene, never naming the emotion categories.

    Like a captioner, it mentions what the person is doing (each category's activity with chance ``p_txt``,
    high for categories that are not drawn) and, now and then, what is visible in the picture (the drawn
    clothing, posture, weather or objects, distractors included). One in five people gets an unrelated
    activity as noise.
    """
    acts = [str(rng.choice(CUES[c].phrases)) for c in person.categories if rng.random() < CUES[c].p_txt]
    if rng.random() < 0.2:
        acts.append(str(rng.choice(CUES[str(rng.choice(CATEGORIES))].phrases)))
    seen = [str(rng.choice(CUES[c].seen)) for c in person.body_cues if rng.random() < P_SEEN]
    if not person.body_cues and rng.random() < 0.3:
        seen.append(f"in a {rng.choice(NEUTRAL_CLOTHES)} top")
    acts, seen = list(dict.fromkeys(acts))[:2], list(dict.fromkeys(seen))[:2]
    # "in a striped shirt" / "with a red face" qualify the subject; "crouching low" is something they do
    look = [s for s in seen if s.startswith(("in ", "with "))]
    acts = [s for s in seen if s not in look] + acts
    subject = " ".join([str(rng.choice(SUBJECTS[(person.gender, person.age)]))] + look)
    # the place: what the background shows when the captioner notices it, else a plain setting
    shown = [str(rng.choice(CUES[c].seen)) for c in rec.scene_cues if rng.random() < P_SEEN]
    place = " ".join(shown[:2]) if shown else str(rng.choice(NEUTRAL_SCENES))
    if len(rec.persons) > 1 and rng.random() < 0.4:
        place = f"{place} {rng.choice(['next to another person', 'with other people'])}"
    doing = " and ".join(acts)
    style = rng.integers(3)
    if style == 0 or not place.strip():
        text = f"{subject} {doing} {place}"
    elif style == 1:
        text = f"{place}, {subject} {doing}"
    else:
        text = f"there is {subject} {doing} {place}"
    return re.sub(r"\s+", " ", text).strip(" ,")


# ----------------------------------------------------------------------------------------------------------
# The .mat in the PAMI nesting
# ----------------------------------------------------------------------------------------------------------
def _struct_array(rows: list[dict]) -> np.ndarray:
    """A 1xN MATLAB struct array (fields in the order of the first row) for ``scipy.io.savemat``."""
    names = list(rows[0])
    out = np.empty((1, len(rows)), dtype=[(n, object) for n in names])
    for i, row in enumerate(rows):
        for n in names:
            out[0, i][n] = row[n]
    return out


def _cell(strings: list[str]) -> np.ndarray:
    """A 1xK cell array of char (1x0 when empty)."""
    cell = np.empty((1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        cell[0, i] = s
    return cell


def _continuous(vad) -> np.ndarray:
    return _struct_array([{"valence": float(vad[0]), "arousal": float(vad[1]), "dominance": float(vad[2])}])


def _annotators(person: Person, rng: np.random.Generator) -> tuple[list[list[str]], list[tuple]]:
    """Per-annotator labels whose union is the combined set, and VAD ratings around the combined value."""
    n = int(rng.integers(2, 5))
    cats = person.categories
    sets = [[c for c in cats if rng.random() < 0.6] for _ in range(n)]
    for c in cats:  # every combined category was chosen by at least one annotator
        if not any(c in s for s in sets):
            sets[int(rng.integers(n))].append(c)
    sets = [sorted(s, key=CATEGORIES.index) for s in sets]
    vads = [tuple(float(np.clip(v + rng.integers(-1, 2), 1, 10)) if not np.isnan(v) else v for v in person.vad)
            for _ in range(n)]
    return sets, vads


def _person_struct(person: Person, split: str, rng: np.random.Generator) -> dict:
    box = np.array([person.box], dtype=np.float64)  # 1x4 double
    if split == "train":
        return {"body_bbox": box,
                "annotations_categories": _struct_array([{"categories": _cell(person.categories)}]),
                "annotations_continuous": _continuous(person.vad),
                "gender": person.gender, "age": person.age}
    sets, vads = _annotators(person, rng)
    return {"body_bbox": box,
            "annotations_categories": _struct_array([{"categories": _cell(s)} for s in sets]),
            "combined_categories": _cell(person.categories),
            "annotations_continuous": _struct_array(
                [{"valence": v[0], "arousal": v[1], "dominance": v[2]} for v in vads]),
            "combined_continuous": _continuous(person.vad),
            "gender": person.gender, "age": person.age}


def _record_struct(rec: Record, rng: np.random.Generator) -> dict:
    db = EMOTIC_FOLDERS[rec.folder][0]
    # COCO records carry their COCO ids; the other collections leave ``info`` empty
    info = (_struct_array([{"image_id": float(rec.image_id), "annotations_id": _cell([])}]) if db == "mscoco"
            else np.zeros((0, 0)))
    return {"filename": rec.filename, "folder": rec.folder,
            "image_size": _struct_array([{"n_col": float(rec.width), "n_row": float(rec.height)}]),
            "original_database": _struct_array([{"name": db, "info": info}]),
            "person": _struct_array([_person_struct(p, rec.split, rng) for p in rec.persons])}


def _savemat_bytes(mdict: dict) -> bytes:
    """``savemat`` output with a fixed header text (scipy stamps the time there), so equal seeds give equal bytes."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, mdict, do_compression=True, oned_as="row")
    data = bytearray(buf.getvalue())
    data[:116] = MAT_HEADER.ljust(116, b" ")
    return bytes(data)


def _clip_box(box, w, h) -> tuple[float, float, float, float]:
    """The annotated box clipped to the image, kept as floats: the ground truth reported with each person."""
    x1, y1, x2, y2 = box
    return max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)


def make_emotic(root, size: str = "smoke", seed: int = 0, n_persons: int | None = None,
                split_persons: dict[str, int] | None = None) -> dict:
    """Write a synthetic Emotic (PAMI layout) under ``root`` and return what was written.

    ``root/Annotations/Annotations.mat``, images under ``root/emotic/<folder>/<filename>`` and
    ``root/descriptions.csv`` (one row per person: folder, filename, the box exactly as in the .mat, description).
    ``n_persons`` overrides the size's person count (e.g. for benchmarks), shared 60/15/25 % over the splits;
    ``split_persons`` (``{"train": .., "val": .., "test": ..}``) fixes each split's count exactly instead, e.g. the
    real 23,266 / 3,315 / 7,203. The returned dict lists per split the records, persons, the persons a correct
    parser keeps and skips (by reason), the planted bad records, the image files per mode and, per person, the
    ground truth (categories, VAD, clipped box).
    """
    counts = check_size(size)
    if split_persons is not None:
        if n_persons is not None and int(n_persons) != sum(split_persons.values()):
            raise ValueError(f"n_persons={n_persons} differs from the sum of split_persons={split_persons!r}")
        n = sum(split_budget(0, split_persons).values())
    else:
        n = int(n_persons or counts["emotic_persons"])
    if n < 30:
        raise ValueError(f"n_persons={n}: need at least 30 to hold the planted bad records in every split")
    root = Path(root)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    splits = sample_records(rng, n, split_persons)
    planted = plant_bad_records(splits)
    bad = {(p["split"], p["record"], p["person"]): p["reason"] for p in planted if p["skipped"]}

    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for folder in EMOTIC_FOLDERS:
        (root / "emotic" / folder).mkdir(parents=True, exist_ok=True)
    mdict, rows, truth = {}, [], []
    modes: dict[str, list[str]] = {"RGB": [], "L": [], "CMYK": [], "PNG": []}
    summary = {}
    for split, records in splits.items():
        structs = []
        skipped = dict.fromkeys(SKIP_REASONS, 0)
        for rec in records:
            rel = f"{rec.folder}/{rec.filename}"
            img = render(rec, rng)
            if rec.write_image:
                (root / "emotic" / rel).write_bytes(encode_image(img, rec.mode, rng))
                modes[rec.mode].append(rel)
            structs.append(_record_struct(rec, rng))
            for pi, person in enumerate(rec.persons):
                description = describe(person, rec, rng)
                x1, y1, x2, y2 = person.box
                rows.append([rec.folder, rec.filename, x1, y1, x2, y2, description])
                reason = bad.get((split, rec.index, pi))
                if reason:
                    skipped[reason] += 1
                truth.append({"split": split, "record": rec.index, "person": pi, "folder": rec.folder,
                              "filename": rec.filename, "width": rec.width, "height": rec.height,
                              "box": list(person.box),
                              "box_clipped": list(_clip_box(person.box, rec.width, rec.height)),
                              "categories": list(person.categories), "vad": list(person.vad),
                              "gender": person.gender, "age": person.age, "description": description,
                              "kept": reason is None, "skip_reason": reason})
        mdict[split] = _struct_array(structs)
        n_split = sum(len(r.persons) for r in records)
        summary[split] = {"records": len(records), "persons": n_split,
                          "kept": n_split - sum(skipped.values()), "skipped": skipped}
    (root / "Annotations" / "Annotations.mat").write_bytes(_savemat_bytes(mdict))
    with open(root / "descriptions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["folder", "filename", "x1", "y1", "x2", "y2", "description"])
        w.writerows(rows)
    return {"root": str(root), "size": size, "seed": seed,
            "annotations": str(root / "Annotations" / "Annotations.mat"),
            "images": str(root / "emotic"), "descriptions": str(root / "descriptions.csv"),
            "splits": summary, "planted": planted, "image_modes": modes, "persons": truth}
