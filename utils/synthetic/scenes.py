"""Emotic's latent scenes: who is in each image and how they feel, and the picture drawn from that.

Every image starts from a mood shared by its people (so categories co-occur as in real photos); each person gets
1-4 categories, valence/arousal/dominance that follow them, a gender, an age and a box. The renderer then draws a
background with the scene cues of ``cues.CUES`` and a stylised figure per person with its body cues. The bad
records that real Emotic holds are planted afterwards by :func:`plant_bad_records`.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from utils.labels import CATEGORIES

from .cues import CUES, MOOD_WEIGHTS, MOODS, NEUTRAL_CLOTHES
from .drawing import COLOURS, add_grain, texture

EMOTIC_SPLITS = {"train": 0.60, "val": 0.15, "test": 0.25}  # shares of the persons
# fewest persons per split that still give the records plant_bad_records breaks: train records 1-5, val 1,
# test 1-2 (three persons at most per record, so e.g. 16 persons make at least six records)
MIN_SPLIT_PERSONS = {"train": 16, "val": 4, "test": 7}
EMOTIC_FOLDERS = {  # folder -> (original_database name, file name pattern)
    "mscoco/images": ("mscoco", "COCO_train2014_{:012d}.jpg"),
    "framesdb/images": ("framesdb", "frame_{:08x}.jpg"),
    "ade20k/images": ("ade20k", "ADE_train_{:08d}.jpg"),
    "emodb_small/images": ("emodb_small", "{:06d}.jpg"),
}
IMAGE_SIZES = [(640, 480), (480, 640), (500, 375), (600, 400), (427, 640), (640, 427), (512, 384), (400, 300)]


@dataclass
class Person:
    """One person of a scene: the labels, the box, and which of its categories the renderer draws on it."""
    categories: list[str]
    vad: tuple[float, float, float]
    gender: str
    age: str
    box: list[float] = field(default_factory=list)   # x1 y1 x2 y2 as stored in the .mat
    body_cues: list[str] = field(default_factory=list)


@dataclass
class Record:
    """One image of a split: its file, size and persons, the scene cues drawn in its background, how it is stored."""
    split: str
    index: int
    folder: str
    filename: str
    width: int
    height: int
    persons: list[Person]
    scene_cues: list[str]
    mode: str = "RGB"          # RGB | L | CMYK | PNG (PNG bytes behind a .jpg name)
    write_image: bool = True
    image_id: int = 0          # the number in the file name (and COCO's image_id)


def _sample_person(rng: np.random.Generator, mood: str) -> Person:
    """1-4 categories drawn around the image's mood; VAD follows the categories (integers on 1..10)."""
    boost = set(MOODS[mood])
    p = np.array([min(0.9, CUES[c].prevalence * (2.2 if c in boost else 0.6)) for c in CATEGORIES])
    chosen = np.flatnonzero(rng.random(len(p)) < p)
    if len(chosen) == 0:
        chosen = rng.choice(len(p), size=1, p=p / p.sum())
    if len(chosen) > 4:
        chosen = rng.choice(chosen, size=4, replace=False, p=p[chosen] / p[chosen].sum())
    cats = [CATEGORIES[i] for i in sorted(chosen)]
    offs = np.mean([CUES[c].vad for c in cats], axis=0)
    vad = np.clip(np.rint(5.5 + offs + rng.normal(0, 0.8, 3)), 1, 10)
    gender = str(rng.choice(["Male", "Female"]))
    age = str(rng.choice(["Adult", "Teenager", "Kid"], p=[0.75, 0.12, 0.13]))
    return Person(cats, tuple(float(v) for v in vad), gender, age)


