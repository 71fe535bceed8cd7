"""Input and output shared by the two prep scripts.

Why a module of its own: both scripts must decode awkward images the same way (grayscale, CMYK, a PNG behind
a ``.jpg`` name), stream arrays to disk so that memory stays flat whatever the dataset size, and never leave a
half-written file under a final name. Everything here is small and dataset-agnostic.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")


class PrepError(Exception):
    """A problem with the user's input. The message names the file and what is wrong with it."""


class ImageReadError(PrepError):
    """An image file that is missing or cannot be decoded (the record is skipped, not fatal)."""


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode any image PIL understands into an (H, W, 3) uint8 RGB array.

    The file's real format is sniffed from its bytes, not its name, so a PNG saved as ``.jpg`` works.
    Grayscale, palette, CMYK and alpha images are converted to RGB. EXIF orientation is deliberately *not*
    applied: Emotic's boxes are given in the stored pixel grid.
    """
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
    """Resize an RGB uint8 array to ``size`` (square int, or (width, height)) with antialiased bilinear.

    Aspect ratio is not kept, matching published Emotic code which squashes each crop to a square.
    """
    wh = (size, size) if isinstance(size, int) else tuple(size)
    arr = np.ascontiguousarray(arr)  # PIL copies a strided view (a crop) several times slower
    return np.asarray(Image.fromarray(arr).resize(wh, Image.BILINEAR), dtype=np.uint8)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 2, desc: str | None = None,
                 total: int | None = None, chunk: int = 64) -> Iterator[R]:
    """Apply ``fn`` to ``items`` on a thread pool and yield results in input order, with a progress bar.

    Threads suffice because PIL releases the GIL while decoding and resizing. At most ``workers * chunk``
    results are in flight, so memory stays bounded on large datasets.
    """
    items = iter(items)
    bar = tqdm(total=total, desc=desc, unit="img", leave=False, disable=None)
    try:
        if workers <= 1:
            for it in items:
                yield fn(it)
                bar.update(1)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            window: list = []
            for it in items:
                window.append(pool.submit(fn, it))
                if len(window) >= workers * chunk:
                    yield window.pop(0).result()
                    bar.update(1)
            for fut in window:
                yield fut.result()
                bar.update(1)
    finally:
        bar.close()


@contextmanager
def staged_output(out_dir: str | os.PathLike):
    """Stage every output file in a hidden folder inside ``out_dir`` and move them into place only on success.

    On any exception the staging folder is removed and files already in ``out_dir`` (a previous, complete
    run) are left untouched. Moving is an ``os.replace`` per file on the same filesystem, so a reader never sees
    a half-written file under its final name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    try:
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def open_array(path: str | os.PathLike, shape: tuple[int, ...], dtype) -> np.memmap:
    """Create a memory-mapped ``.npy`` file to be filled row by row (the OS pages it out, memory stays flat)."""
    return np.lib.format.open_memmap(Path(path), mode="w+", dtype=dtype, shape=shape)


def shrink_array(path: str | os.PathLike, n_rows: int, chunk: int = 256) -> None:
    """Keep only the first ``n_rows`` rows of a ``.npy`` file.

    In place when possible: the header is rewritten with the new shape (padded to its old length, which the
    format allows) and the file truncated, so no data moves. Otherwise the rows are copied chunk by chunk,
    re-mapping per chunk so resident memory stays at one chunk.
    """
    path = Path(path)
    with open(path, "r+b") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        data_offset = f.tell()
        if shape[0] == n_rows:
            return
        if n_rows > shape[0]:
            raise ValueError(f"{path}: cannot grow {shape[0]} rows to {n_rows}")
        new_shape = (n_rows,) + tuple(shape[1:])
        len_bytes = 2 if major == 1 else 4
        header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": new_shape})
        room = data_offset - (8 + len_bytes) - 1  # header text bytes available before the final newline
        if not fortran and len(header) <= room:
            f.seek(8 + len_bytes)
            f.write((header.ljust(room) + "\n").encode("latin1"))
            f.truncate(data_offset + int(np.prod(new_shape, dtype=np.int64)) * dtype.itemsize)
            return
    tmp = path.with_name(path.name + ".shrink")
    open_array(tmp, new_shape, dtype).flush()
    for i in range(0, n_rows, chunk):
        j = min(i + chunk, n_rows)
        src = np.load(path, mmap_mode="r", allow_pickle=False)
        dst = np.load(tmp, mmap_mode="r+", allow_pickle=False)
        dst[i:j] = src[i:j]
        dst.flush()
        del src, dst
    os.replace(tmp, path)


class RowWriter:
    """Fill a preallocated ``.npy`` file row by row; ``close()`` trims the rows never written.

    Why not one memmap held open: every page written so far would count in the process's resident memory, so
    peak memory would grow with the dataset. Mapping the file only while one block of rows is written keeps it
    at one block, whatever the dataset size.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype, block: int = 128):
        self.path, self.block, self.pending, self.rows = Path(path), block, [], 0
        self.capacity = shape[0]
        open_array(self.path, shape, dtype).flush()  # sparse file with its .npy header

    def append(self, row: np.ndarray) -> None:
        if self.rows + len(self.pending) >= self.capacity:
            raise IndexError(f"{self.path}: more than {self.capacity} rows appended")
        self.pending.append(row)
        if len(self.pending) == self.block:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            arr = np.load(self.path, mmap_mode="r+", allow_pickle=False)
            arr[self.rows:self.rows + len(self.pending)] = np.stack(self.pending)
            arr.flush()
            del arr
            self.rows += len(self.pending)
            self.pending.clear()

    def close(self) -> int:
        """Write what is pending, trim the file to the rows written, and return their count."""
        self.flush()
        shrink_array(self.path, self.rows)
        return self.rows

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def sha256_prefix(path: str | os.PathLike, n: int = 12) -> str:
    """Hex sha256 of a file, first ``n`` characters (used to record and check source and weight files)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]
