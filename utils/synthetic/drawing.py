"""Pixel helpers both generators draw with: a named palette, sensor grain and patterned fabric."""
from __future__ import annotations

import numpy as np

COLOURS = {
    "red": (200, 30, 30), "orange": (245, 140, 20), "yellow": (240, 215, 40), "gold": (212, 175, 55),
    "green": (40, 150, 60), "teal": (30, 140, 150), "blue": (40, 80, 200), "navy": (20, 30, 90),
    "purple": (120, 40, 150), "pink": (240, 140, 180), "white": (240, 240, 240), "grey": (128, 128, 128),
    "black": (25, 25, 25), "brown": (120, 75, 40), "khaki": (180, 165, 110), "beige": (220, 205, 175),
}


def add_grain(arr: np.ndarray, rng: np.random.Generator, amount: int) -> np.ndarray:
    """Add monochrome sensor grain (uniform in +-amount) to an (h, w, 3) image; returns uint8.

    Drawn from raw random bytes: several times cheaper than ``rng.normal`` on a full photo.
    """
    h, w = arr.shape[:2]
    noise = np.frombuffer(rng.bytes(h * w), np.uint8).reshape(h, w, 1) % (2 * amount + 1)
    return np.clip(arr.astype(np.int16) + (noise.astype(np.int16) - amount), 0, 255).astype(np.uint8)


def texture(kind: str, w: int, h: int, c1, c2, rng: np.random.Generator) -> np.ndarray:
    """A (h, w, 3) uint8 fabric pattern of colours ``c1`` / ``c2``.

    ``kind`` is stripes_h, stripes_v, diagonal, checker, dots, zigzag, grain or solid. The period scales with the
    patch, so a pattern on a garment survives the 128 px body crop.
    """
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
    return add_grain(np.where(mask[..., None], np.array(c1, np.int16), np.array(c2, np.int16)), rng, 10)
