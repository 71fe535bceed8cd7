"""Shared prep I/O: row streaming and trimming, atomic staging, image decoding of awkward files."""
import errno
import json
import os
import shutil
import socket
from collections import namedtuple
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------------------------
# Disk space and staging under faults (the scripts end to end: tests/test_prep_faults.py)


@pytest.mark.parametrize("shape,dtype", [((0, 224, 224, 3), np.uint8), ((7, 26), np.float32), ((3,), np.float64),
                                         ((2, 1, 1, 1, 1, 1, 5), np.int16)])
def test_npy_bytes_is_the_size_numpy_writes(tmp_path, shape, dtype):
    np.save(tmp_path / "a.npy", np.zeros(shape, dtype))
    assert prep_io.npy_bytes(shape, dtype) == (tmp_path / "a.npy").stat().st_size


def test_row_writer_allocates_the_whole_file_up_front(tmp_path):
    path = tmp_path / "a.npy"
    prep_io.RowWriter(path, (500, 32, 32, 3), np.uint8)
    st = path.stat()
    assert st.st_size == prep_io.npy_bytes((500, 32, 32, 3), np.uint8)
    assert st.st_blocks * 512 >= st.st_size - 128  # blocks reserved, not a sparse file


@pytest.mark.parametrize("fallocate", ["unsupported", "missing"])
def test_allocation_falls_back_to_writing_zeros(tmp_path, monkeypatch, fallocate):
    if fallocate == "missing":
        monkeypatch.delattr(os, "posix_fallocate")
    else:
        def refuse(fd, offset, length):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        monkeypatch.setattr(os, "posix_fallocate", refuse)
    rows = np.random.default_rng(1).integers(0, 256, (300, 20, 20, 3)).astype(np.uint8)
    path = tmp_path / "a.npy"
    writer = prep_io.RowWriter(path, (400, 20, 20, 3), np.uint8, block=64)
    assert path.stat().st_blocks * 512 >= path.stat().st_size - 128
    for r in rows:
        writer.append(r)
    assert writer.close() == 300
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), rows)  # header untouched by the zeros


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_space_errors_name_the_file_and_become_prep_errors(tmp_path, monkeypatch, code):
    def full(fd, offset, length):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "old.txt").write_text("previous")
    with pytest.raises(prep_io.PrepError) as caught:
        with prep_io.staged_output(out) as stage:
            prep_io.RowWriter(stage / "big.npy", (10, 4), np.uint8)
    assert str(caught.value).startswith(f"{out}: {os.strerror(code)} while writing big.npy; ")
    assert isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.filename.endswith("big.npy")
    assert sorted(os.listdir(out)) == ["old.txt"]
    with pytest.raises(OSError, match="permission"):  # other OS errors are not dressed up as space errors
        with prep_io.staged_output(out):
            raise OSError(errno.EACCES, "permission denied")
    assert sorted(os.listdir(out)) == ["old.txt"]
    with pytest.raises(prep_io.PrepError):  # a first run that fails leaves no empty output folder
        with prep_io.staged_output(tmp_path / "fresh") as stage:
            prep_io.RowWriter(stage / "big.npy", (10, 4), np.uint8)
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_free_space_check_boundary_and_message(tmp_path, monkeypatch):
    need = 2 * 10**9  # margin: 5% = 100 MB (above the 64 MB floor)
    free = {"bytes": need + 100 * 10**6}
    asked = []
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: asked.append(p) or usage(10**13, 0, free["bytes"]))
    out = tmp_path / "not" / "yet"
    prep_io.check_free_space(out, need)  # exactly enough
    assert asked == [tmp_path]  # the nearest folder that exists
    free["bytes"] -= 1
    with pytest.raises(prep_io.PrepError) as caught:
        prep_io.check_free_space(out, need)
    assert str(caught.value) == (f"{out}: needs 2.10 GB, 2.10 GB free (2.00 GB of arrays plus a 100.0 MB margin); "
                                 f"free some space or write to another --out")
    assert prep_io.space_margin(10**6) == 64 * 10**6


def test_staging_folder_carries_its_owner_and_keeps_it_out_of_the_output(tmp_path):
    out = tmp_path / "out"
    with prep_io.staged_output(out) as stage:
        owner = json.loads((stage / prep_io.OWNER_FILE).read_text())
        (stage / "a.txt").write_text("x")
    stat = Path("/proc/self/stat").read_text()
    assert owner["mark"] == prep_io.OWNER_MARK and owner["pid"] == os.getpid()
    assert owner["host"] == socket.gethostname()
    assert owner["start_ticks"] == int(stat[stat.rindex(")") + 2:].split()[19])
    assert owner["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert sorted(os.listdir(out)) == ["a.txt"]
