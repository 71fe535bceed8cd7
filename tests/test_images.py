"""utils.images: the decoding, squashing and box clipping both the prep scripts and single-photo prediction use,
checked against direct PIL calls and a hand-written box rule."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from utils import images


def reference_box(box, w, h):
    """Outer-rounded, clipped, None when empty or not finite: the crop rule written out by hand."""
    if not all(math.isfinite(v) for v in box):
        return None
    x1, x2 = (min(max(f(v), 0), w) for f, v in ((math.floor, box[0]), (math.ceil, box[2])))
    y1, y2 = (min(max(f(v), 0), h) for f, v in ((math.floor, box[1]), (math.ceil, box[3])))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


@pytest.mark.parametrize("box", [(40, 30, 120, 220), (-5.5, 10.2, 80.7, 500), (400, 300, 500, 400), (0, 0, 0, 10),
                                 (float("nan"), 0, 10, 10), (3.0, 4.0, 3.5, 4.5)])
def test_pixel_box(box):
    assert images.pixel_box(box, 320, 240) == reference_box(box, 320, 240)


def test_pixel_box_values():
    assert images.pixel_box((-5.5, 10.2, 80.7, 500), 320, 240) == (0, 10, 81, 240)
    assert images.pixel_box((3.0, 4.0, 3.5, 4.5), 320, 240) == (3, 4, 4, 5)
    assert images.pixel_box((400, 300, 500, 400), 320, 240) is None


def test_decoding_and_squashing(tmp_path):
    rng = np.random.default_rng(0)
    for mode, name in [("RGB", "a.png"), ("L", "b.png"), ("CMYK", "c.jpg"), ("RGBA", "d.jpg.png")]:
        path = tmp_path / name
        Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert(mode).save(path)
        got = images.load_rgb(path)
        assert got.dtype == np.uint8 and got.shape == (37, 53, 3)
        np.testing.assert_array_equal(got, np.asarray(Image.open(path).convert("RGB")))
    assert images.resize_rgb(got, 128).shape == (128, 128, 3)
    assert images.resize_rgb(got, (224, 100)).shape == (100, 224, 3)  # (width, height)
    flat = np.full((30, 50, 3), 77, np.uint8)
    np.testing.assert_array_equal(images.resize_rgb(flat[::2, 5:40], (64, 16)), np.full((16, 64, 3), 77, np.uint8))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(images.ImageReadError, match="bad.jpg: cannot decode image"):
        images.load_rgb(tmp_path / "bad.jpg")
    with pytest.raises(images.ImageReadError, match="missing.jpg: image file not found"):
        images.load_rgb(tmp_path / "missing.jpg")