def _place_boxes(rng: np.random.Generator, n: int, w: int, h: int) -> list[list[float]]:
    """Side-by-side person boxes (integer pixel coordinates, stored as doubles like the real annotations)."""
    boxes = []
    slot = w / n
    for i in range(n):
        bh = h * rng.uniform(0.55, 0.9) if n == 1 else h * rng.uniform(0.4, 0.75)
        bw = min(bh * rng.uniform(0.35, 0.55), slot * 0.95)
        cx = slot * (i + 0.5) + rng.uniform(-0.1, 0.1) * slot
        y2 = h - rng.uniform(0.0, 0.12) * h
        x1, x2 = max(0.0, cx - bw / 2), min(w - 1.0, cx + bw / 2)
        boxes.append([float(round(x1)), float(round(max(0.0, y2 - bh))), float(round(x2)), float(round(y2))])
    return boxes


def split_budget(n_persons: int, split_persons: dict[str, int] | None = None) -> dict[str, int]:
    """Persons per split: ``split_persons`` as given (checked), else ``n_persons`` shared 60/15/25 %.

    Exact counts let a rehearsal match the real split sizes (23,266 / 3,315 / 7,203). Each split needs enough
    persons to hold the records :func:`plant_bad_records` breaks (at most three persons share a record).
    """
    if split_persons is None:
        budget = {"train": round(n_persons * EMOTIC_SPLITS["train"]),
                  "val": round(n_persons * EMOTIC_SPLITS["val"])}
        budget["test"] = n_persons - budget["train"] - budget["val"]
        return budget
    if set(split_persons) != set(EMOTIC_SPLITS):
        raise ValueError(f"split_persons={split_persons!r}: expected exactly the keys {', '.join(EMOTIC_SPLITS)}")
    short = {s: MIN_SPLIT_PERSONS[s] for s, n in split_persons.items() if int(n) < MIN_SPLIT_PERSONS[s]}
    if short:
        raise ValueError(f"split_persons={split_persons!r}: need at least {short} to hold the planted bad records")
    return {s: int(split_persons[s]) for s in EMOTIC_SPLITS}


def sample_records(rng: np.random.Generator, n_persons: int,
                   split_persons: dict[str, int] | None = None) -> dict[str, list[Record]]:
    """Latent scenes for every split; :func:`plant_bad_records` breaks a few of them afterwards.

    Cues fire with each category's ``p_img``, and one person in eight (one image in seven) gets a distractor cue
    for a category it does not have. Records 6, 7 and 8 of every ten are stored as grayscale, CMYK and PNG.
    ``split_persons`` fixes the persons per split (see :func:`split_budget`); ``n_persons`` is then ignored.
    """
    splits: dict[str, list[Record]] = {}
    folders = list(EMOTIC_FOLDERS)
    used_ids: set[int] = set()
    budget = split_budget(n_persons, split_persons)
    for split, n_split in budget.items():
        records: list[Record] = []
        left = n_split
        while left > 0:
            k = min(left, int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15])))
            i = len(records)
            if split == "train" and i == 4:
                k = min(left, 1)  # the record whose image goes missing holds a single person
            w, h = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
            folder = folders[rng.integers(len(folders))]
            while (num := int(rng.integers(1, 600_000))) in used_ids:
                pass
            used_ids.add(num)
            mood = str(rng.choice(list(MOODS), p=MOOD_WEIGHTS))
            persons = [_sample_person(rng, mood) for _ in range(k)]
            for person, box in zip(persons, _place_boxes(rng, k, w, h)):
                person.box = box
                person.body_cues = [c for c in person.categories
                                    if CUES[c].channel == "body" and rng.random() < CUES[c].p_img]
                if rng.random() < 0.12:  # a distractor: clothing that suggests a category the person lacks
                    person.body_cues.append(str(rng.choice([c for c, q in CUES.items() if q.channel == "body"])))
            scene = {c for p in persons for c in p.categories
                     if CUES[c].channel == "scene" and rng.random() < CUES[c].p_img}
            if rng.random() < 0.15:
                scene.add(str(rng.choice([c for c, q in CUES.items() if q.channel == "scene"])))
            mode = {6: "L", 7: "CMYK", 8: "PNG"}.get(i % 10, "RGB")
            records.append(Record(split, i, folder, EMOTIC_FOLDERS[folder][1].format(num), w, h, persons,
                                  sorted(scene), mode, image_id=num))
            left -= k
        splits[split] = records
    return splits


