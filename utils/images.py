"""Image decoding and the Emotic crop below both prep and library: a new photo is cropped as the training data were."""

import math

import numpy as np
from PIL import Image, UnidentifiedImageError


class PrepError(Exception):
    """A problem with the user's input. The message names the file and what is wrong with it."""


class ImageReadError(PrepError):
    """An image file that is missing or cannot be decoded (the record is skipped, not fatal)."""


def load_rgb(path) -> np.ndarray:
    """Any image PIL reads as (H, W, 3) uint8 RGB, without EXIF rotation: Emotic's boxes use the stored pixel grid."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError as e:
        raise ImageReadError(f"{path}: image file not found") from e
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{path}: cannot decode image ({e})") from e


def resize_rgb(arr: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Squash to ``size`` (square int, or (width, height)), antialiased bilinear, as published Emotic code does."""
    wh = (size, size) if isinstance(size, int) else tuple(size)
    arr = np.ascontiguousarray(arr)  # PIL copies a strided view (a crop) several times slower
    return np.asarray(Image.fromarray(arr).resize(wh, Image.BILINEAR), dtype=np.uint8)


def pixel_box(bbox, width: int, height: int) -> tuple[int, int, int, int] | None:
    """``bbox`` (x1, y1, x2, y2) clipped and outer-rounded: the crop ``image[y1:y2, x1:x2]``; None if empty."""
    if not all(math.isfinite(v) for v in bbox):
        return None
    x1, y1 = min(max(math.floor(bbox[0]), 0), width), min(max(math.floor(bbox[1]), 0), height)
    x2, y2 = min(max(math.ceil(bbox[2]), 0), width), min(max(math.ceil(bbox[3]), 0), height)
    return None if x2 <= x1 or y2 <= y1 else (x1, y1, x2, y2)
