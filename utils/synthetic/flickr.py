"""Synthetic Flickr8k in both real layouts: Kaggle (``captions.txt`` + ``Images/``) and original
(``Flickr8k_text/`` token file and split lists + ``Flickr8k_Dataset/``).

Each image is a drawn scene (beach, snow, grass, street, water, indoor) with 1-3 kinds of coloured objects; its
five captions each mention a random subset of those objects in a different wording, as Flickr8k's annotators do.
Both layouts hold the same bytes and captions for a given size and seed (:func:`build_content` makes them once,
:func:`write_layout` writes one layout), including awkward but valid text (commas, quotes, non-ASCII) and two
planted problems: one empty caption and one image named in the captions but missing on disk.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .drawing import COLOURS, add_grain
from .sizes import check_size

LAYOUTS = ("kaggle", "original")
SPLIT_LISTS = ("train", "dev", "test")  # the original layout's Flickr_8k.<list>Images.txt
IMAGE_SIZES = [(500, 375), (375, 500), (500, 333), (333, 500), (500, 400), (500, 281)]
SCENES = {  # name -> (sky, ground, horizon, caption fragments)
    "beach": ((135, 195, 235), (225, 200, 140), 0.45, ("on the beach", "on a sandy beach", "by the sea")),
    "snow": ((200, 210, 225), (245, 245, 250), 0.4, ("in the snow", "on a snowy hill", "in a snowy field")),
    "grass": ((120, 170, 230), (70, 150, 60), 0.5, ("on the grass", "in a grassy field", "in a park")),
    "street": ((170, 175, 185), (95, 95, 100), 0.55, ("on a city street", "on the sidewalk", "in the street")),
    "water": ((150, 190, 230), (40, 90, 160), 0.5, ("in the water", "in a lake", "by the river")),
    "indoor": ((220, 205, 175), (140, 95, 55), 0.65, ("inside a café", "in a room", "indoors")),
}
OBJECTS = {  # kind -> (nouns singular, plural, verbs)
    "dog": (("dog", "puppy"), ("dogs", "puppies"), ("runs", "plays", "jumps")),
    "ball": (("ball",), ("balls",), ("lies", "rolls", "bounces")),
    "person": (("man", "woman", "child", "person", "boy", "girl"), ("people", "children", "men"),
               ("stands", "walks", "waves")),
    "kite": (("kite",), ("kites",), ("flies", "floats")),
    "bicycle": (("bicycle", "bike"), ("bicycles", "bikes"), ("is parked", "leans")),
    "car": (("car",), ("cars",), ("is parked", "drives")),
    "umbrella": (("umbrella",), ("umbrellas",), ("is open", "stands")),
}
OBJECT_COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "pink", "brown")
NUMBER_WORDS = {2: "two", 3: "three"}
QUOTED = ('a sign that says "STOP"', 'a banner reading "Welcome home, Zoë"', 'a shirt printed with "I ♥ NY"')
ACCENTED = ("near a café", "outside a crêpe stand", "in São Paulo", "beside a jalapeño cart")


def _a(word: str) -> str:
    """The indefinite article for ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def _image_name(rng: np.random.Generator, used: set) -> str:
    """A new file name in Flickr's ``<photo id>_<secret>.jpg`` style."""
    while True:
        name = f"{int(rng.integers(10**9, 4 * 10**9))}_{int(rng.integers(16**10)):010x}.jpg"
        if name not in used:
            used.add(name)
            return name


def _draw_object(d: ImageDraw.ImageDraw, kind: str, colour, x: float, y: float, s: float) -> None:
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
    """One photo's content: its drawn scene and objects, and the captions written about them."""
    name: str
    width: int
    height: int
    scene: str
    objects: list[tuple[str, str, int]]   # (kind, colour, count)
    captions: list[str] = field(default_factory=list)


def _captions(img: FlickrImage, rng: np.random.Generator) -> list[str]:
    """Five captions, each about a random subset of the content in a different wording (like Flickr8k's)."""
    caps = []
    for _ in range(5):
        objs = [o for o in img.objects if rng.random() < 0.65] or [img.objects[int(rng.integers(len(img.objects)))]]
        phrases = []
        for kind, colour, count in objs:
            sing, plur, _ = OBJECTS[kind]
            noun = str(rng.choice(plur if count > 1 else sing))
            adj = colour if rng.random() < 0.55 else ""
            if kind == "person" and adj:  # people wear the colour
                wear = f"in {_a(adj)} {adj} shirt" if count == 1 else f"in {adj} shirts"
                noun, adj = f"{noun} {wear}", ""
            num = _a(adj or noun) if count == 1 else (NUMBER_WORDS[count] if rng.random() < 0.7 else "some")
            phrases.append(" ".join(w for w in (num, adj, noun) if w))
        where = str(rng.choice(SCENES[img.scene][3])) if rng.random() < 0.6 else ""
        verb = str(rng.choice(OBJECTS[objs[0][0]][2]))
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