def plant_bad_records(splits: dict[str, list[Record]]) -> list[dict]:
    """Plant the bad records that real Emotic holds, so every skip path of the prep script runs.

    Returned entries say where each one is and why the person must be skipped (or, for a box partly outside
    the image, kept after clipping).
    """
    planted = []

    def note(split, rec, pi, reason, skipped=True):
        r = splits[split][rec]
        planted.append({"split": split, "record": rec, "person": pi, "folder": r.folder, "filename": r.filename,
                        "reason": reason, "skipped": skipped})

    tr = splits["train"]
    tr[1].persons[0].vad = (float("nan"),) + tr[1].persons[0].vad[1:]
    note("train", 1, 0, "nan_continuous")
    tr[2].persons[0].categories = []
    note("train", 2, 0, "no_category")
    r = tr[3]
    r.persons[0].box = [float(r.width + 10), 5.0, float(r.width + 80), 60.0]
    note("train", 3, 0, "empty_box")
    tr[4].write_image = False
    for pi in range(len(tr[4].persons)):
        note("train", 4, pi, "missing_image")
    r = tr[5]
    b = r.persons[0].box
    r.persons[0].box = [b[0] - 25.0, b[1] - 15.0, b[2], float(r.height + 30)]
    note("train", 5, 0, "box_partly_outside", skipped=False)
    # the combined fields of val/test take the same checks
    v = splits["val"][1].persons[0]
    v.vad = (float("nan"),) + v.vad[1:]
    note("val", 1, 0, "nan_continuous")
    splits["test"][1].persons[0].categories = []
    note("test", 1, 0, "no_category")
    r = splits["test"][2]
    b = r.persons[-1].box
    r.persons[-1].box = [b[0], b[1], float(r.width + 40), b[3]]
    note("test", 2, len(r.persons) - 1, "box_partly_outside", skipped=False)
    return planted


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, w: int, h: int, scene: list[str], valence: float) -> Image.Image:
    """Label-independent setting (indoor or outdoor) plus the scene cues; light follows valence a little."""
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    outdoor = rng.random() < 0.5
    if outdoor:  # sky over ground
        sky = np.array(COLOURS[str(rng.choice(["blue", "teal", "beige"]))], np.float32) * 0.6 + 90
        ground = np.array(COLOURS[str(rng.choice(["green", "brown", "khaki", "grey"]))], np.float32)
        horizon = rng.uniform(0.45, 0.65)
        col = np.where(yy < horizon, sky * (0.8 + 0.3 * yy), ground * (0.9 + 0.2 * yy))
    else:  # wall over floor
        wall = np.array(COLOURS[str(rng.choice(["beige", "white", "grey", "khaki"]))], np.float32)
        floor = np.array(COLOURS[str(rng.choice(["brown", "grey", "khaki"]))], np.float32) * 0.8
        horizon = rng.uniform(0.6, 0.75)
        col = np.where(yy < horizon, wall, floor)
    col = col * (1.0 + 0.04 * (valence - 5.5))
    if "Disconnection" in scene:  # fog: washed out towards grey
        col = 0.35 * col + 0.65 * 200
    if "Sadness" in scene:  # gloomy light
        col = col * 0.55
    img = Image.fromarray(add_grain(np.broadcast_to(col[:, None, :], (h, w, 3)), rng, 5))
    d = ImageDraw.Draw(img)
    if not outdoor:  # a window or a picture on the wall, whatever the labels
        wx, wy = rng.uniform(0.05, 0.7) * w, rng.uniform(0.05, 0.3) * h
        d.rectangle([wx, wy, wx + rng.uniform(0.1, 0.25) * w, wy + rng.uniform(0.1, 0.2) * h],
                    fill=COLOURS[str(rng.choice(["white", "teal", "brown"]))], outline=(60, 60, 60), width=3)
    hz = int(horizon * h)
    if "Peace" in scene:  # a calm lake with soft wave lines
        d.rectangle([0, hz, w, h], fill=(60, 130, 170))
        for y in range(hz + 6, h, 12):
            d.line([(0, y), (w, y)], fill=(120, 180, 210), width=2)
    if "Engagement" in scene:  # a table with a game board and pieces
        tx, ty = int(rng.uniform(0.05, 0.5) * w), int(rng.uniform(0.55, 0.75) * h)
        tw, th = int(0.4 * w), int(0.2 * h)
        board = texture("checker", tw, th, (235, 235, 235), (30, 30, 30), rng)
        img.paste(Image.fromarray(board), (tx, ty))
        for _ in range(6):
            px, py = tx + rng.integers(0, tw), ty + rng.integers(0, th)
            d.ellipse([px - 6, py - 6, px + 6, py + 6], fill=COLOURS[str(rng.choice(["red", "blue"]))])
    if "Happiness" in scene:  # sun with rays, colourful balloons
        sx, sy, r = int(rng.uniform(0.1, 0.9) * w), int(0.12 * h), int(0.07 * min(w, h)) + 4
        for a in np.linspace(0, 2 * np.pi, 12, endpoint=False):
            d.line([(sx, sy), (sx + 2 * r * np.cos(a), sy + 2 * r * np.sin(a))], fill=(250, 220, 40), width=3)
        d.ellipse([sx - r, sy - r, sx + r, sy + r], fill=(255, 225, 40))
        for _ in range(int(rng.integers(3, 7))):
            bx, by, br = rng.uniform(0.05, 0.95) * w, rng.uniform(0.1, 0.5) * h, 0.035 * min(w, h) + 3
            d.line([(bx, by + br), (bx, by + 4 * br)], fill=(60, 60, 60), width=1)
            d.ellipse([bx - br, by - br * 1.2, bx + br, by + br],
                      fill=COLOURS[str(rng.choice(["red", "pink", "yellow", "blue", "green", "orange"]))])
    if "Pleasure" in scene:  # flowers on the ground
        for _ in range(int(rng.integers(15, 30))):
            fx, fy, fr = rng.uniform(0, w), rng.uniform(horizon, 1.0) * h, rng.uniform(4, 9)
            d.ellipse([fx - fr, fy - fr, fx + fr, fy + fr], fill=COLOURS[str(rng.choice(["pink", "orange", "red"]))])
            d.ellipse([fx - fr / 3, fy - fr / 3, fx + fr / 3, fy + fr / 3], fill=(250, 230, 60))
    return img


