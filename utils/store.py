"""Everything the project writes goes through here: whole-or-nothing files (:func:`atomic_write`) named by :func:`key`
over settings, input digests and :func:`code_digest` of their source, so an edit never loads a stale result."""

import hashlib
import inspect
import json
import math
import mmap
import os
import re
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np
import torch

RACY_SECONDS = 2.0  # a file changed more recently than this has no identity: a write in the same tick would not show


def digest(*parts: Any) -> str:
    """sha256 (hex) of JSON-able parts and numpy arrays (dtype, shape and bytes), in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"array\0{part.dtype.str}\0{part.shape}\0".encode())
            h.update(np.ascontiguousarray(part).data)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0\0")
    return h.hexdigest()


def key(*parts: Any) -> str:
    """A short content key (16 hex digits) for a file name: :func:`digest` of ``parts``."""
    return digest(*parts)[:16]


def code_digest(*sources: ModuleType | Callable | str | os.PathLike) -> str:
    """Digest of the source behind a result: file paths, a module, a function's whole module, a package's ``.py``."""
    files: set[Path] = set()
    for src in sources:
        if isinstance(src, (str, os.PathLike)):
            files.add(Path(src).resolve())
        else:
            path = Path(inspect.getfile(src if isinstance(src, ModuleType) else inspect.getmodule(src))).resolve()
            files.update(path.parent.glob("*.py") if path.name == "__init__.py" else [path])
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_identity(array: np.ndarray) -> str | None:
    """What names a read-only whole-file memmap's bytes without reading them (docs/encoders.md), else ``None``."""
    if not (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename
            and array.mode == "r"):
        return None  # in memory, a slice, or writable (its bytes can change without the file's times moving)
    try:
        st = os.stat(array.filename)
    except OSError:
        return None
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_SECONDS * 1e9:
        return None
    return "\0".join(str(v) for v in (os.path.realpath(array.filename), st.st_dev, st.st_ino, st.st_size,
                                        st.st_mtime_ns, st.st_ctime_ns, array.offset, array.dtype.str,
                                        array.shape, array.strides))


def remembered_digest(array: np.ndarray, folder: str | os.PathLike,
                      compute: Callable[[np.ndarray], str] | None = None) -> str | None:
    """``array``'s digest remembered in ``folder/digests`` by :func:`file_identity`, else ``compute(array)``."""
    identity = file_identity(array)
    memo = Path(folder) / "digests" / f"{key(identity)}.txt" if identity is not None else None
    try:
        text = memo.read_text().strip() if memo is not None else ""
    except OSError:
        text = ""
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        text = None if compute is None else compute(array)
        if memo is not None and text is not None:
            atomic_write(memo, text + "\n")
    return text


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any] | bytes | str) -> Path:
    """Write ``path`` whole or not at all (``write``: bytes/text, or a function given the open file); a temporary per
    process and call, so ranks writing one file at once never share one: the last rename wins."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(tmp, "wb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write.encode() if isinstance(write, str) else write)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN and inf become ``None`` (JSON has no NaN; ``null`` marks an undefined metric)."""
    if isinstance(obj, (np.ndarray, np.generic)):
        obj = obj.tolist()  # nested lists of Python scalars, or one
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj) if isinstance(obj, Path) else obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (see :func:`jsonable`), serialised before anything is written, then written atomically."""
    return atomic_write(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """A compressed ``.npz`` that loads with ``allow_pickle=False``: object arrays are refused, naming the key."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    if bad := [k for k, v in arrays.items() if v.dtype == object]:
        raise ValueError(f"{path}: array {bad[0]!r} has dtype object, which would need pickle to load")
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def save_state(path: str | os.PathLike, module: torch.nn.Module) -> Path:
    """A plain state_dict on the host: tensors only, loadable with ``torch.load(weights_only=True)``."""
    return atomic_write(path, lambda f: torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, f))


def load_state(path: str | os.PathLike, module: torch.nn.Module, device=None) -> torch.nn.Module:
    module.load_state_dict(torch.load(path, map_location=device or "cpu", weights_only=True))
    return module