def _sample_images(n: int, seed: int) -> tuple[list[FlickrImage], list[dict]]:
    """Images with their captions, planted problems included (same result for both layouts)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    used: set[str] = set()
    images = []
    for _ in range(n):
        w, h = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
        kinds = rng.choice(list(OBJECTS), size=int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2])), replace=False)
        objects = [(str(k), str(rng.choice(OBJECT_COLOURS)), int(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12])))
                   for k in kinds]
        img = FlickrImage(_image_name(rng, used), w, h, str(rng.choice(list(SCENES))), objects)
        img.captions = _captions(img, rng)
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


def _render(img: FlickrImage, rng: np.random.Generator) -> bytes:
    """JPEG bytes of the scene: tinted sky and ground, unmentioned clutter, then the captioned objects."""
    sky, ground, horizon, _ = SCENES[img.scene]
    w, h = img.width, img.height
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    tint = rng.uniform(-25, 25, size=(2, 3)).astype(np.float32)  # light and season vary between photos
    col = np.where(yy < horizon, np.array(sky, np.float32) + tint[0], np.array(ground, np.float32) + tint[1])
    arr = add_grain(np.broadcast_to(col[:, None, :], (h, w, 3)), rng, 12)
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
            _draw_object(d, kind, COLOURS[colour], x, y, s)
    buf = io.BytesIO()
    pic.save(buf, format="JPEG", quality=int(rng.integers(85, 95)))
    return buf.getvalue()


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {', '.join(LAYOUTS)}")


@dataclass
class FlickrContent:
    """What both layouts hold: images (with captions), their JPEG bytes, the split lists, the planted problems."""
    size: str
    seed: int
    images: list[FlickrImage]
    jpeg: dict[str, bytes]
    splits: dict[str, list[str]]
    planted: list[dict]


def _check_split_images(split_images: dict[str, int], n: int) -> dict[str, int]:
    if set(split_images) != set(SPLIT_LISTS) or min(split_images.values()) < 1:
        raise ValueError(f"split_images={split_images!r}: expected a count of at least 1 for each of "
                         f"{', '.join(SPLIT_LISTS)}")
    if sum(split_images.values()) > n:
        raise ValueError(f"split_images={split_images!r}: the lists hold {sum(split_images.values())} images, "
                         f"more than the {n} written")
    return {k: int(v) for k, v in split_images.items()}


def build_content(size: str, seed: int, n_images: int | None = None,
                  split_images: dict[str, int] | None = None) -> FlickrContent:
    """Everything both layouts hold, made once; ``n_images`` overrides the size's image count.

    ``split_images`` (``{"train": .., "dev": .., "test": ..}``) fixes how many images each split list names; the
    rest are in no list, as in the real download (8,091 images, lists of 6,000 / 1,000 / 1,000). The image the
    captions name but the disk lacks is then kept in a list, so the prep script still meets it.
    """
    counts = check_size(size)
    n = int(n_images or counts["flickr_images"])
    wanted = None if split_images is None else _check_split_images(split_images, n)
    images, planted = _sample_images(n, seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    jpeg = {img.name: _render(img, rng) for img in images}
    # the standard split holds images in proportions 6:1:1 (6000 / 1000 / 1000)
    order = np.random.default_rng(np.random.SeedSequence([seed, 4])).permutation(len(images))
    if wanted is None:
        n_dev = n_test = max(1, round(len(images) / 8))
        split_of = {"train": order[n_test + n_dev:], "dev": order[n_test:n_test + n_dev], "test": order[:n_test]}
    else:
        n_test, n_dev, n_listed = wanted["test"], wanted["dev"], sum(wanted.values())
        where = int(np.flatnonzero(order == len(images) - 1)[0])  # the planted missing image
        if where >= n_listed:
            order[[0, where]] = order[[where, 0]]
        split_of = {"train": order[n_test + n_dev:n_listed], "dev": order[n_test:n_test + n_dev],
                    "test": order[:n_test]}
    splits = {k: sorted(images[i].name for i in v) for k, v in split_of.items()}
    return FlickrContent(size, seed, images, jpeg, splits, planted)


def write_layout(root, layout: str, content: FlickrContent) -> dict:
    """Write ``content`` under ``root`` in one layout and return what was written (see :func:`make_flickr8k`)."""
    _check_layout(layout)
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
                  n_images: int | None = None, split_images: dict[str, int] | None = None) -> dict:
    """Write a synthetic Flickr8k under ``root`` in the ``kaggle`` or ``original`` layout.

    Both layouts hold the same images (same bytes) and captions for the same size and seed; the split lists
    (original layout) follow the standard 6:1:1 proportions, or hold exactly ``split_images`` images per list
    (see :func:`build_content`). The returned dict lists the images, every caption, the split lists' content and
    the planted problems: one empty caption and one image listed in the captions (and a split list) but missing
    on disk.
    """
    _check_layout(layout)
    return write_layout(root, layout, build_content(size, seed, n_images, split_images))