def _draw_figure(img: Image.Image, person: Person, rng: np.random.Generator) -> None:
    """A stylised person filling its box: clothing pattern, posture and face show the body cues."""
    x1, y1, x2, y2 = person.box
    bw, bh = x2 - x1, y2 - y1
    if bw < 8 or bh < 16:
        return
    d = ImageDraw.Draw(img)
    motifs = [CUES[c].motif for c in dict.fromkeys(person.body_cues)]
    posture = next((m[3] for m in motifs if m[3]), str(rng.choice(["down", "down", "front"])))
    face_tint = next((m[4] for m in motifs if m[4]), None)
    cx = (x1 + x2) / 2 + (0.08 * bw if posture == "slump" else 0)
    drop = 0.18 * bh if posture == "crouch" else (0.06 * bh if posture == "slump" else 0.0)
    lw = max(2, int(0.09 * bw))
    top, hip = y1 + 0.24 * bh + drop, y1 + 0.62 * bh + drop * 0.6
    tx1, tx2 = cx - 0.28 * bw, cx + 0.28 * bw
    trousers = COLOURS[str(rng.choice(["navy", "black", "brown", "grey"]))]
    if posture == "crouch":  # bent legs
        knee = (y2 + hip) / 2
        d.line([(cx - 0.15 * bw, hip), (cx - 0.35 * bw, knee), (cx - 0.15 * bw, y2)], fill=trousers, width=lw)
        d.line([(cx + 0.15 * bw, hip), (cx + 0.35 * bw, knee), (cx + 0.15 * bw, y2)], fill=trousers, width=lw)
    else:
        spread = 0.3 if posture == "hips" else 0.15
        d.line([(cx - 0.12 * bw, hip), (cx - spread * bw, y2)], fill=trousers, width=lw)
        d.line([(cx + 0.12 * bw, hip), (cx + spread * bw, y2)], fill=trousers, width=lw)
    # torso: one horizontal band per body cue, else a plain garment
    th, tw = max(1, int(hip - top)), max(1, int(tx2 - tx1))
    if motifs:
        bands = np.array_split(np.arange(th), len(motifs))
        torso = np.concatenate([texture(m[0], tw, len(b), COLOURS[m[1]], COLOURS[m[2]], rng)
                                for m, b in zip(motifs, bands) if len(b)], axis=0)
    else:
        c = COLOURS[str(rng.choice(NEUTRAL_CLOTHES))]
        torso = texture("solid", tw, th, c, c, rng)
    img.paste(Image.fromarray(torso), (int(tx1), int(top)))
    sleeve = tuple(int(v) for v in torso[th // 2, tw // 2])
    sh = top + 0.03 * bh
    arms = {
        "up": [((tx1, sh), (tx1 - 0.15 * bw, y1 + drop)), ((tx2, sh), (tx2 + 0.15 * bw, y1 + drop))],
        "hips": [((tx1, sh), (tx1 - 0.25 * bw, (sh + hip) / 2), (tx1, hip)),
                 ((tx2, sh), (tx2 + 0.25 * bw, (sh + hip) / 2), (tx2, hip))],
        "front": [((tx1, sh), (cx, (sh + hip) / 2)), ((tx2, sh), (cx, (sh + hip) / 2 + lw))],
        "slump": [((tx1, sh), (tx1 - 0.03 * bw, hip + 0.12 * bh)), ((tx2, sh), (tx2 + 0.03 * bw, hip + 0.12 * bh))],
        "crouch": [((tx1, sh), (cx, hip)), ((tx2, sh), (cx, hip - lw))],
        "down": [((tx1, sh), (tx1 - 0.08 * bw, hip)), ((tx2, sh), (tx2 + 0.08 * bw, hip))],
    }[posture]
    for pts in arms:
        d.line(list(pts), fill=sleeve, width=max(2, lw - 1))
    skin = np.array(COLOURS["beige"]) * rng.uniform(0.5, 1.05)
    if face_tint:
        skin = 0.4 * skin + 0.6 * np.array(COLOURS[face_tint])
    r = min(0.11 * bh, 0.3 * bw)
    hx, hy = cx + (0.1 * bw if posture == "slump" else 0), top - r - 0.01 * bh
    d.ellipse([hx - r, hy - r, hx + r, hy + r], fill=tuple(int(v) for v in np.clip(skin, 0, 255)))


def render(rec: Record, rng: np.random.Generator) -> Image.Image:
    """The whole picture of a record: background with scene cues, one figure per person, rain, sometimes blur."""
    valences = [p.vad[0] for p in rec.persons if not np.isnan(p.vad[0])]
    img = _background(rng, rec.width, rec.height, rec.scene_cues, float(np.mean(valences)) if valences else 5.5)
    for person in rec.persons:
        _draw_figure(img, person, rng)
    if "Sadness" in rec.scene_cues:  # rain falls over everything, people included
        d = ImageDraw.Draw(img)
        for _ in range(int(rec.width * rec.height / 900)):
            x, y = rng.uniform(0, rec.width), rng.uniform(0, rec.height)
            d.line([(x, y), (x - 4, y + 14)], fill=(190, 200, 215), width=1)
    if rng.random() < 0.3:  # camera blur on some photos
        img = img.filter(ImageFilter.BoxBlur(int(rng.integers(1, 3))))
    return img


def encode_image(img: Image.Image, mode: str, rng: np.random.Generator) -> bytes:
    """Bytes of the file as found on disk: JPEG in RGB, L or CMYK, or a PNG (behind a .jpg name)."""
    buf = io.BytesIO()
    if mode == "PNG":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.convert(mode).save(buf, format="JPEG", quality=int(rng.integers(82, 96)))
    return buf.getvalue()
