"""Input and output shared by the two prep scripts.

Why a module of its own: both scripts must decode awkward images the same way (grayscale, CMYK, a PNG behind
a ``.jpg`` name), stream arrays to disk so that memory stays flat whatever the dataset size, never leave a
half-written file under a final name, and meet a full disk or a killed earlier run with a clear message rather than a
crash or a leftover folder. Everything here is small and dataset-agnostic.
"""
from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from tqdm.auto import tqdm

from utils import store
from utils.images import ImageReadError, PrepError, load_rgb, resize_rgb  # noqa: F401 (prep's names)

T = TypeVar("T")
R = TypeVar("R")


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


# ---------------------------------------------------------------------------------------------------------------
# Disk space: checked before writing, allocated up front, and reported as a clear error when it runs out
# ---------------------------------------------------------------------------------------------------------------

# Errors that mean "this filesystem will not hold the output": disk full, quota exceeded, file size limit.
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Head room asked for on top of the arrays: the CSV tables and the manifest (a few MB for the full datasets) and
# filesystem metadata, with room to spare for whatever else writes to the same disk during a long run.
SPACE_MARGIN_FRACTION = 0.05
SPACE_MARGIN_MIN = 64 * 10**6


def format_bytes(n: float) -> str:
    """Decimal units, as ``df -H`` prints them: '6.31 GB', '148.2 MB'."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def space_margin(need_bytes: int) -> int:
    """Bytes required on top of ``need_bytes``: 5% of it, at least 64 MB."""
    return max(SPACE_MARGIN_MIN, math.ceil(need_bytes * SPACE_MARGIN_FRACTION))


def check_free_space(out_dir: str | os.PathLike, need_bytes: int) -> None:
    """Raise PrepError ``<out>: needs N GB, M GB free`` unless the filesystem of ``out_dir`` holds
    ``need_bytes`` plus :func:`space_margin`. ``out_dir`` need not exist yet (its nearest existing parent is asked)."""
    out = Path(out_dir)
    probe = out.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free  # what an unprivileged writer may use (f_bavail)
    margin = space_margin(need_bytes)
    if free < need_bytes + margin:
        raise PrepError(f"{out}: needs {format_bytes(need_bytes + margin)}, {format_bytes(free)} free "
                        f"({format_bytes(need_bytes)} of arrays plus a {format_bytes(margin)} margin); free some "
                        f"space or write to another --out")


def space_error(out_dir: str | os.PathLike, err: OSError) -> PrepError:
    """The PrepError shown when a write fails for lack of space (``err.errno`` in SPACE_ERRNOS)."""
    what = Path(err.filename).name if err.filename else "the output"
    return PrepError(f"{out_dir}: {err.strerror or os.strerror(err.errno)} while writing {what}; the partial "
                     f"files were removed and the previous output is unchanged (free some space or write to "
                     f"another --out)")


def npy_bytes(shape: tuple[int, ...], dtype) -> int:
    """Size on disk of a C-order ``.npy`` file of ``shape`` and ``dtype``: header plus data."""
    dtype = np.dtype(dtype)
    return len(_npy_header(tuple(shape), dtype)) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The header numpy itself writes (format 1.0, or 2.0 when the header does not fit 1.0)."""
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def allocate(f, offset: int, length: int) -> None:
    """Reserve disk blocks for ``length`` bytes of the open file ``f`` from ``offset``, so that a full disk shows
    up now, as an OSError, rather than hours later.

    ``os.posix_fallocate`` reserves the blocks without writing them. Where it is missing (not Linux) or the
    filesystem refuses it (EOPNOTSUPP, EINVAL), the range is written with zeros instead: slower, same guarantee on
    ordinary filesystems.
    """
    if length <= 0:
        return
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(f.fileno(), offset, length)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
                raise
    zeros = bytes(1 << 20)
    f.seek(offset)
    for start in range(0, length, len(zeros)):
        f.write(zeros[:min(len(zeros), length - start)])
    f.flush()


