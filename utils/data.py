"""The prepared artefacts, memory-mapped and checked on opening: a stale or partial prep folder fails here."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import paths
from .labels import CATEGORIES, CONTINUOUS

SPLITS = ("train", "val", "test")


class ArtefactError(ValueError):
    """A prepared artefact that exists but is inconsistent (wrong shape, dtype, row count or column)."""


def _require(dataset: str, split: str, files: list[str], root) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    return paths.require_artefacts(dataset, files, root)


def _array(path: Path, dtype, trailing: tuple, rows: int | None = None, csv: Path | None = None) -> np.ndarray:
    """Memory-map a ``.npy`` and check dtype, trailing shape (``None`` entries are free) and row count."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ArtefactError(f"{path}: not a readable .npy array ({e})") from e
    if arr.dtype != dtype:
        raise ArtefactError(f"{path}: dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if arr.ndim != len(trailing) + 1 or any(t is not None and s != t for s, t in zip(arr.shape[1:], trailing)):
        want = "(N, " + ", ".join("*" if t is None else str(t) for t in trailing) + ")"
        raise ArtefactError(f"{path}: shape {arr.shape}, expected {want}")
    if rows is not None and arr.shape[0] != rows:
        raise ArtefactError(f"{path}: {arr.shape[0]} rows but {csv} has {rows} rows; re-run the prep script")
    return arr


def _table(path: Path, text_columns: tuple, required: tuple) -> pd.DataFrame:
    """Read a split CSV keeping text exactly (a caption "NA" or "null" stays a string, an empty one is "")."""
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in ("valence", "arousal",
                            "dominance")}, dtype={c: str for c in text_columns})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ArtefactError(f"{path}: cannot parse as CSV ({e})") from e
    if missing := [c for c in required if c not in table.columns]:
        raise ArtefactError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


@dataclass(eq=False)
class EmoticSplit:
    """One Emotic split: memory-mapped arrays plus the per-person table, row i everywhere is the same person."""
    context: np.ndarray  # (N, 224, 224, 3) uint8, whole image squashed to a square
    body: np.ndarray     # (N, 128, 128, 3) uint8, crop of the clipped body box
    cat: np.ndarray      # (N, 26) float32 multi-hot, labels.CATEGORIES order
    cont: np.ndarray     # (N, 3) float32 valence, arousal, dominance on 1..10
    table: pd.DataFrame = field(repr=False)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def descriptions(self) -> list[str]:
        return self.table["description"].astype(str).tolist()

    @property
    def boxes_224(self) -> np.ndarray:
        """(N, 4) float32 body boxes in the context array's grid: where a scene pixel also shows in the body crop."""
        t, (h, w) = self.table, self.context.shape[1:3]
        sx, sy = w / t["image_width"].to_numpy(np.float64), h / t["image_height"].to_numpy(np.float64)
        return np.stack([t["x1"] * sx, t["y1"] * sy, t["x2"] * sx, t["y2"] * sy], axis=1).astype(np.float32)


@dataclass(eq=False)
class FlickrSplit:
    """One Flickr8k split: one image row per image, several caption rows per image."""
    images: np.ndarray        # (M, 224, 224, 3) uint8
    captions: pd.DataFrame = field(repr=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def caption_texts(self) -> list[str]:
        return self.captions["caption"].astype(str).tolist()

    @property
    def caption_image(self) -> np.ndarray:  # (C,) int64: the image row of each caption
        return self.captions["image_index"].to_numpy(np.int64)


def load_emotic(split: str, root=None) -> EmoticSplit:
    """Open one prepared Emotic split (``root`` defaults to ``paths.artefact_dir('emotic')``)."""
    files = [f"{split}_{k}_arr.npy" for k in ("context", "body", "cat", "cont")] + [f"{split}.csv"]
    root = _require("emotic", split, files, root)
    table = _table(root / files[4], ("folder", "filename", "categories", "gender", "age", "description"),
                   ("image_width", "image_height", "x1", "y1", "x2", "y2", "description"))
    n, csv = len(table), root / files[4]
    images = [_array(root / f, np.uint8, (None, None, 3), n, csv) for f in files[:2]]
    labels = [_array(root / f, np.float32, (len(c),), n, csv) for f, c in zip(files[2:4], (CATEGORIES, CONTINUOUS))]
    return EmoticSplit(*images, *labels, table)


def load_flickr(split: str, root=None) -> FlickrSplit:
    """Open one prepared Flickr8k split (``root`` defaults to ``paths.artefact_dir('flickr8k')``)."""
    files = [f"{split}_images.npy", f"{split}_captions.csv"]
    root = _require("flickr8k", split, files, root)
    captions = _table(root / files[1], ("image", "caption"), ("image_index", "image", "caption_number", "caption"))
    images = _array(root / files[0], np.uint8, (None, None, 3))
    idx = pd.to_numeric(captions["image_index"], errors="coerce").to_numpy()
    if (bad := np.flatnonzero(~np.isfinite(idx) | (idx < 0) | (idx >= len(images)) | (idx != np.round(idx)))).size:
        raise ArtefactError(f"{root / files[1]}: line {bad[0] + 2} has image_index "
                            f"{captions['image_index'].iloc[bad[0]]}, not a row of {files[0]} (0..{len(images) - 1})")
    captions["image_index"] = idx.astype(np.int64)
    return FlickrSplit(images, captions)
