"""Image decoding and the Emotic crop, shared by the prep scripts and single-photo prediction (``utils.person``),
so a new photo is cropped and squashed exactly as the training data were."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError


class PrepError(Exception):
    """A problem with the user's input. The message names the file and what is wrong with it."""


class ImageReadError(PrepError):
    """An image file that is missing or cannot be decoded (the record is skipped, not fatal)."""


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Any image PIL understands as (H, W, 3) uint8 RGB; the format is sniffed from the bytes, not the name.
    EXIF orientation is deliberately *not* applied: Emotic's boxes are given in the stored pixel grid."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError as e:
        raise ImageReadError(f"{path}: image file not found") from e
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{path}: cannot decode image ({e})") from e


def resize_rgb(arr: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` (square int, or (width, height)), antialiased bilinear; the aspect ratio is not kept,
    as published Emotic code squashes each crop to a square."""
    wh = (size, size) if isinstance(size, int) else tuple(size)
    arr = np.ascontiguousarray(arr)  # PIL copies a strided view (a crop) several times slower
    return np.asarray(Image.fromarray(arr).resize(wh, Image.BILINEAR), dtype=np.uint8)


def pixel_box(bbox: Sequence[float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """The integer pixel box actually cropped: ``bbox`` clipped to the image, outer-rounded; None if empty or
    not finite. ``image[y1:y2, x1:x2]`` is the body crop, so the CSV's box reproduces it exactly."""
    if not all(math.isfinite(v) for v in bbox):
        return None
    x1, y1, x2, y2 = bbox
    x1 = min(max(math.floor(x1), 0), width)
    y1 = min(max(math.floor(y1), 0), height)
    x2 = min(max(math.ceil(x2), 0), width)
    y2 = min(max(math.ceil(y2), 0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2