@contextmanager
def _naming(path: Path):
    """Give an OSError raised without a file name (ftruncate, posix_fallocate, write) the name of ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def create_array(path: str | os.PathLike, shape: tuple[int, ...], dtype) -> int:
    """Write a C-order ``.npy`` header for ``shape``, allocate the data region on disk, return its offset."""
    path, dtype = Path(path), np.dtype(dtype)
    header = _npy_header(tuple(shape), dtype)
    length = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    with _naming(path), open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + length)
        allocate(f, len(header), length)
    return len(header)


def write_rows(path: str | os.PathLike, offset: int, rows: np.ndarray) -> None:
    """Write C-contiguous ``rows`` at byte ``offset`` with an ordinary ``write``.

    Why not through a memory map: a store into a mapped page the filesystem cannot back (disk full, quota, a
    copy-on-write or network filesystem that ignored the preallocation) kills the process with SIGBUS, no message
    and no clean-up. ``write`` reports the same condition as an OSError that can be turned into a clear error.
    """
    rows = np.ascontiguousarray(rows)
    with _naming(path), open(path, "r+b") as f:
        f.seek(offset)
        f.write(memoryview(rows).cast("B"))


# ---------------------------------------------------------------------------------------------------------------
# Staging: every file is written in a hidden folder and moved into place on success
# ---------------------------------------------------------------------------------------------------------------

STAGING_PREFIX = ".staging-"
STAGING_NAME = re.compile(r"\.staging-[a-z0-9_]+")  # what tempfile.mkdtemp(prefix=STAGING_PREFIX) makes
OWNER_FILE = ".staging-owner.json"  # written first in each staging folder; never moved to the output
OWNER_MARK = "multimodal-emotion prep staging folder"


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a live process, from /proc; None where there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _owner_record() -> dict:
    pid = os.getpid()
    stat_ = _proc_stat(pid)
    return {"mark": OWNER_MARK, "pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(),
            "start_ticks": stat_[1] if stat_ else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _read_owner(folder: Path) -> dict | None:
    """The owner record of a staging folder, or None when the folder does not carry a valid one."""
    path = folder / OWNER_FILE
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return None
        with open(path, "rb") as f:
            owner = json.loads(f.read(4096).decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or owner.get("mark") != OWNER_MARK:
        return None
    valid = (type(owner.get("pid")) is int and owner["pid"] > 0 and isinstance(owner.get("host"), str)
             and (owner.get("start_ticks") is None or type(owner["start_ticks"]) is int)
             and (owner.get("boot_id") is None or isinstance(owner["boot_id"], str)))
    return owner if valid else None


def owner_is_running(owner: dict) -> bool:
    """Whether the process that wrote ``owner`` may still be running. When in doubt (another host, no /proc and
    a pid that exists), the answer is yes, so that a folder in use is never removed."""
    if owner["host"] != socket.gethostname():
        return True
    boot = _boot_id()
    if boot and owner.get("boot_id") and owner["boot_id"] != boot:
        return False  # the machine restarted since: no process of that boot survives
    pid = owner["pid"]
    found = _proc_stat(pid)
    if found is not None:
        state, start = found
        if state in ("Z", "X"):  # exited, not yet reaped by its parent
            return False
        return owner.get("start_ticks") is None or start == owner["start_ticks"]  # else: the pid was reused
    if Path("/proc/self/stat").is_file():
        return False  # /proc works and has no such pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@dataclass
class StagingFolder:
    """A staging folder found in an output folder, and what was done with it."""

    path: Path
    removed: bool
    reason: str
    freed: int = 0  # bytes of disk blocks released

    def message(self) -> str:
        if self.removed:
            return f"note: removed stale staging folder {self.path} ({self.reason}): freed {format_bytes(self.freed)}"
        return f"note: left {self.path} alone ({self.reason})"


def _allocated(st: os.stat_result) -> int:
    blocks = getattr(st, "st_blocks", None)
    return blocks * 512 if blocks is not None else st.st_size


def remove_stale_staging(out_dir: str | os.PathLike) -> list[StagingFolder]:
    """Remove the staging folders that killed runs (SIGKILL, out of memory, power loss) left in ``out_dir``.

    A folder is removed only when its name is one this module makes, it holds a valid owner file, it holds
    nothing but regular files, and its owner is no longer running (pid gone, or reused by a process that started
    at another time, or the machine rebooted since). Anything else is left as it is; folders that look like
    staging folders but fail a test are reported so that a user can judge them.
    """
    out = Path(out_dir)
    found: list[StagingFolder] = []
    try:
        entries = sorted(os.scandir(out), key=lambda e: e.name)
    except FileNotFoundError:
        return found
    for entry in entries:
        if not STAGING_NAME.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        owner = _read_owner(folder)
        if owner is None:
            found.append(StagingFolder(folder, False, f"no {OWNER_FILE} of this tool inside; delete it by hand "
                                                      f"if no run is writing there"))
            continue
        who = f"pid {owner['pid']} on {owner['host']}, started {owner.get('created', '?')}"
        if owner_is_running(owner):
            found.append(StagingFolder(folder, False, f"{who}, may still be running"))
            continue
        try:
            files = [(Path(e.path), e.stat(follow_symlinks=False)) for e in os.scandir(folder)]
        except OSError as e:
            found.append(StagingFolder(folder, False, f"cannot be listed: {e.strerror}"))
            continue
        if not all(stat.S_ISREG(st.st_mode) for _, st in files):
            found.append(StagingFolder(folder, False, "holds something other than plain files"))
            continue
        freed = 0
        try:
            for path, st in sorted(files, key=lambda f: f[0].name == OWNER_FILE):  # the owner file last
                path.unlink(missing_ok=True)
                freed += _allocated(st)
            folder.rmdir()
        except OSError as e:
            found.append(StagingFolder(folder, False, f"{who}, not running; removal failed: {e.strerror}", freed))
            continue
        found.append(StagingFolder(folder, True, f"{who}, no longer running", freed))
    return found


def _print_note(line: str) -> None:
    print(line, file=sys.stderr)


@contextmanager
def staged_output(out_dir: str | os.PathLike, need_bytes: int = 0, report: Callable[[str], None] = _print_note):
    """Stage every output file in a hidden folder inside ``out_dir`` and move them into place only on success.

    Before anything is written: stale staging folders of killed runs are removed (:func:`remove_stale_staging`,
    each one reported through ``report``) and, when ``need_bytes`` is given, the free space is checked
    (:func:`check_free_space`). The staging folder gets an owner file first (pid, host, boot id, process start
    time) so that a later run can tell whether its writer is gone.

    On any exception the staging folder is removed and files already in ``out_dir`` (a previous, complete run)
    are left untouched; a lack of space (ENOSPC, EDQUOT, EFBIG) becomes a PrepError naming ``out_dir``. Moving is
    an ``os.replace`` per file on the same filesystem, so a reader never sees a half-written file under its final
    name.
    """
    out = Path(out_dir)
    try:
        for folder in remove_stale_staging(out):
            report(folder.message())
        if need_bytes:
            check_free_space(out, need_bytes)
        created = not out.is_dir()
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as e:
        if e.errno in SPACE_ERRNOS:
            raise space_error(out, e) from e
        raise PrepError(f"{e.filename or out}: cannot create the output folder ({e.strerror or e})") from e
    try:
        store.write_json(stage / OWNER_FILE, _owner_record())
        yield stage
        for f in sorted(stage.iterdir()):
            if f.name != OWNER_FILE:
                os.replace(f, out / f.name)
        created = False
    except OSError as e:
        if e.errno in SPACE_ERRNOS:
            raise space_error(out, e) from e
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created:  # a failed first run leaves no empty output folder behind
            with suppress(OSError):
                out.rmdir()


def shrink_array(path: str | os.PathLike, n_rows: int, chunk: int = 256) -> None:
    """Keep only the first ``n_rows`` rows of a ``.npy`` file.

    In place when possible: the header is rewritten with the new shape (padded to its old length, which the
    format allows) and the file truncated, so no data moves. Otherwise the rows are copied chunk by chunk into a
    new C-order file, so resident memory stays at one chunk.
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
    row_bytes = int(np.prod(new_shape[1:], dtype=np.int64)) * dtype.itemsize

    def copy(f):  # chunk by chunk into a new C-order file: resident memory stays at one chunk
        header = _npy_header(new_shape, dtype)
        f.write(header)
        allocate(f, len(header), n_rows * row_bytes)
        f.seek(len(header))
        for i in range(0, n_rows, chunk):
            src = np.load(path, mmap_mode="r", allow_pickle=False)
            f.write(memoryview(np.ascontiguousarray(src[i:min(i + chunk, n_rows)])).cast("B"))
            del src

    with _naming(path):
        store.atomic_write(path, copy)


