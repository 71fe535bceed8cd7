"""utils.images decodes, squashes, clips boxes and hashes exactly as the prep scripts do (utils/prep keeps its own
copies until it imports these)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from utils import images
from utils.prep import emotic, io as prep_io


@pytest.mark.parametrize("box", [(40, 30, 120, 220), (-5.5, 10.2, 80.7, 500), (400, 300, 500, 400), (0, 0, 0, 10),
                                 (float("nan"), 0, 10, 10), (3.0, 4.0, 3.5, 4.5)])
def test_pixel_box_is_the_prep_scripts_box(box):
    assert images.pixel_box(box, 320, 240) == emotic.pixel_box(box, 320, 240)


def test_decoding_squashing_and_hashing_match_prep(tmp_path):
    rng = np.random.default_rng(0)
    for mode, name in [("RGB", "a.jpg"), ("L", "b.png"), ("CMYK", "c.jpg"), ("RGBA", "d.jpg.png")]:
        path = tmp_path / name
        Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert(mode).save(path)
        got = images.load_rgb(path)
        np.testing.assert_array_equal(got, prep_io.load_rgb(path))
        for size in (128, (224, 100)):
            np.testing.assert_array_equal(images.resize_rgb(got[3:30, 5:40], size),
                                          prep_io.resize_rgb(got[3:30, 5:40], size))
        assert images.sha256_prefix(path) == prep_io.sha256_prefix(path)
        assert images.sha256_prefix(path, 64) == prep_io.sha256_prefix(path, 64)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(images.ImageReadError, match="bad.jpg: cannot decode image"):
        images.load_rgb(tmp_path / "bad.jpg")
    with pytest.raises(images.ImageReadError, match="missing.jpg: image file not found"):
        images.load_rgb(tmp_path / "missing.jpg")
