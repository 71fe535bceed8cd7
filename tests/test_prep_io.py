"""Shared prep I/O: row streaming and trimming, atomic staging, image decoding of awkward files."""
import os

import numpy as np
import pytest
from PIL import Image

from utils.prep import io as prep_io


@pytest.mark.parametrize("capacity,kept,shape", [(1000, 998, (8, 8, 3)), (100_000, 99, (3,)), (10, 0, (2,)), (5, 5, (4,))])
def test_row_writer_keeps_exactly_the_rows_appended(tmp_path, capacity, kept, shape):
    rows = np.random.default_rng(0).integers(0, 256, (kept,) + shape).astype(np.uint8)
    writer = prep_io.RowWriter(tmp_path / "a.npy", (capacity,) + shape, np.uint8, block=7)
    for r in rows:
        writer.append(r)
    assert writer.close() == kept
    got = np.load(tmp_path / "a.npy", allow_pickle=False)
    assert got.shape == (kept,) + shape
    np.testing.assert_array_equal(got, rows)
    header = (tmp_path / "a.npy").stat().st_size - rows.nbytes
    assert header in (128, 192, 256)  # the file was truncated to the rows kept: no stale tail


def test_row_writer_refuses_more_rows_than_capacity(tmp_path):
    writer = prep_io.RowWriter(tmp_path / "a.npy", (2, 3), np.float32)
    writer.append(np.zeros(3))
    writer.append(np.zeros(3))
    with pytest.raises(IndexError, match="a.npy"):
        writer.append(np.zeros(3))


def test_shrink_array_copy_path_for_fortran_order(tmp_path):
    src = np.asfortranarray(np.arange(1500, dtype=np.float32).reshape(300, 5))
    np.save(tmp_path / "f.npy", src)
    prep_io.shrink_array(tmp_path / "f.npy", 257, chunk=64)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy", allow_pickle=False), src[:257])


def test_staged_output_moves_files_only_on_success(tmp_path):
    out = tmp_path / "out"
    with prep_io.staged_output(out) as stage:
        (stage / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with prep_io.staged_output(out) as stage:
            (stage / "a.txt").write_text("second")
            (stage / "b.txt").write_text("half")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(os.listdir(out)) == ["a.txt"]  # no b.txt, no staging folder left behind


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG")])
def test_load_rgb_decodes_every_mode_by_content_not_name(tmp_path, mode, fmt):
    ref = Image.new("RGB", (40, 30), (200, 40, 90))
    im = ref.convert(mode)
    path = tmp_path / "photo.jpg"  # a PNG behind a .jpg name included
    im.save(path, format=fmt)
    arr = prep_io.load_rgb(path)
    assert arr.shape == (30, 40, 3) and arr.dtype == np.uint8
    with Image.open(path) as independent:
        expected = np.asarray(independent.convert("RGB"))
    np.testing.assert_array_equal(arr, expected)


def test_load_rgb_errors_name_the_file(tmp_path):
    with pytest.raises(prep_io.ImageReadError, match="missing.jpg: image file not found"):
        prep_io.load_rgb(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(prep_io.ImageReadError, match="bad.jpg: cannot decode"):
        prep_io.load_rgb(bad)


def test_parallel_map_keeps_input_order():
    assert list(prep_io.parallel_map(lambda x: x * x, range(300), workers=2, chunk=4)) == [x * x for x in range(300)]