class RowWriter:
    """Fill a preallocated ``.npy`` file row by row; ``close()`` trims the rows never written.

    The file's full size is allocated on disk when the writer is made (:func:`allocate`), so a disk too small
    fails at once with an OSError. Rows are buffered one block at a time and written with :func:`write_rows`, so
    resident memory stays at one block whatever the dataset size, and a disk filled by someone else during the run
    gives an OSError, never a SIGBUS.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype, block: int = 128):
        self.path, self.block, self.pending, self.rows = Path(path), block, [], 0
        self.capacity, self.row_shape, self.dtype = shape[0], tuple(shape[1:]), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.offset = create_array(self.path, shape, self.dtype)

    def append(self, row: np.ndarray) -> None:
        if self.rows + len(self.pending) >= self.capacity:
            raise IndexError(f"{self.path}: more than {self.capacity} rows appended")
        self.pending.append(row)
        if len(self.pending) == self.block:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            block = np.empty((len(self.pending),) + self.row_shape, self.dtype)
            block[...] = np.stack(self.pending)  # the casting and shape checks of an array assignment
            write_rows(self.path, self.offset + self.rows * self.row_bytes, block)
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


def sha256_prefix(path: str | os.PathLike, n: int = 12) -> str:
    """Hex sha256 of a file, first ``n`` characters (used to record and check source files)."""
    return store.file_sha256(path)[:n]
