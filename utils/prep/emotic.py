"""Emotic (PAMI version): read ``Annotations.mat``, decide which persons to keep, and describe each person in words.

Why a module of its own: ``mat2py.py`` only orchestrates (streaming, staging, the command line); everything
that knows the Emotic format lives here, where tests can reach it without writing any arrays.

The format: ``train``/``val``/``test`` are 1xN struct arrays of image records; each record holds
a 1xP struct array ``person``. Train persons carry one annotation (``annotations_categories.categories``,
``annotations_continuous``); val/test persons carry per-annotator struct arrays plus the ``combined_categories`` and
``combined_continuous`` fields that published code uses as their labels. Fields are read by name, and every
"struct array of length 1" or "cell of one string" that ``squeeze_me=True`` collapses to a scalar is accepted.

Text sources, none of which may look at the labels:

- :func:`metadata_description` builds a sentence from gender, age, the box's size and place in the frame and the
  source collection;
- :class:`DescriptionFile` looks up a user CSV keyed by ``split,index`` or ``folder,filename,x1,y1,x2,y2``;
- :class:`Captioner` runs any ``transformers`` image-to-text model on each person's box crop, with an on-disk cache.
"""
from __future__ import annotations

import hashlib
import math
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from utils.images import pixel_box  # noqa: F401 (prep's name)
from utils.labels import CATEGORIES, CATEGORY_INDEX
from utils.paths import cache_dir
from utils.prep.io import PrepError, sha256_prefix

SPLITS = ("train", "val", "test")

#: Why a person is dropped, in the order the checks run. Each skipped person is counted once, under the first
#: reason that applies: label checks run first (they need no I/O, and a record with no usable person is never
#: decoded), then the image-level checks (all remaining persons of that image), then the box against the real image.
SKIP_REASONS = ("nan_continuous", "no_category", "missing_image", "unreadable_image", "empty_box")

#: Fields read from each record and person. ``image_size`` and ``original_database`` are optional: the box is clipped
#: against the decoded image, so they only feed the report and the metadata sentence.
RECORD_FIELDS = ("filename", "folder", "person")
PERSON_FIELDS = {
    "train": ("body_bbox", "annotations_categories", "annotations_continuous", "gender", "age"),
    "val": ("body_bbox", "combined_categories", "combined_continuous", "gender", "age"),
    "test": ("body_bbox", "combined_categories", "combined_continuous", "gender", "age"),
}


@dataclass(frozen=True)
class Person:
    """One annotated person, labels already reduced to what the split's published protocol uses."""

    record: int
    person: int
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 as annotated (may reach outside the image)
    categories: tuple[str, ...]  # canonical order, no duplicates
    vad: tuple[float, float, float]  # valence, arousal, dominance on 1..10 (NaN when absent)
    gender: str
    age: str

    def label_skip_reason(self, keep_unlabelled: bool = False) -> str | None:
        """The reason to drop this person that can be decided from the labels alone, or None to keep it.

        ``keep_unlabelled`` keeps a person without any category (its multi-hot row is all zeros), as the published
        Tandon-A/emotic preparation does; a NaN continuous value is dropped either way.
        """
        if any(math.isnan(v) for v in self.vad):
            return "nan_continuous"
        if not self.categories and not keep_unlabelled:
            return "no_category"
        return None

    def multi_hot(self) -> np.ndarray:
        """(26,) float32 vector in canonical category order."""
        out = np.zeros(len(CATEGORIES), dtype=np.float32)
        out[[CATEGORY_INDEX[c] for c in self.categories]] = 1.0
        return out


@dataclass(frozen=True)
class Record:
    """One image of a split and its persons."""

    split: str
    index: int
    folder: str
    filename: str
    annotated_size: tuple[int, int] | None  # (width, height) from ``image_size``; reported, never trusted
    source: str  # ``original_database.name``, else the first component of ``folder``
    persons: tuple[Person, ...]


# ---------------------------------------------------------------------------------------------------------------
# Reading the .mat file
# ---------------------------------------------------------------------------------------------------------------

def load_annotations(path: str | os.PathLike, splits: Sequence[str] = SPLITS) -> dict[str, list[Record]]:
    """Parse ``Annotations.mat`` into records, by field name. Raises :class:`PrepError` naming file and problem."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise PrepError(f"{path}: annotations file not found (expected Emotic's Annotations/Annotations.mat)")
    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    except NotImplementedError as e:  # scipy's message for MATLAB v7.3 (HDF5) files
        raise PrepError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; re-save it with save -v7 ({e})") from e
    except Exception as e:  # scipy raises ValueError, TypeError, OSError... for files that are not .mat
        raise PrepError(f"{path}: cannot read as a MATLAB .mat file ({e})") from e

    present = [s for s in SPLITS if s in mat]
    if not present:
        keys = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise PrepError(f"{path}: no train, val or test struct array in this .mat (variables found: {keys})")
    out = {}
    for split in splits:
        if split not in SPLITS:
            raise PrepError(f"unknown split {split!r}: expected some of {', '.join(SPLITS)}")
        if split not in mat:
            raise PrepError(f"{path}: has no {split!r} struct array (found: {', '.join(present)}); "
                            f"choose splits with --splits")
        out[split] = [_parse_record(path, split, i, rec) for i, rec in enumerate(_struct_list(mat[split]))]
    return out


def _struct_list(x) -> list:
    """A MATLAB struct array as a list: ``squeeze_me`` turns a 1x1 struct array into the bare struct."""
    if isinstance(x, np.ndarray):
        return list(x.ravel())
    return [x]


def _field(obj, name: str, where: str, mat: Path):
    if name not in getattr(obj, "_fieldnames", ()):
        raise PrepError(f"{mat}: {where}: missing field {name!r}")
    return getattr(obj, name)


def _text(x, where: str, mat: Path) -> str:
    """A MATLAB char array; an empty one arrives as an empty numpy array."""
    if isinstance(x, str):
        return x.strip()
    if isinstance(x, np.ndarray) and x.size == 0:
        return ""
    raise PrepError(f"{mat}: {where}: expected text, got {type(x).__name__}")


def _strings(x, where: str, mat: Path) -> list[str]:
    """A cell array of strings (or one string, squeezed out of a 1x1 cell) as a flat list, empties dropped."""
    if isinstance(x, str):
        return [x.strip()] if x.strip() else []
    if isinstance(x, np.ndarray):
        return [s for item in x.ravel() for s in _strings(item, where, mat)]
    raise PrepError(f"{mat}: {where}: expected a cell array of category names, got {type(x).__name__}")


def _number(x) -> float:
    """A MATLAB scalar; an empty array (a value never filled in) counts as NaN."""
    arr = np.asarray(x, dtype=np.float64).ravel()
    return float(arr[0]) if arr.size else math.nan


def _categories(names: list[str], where: str, mat: Path) -> tuple[str, ...]:
    unknown = [n for n in names if n not in CATEGORY_INDEX]
    if unknown:
        raise PrepError(f"{mat}: {where}: unknown emotion category {unknown[0]!r} "
                        f"(expected one of the 26 Emotic categories, e.g. {CATEGORIES[0]!r})")
    return tuple(sorted(set(names), key=CATEGORY_INDEX.__getitem__))


def _vad(struct, where: str, mat: Path) -> tuple[float, float, float]:
    try:
        return tuple(_number(_field(struct, k, where, mat)) for k in ("valence", "arousal", "dominance"))
    except (TypeError, ValueError) as e:
        raise PrepError(f"{mat}: {where}: continuous annotation is not numeric ({e})") from e


def _parse_person(mat: Path, split: str, rec_i: int, p_i: int, p) -> Person:
    where = f"{split} record {rec_i} person {p_i}"
    for name in PERSON_FIELDS.get(split, PERSON_FIELDS["test"]):
        _field(p, name, where, mat)
    try:
        bbox = np.asarray(p.body_bbox, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        bbox = np.zeros(0)
    if bbox.size != 4:
        raise PrepError(f"{mat}: {where}: field 'body_bbox' must hold 4 numbers x1 y1 x2 y2, got {p.body_bbox!r}")
    if split == "train":
        # One annotator in the real data; should there be several, take the union and the mean.
        annotators = _struct_list(p.annotations_categories)
        names = [c for a in annotators for c in _strings(_field(a, "categories", where + " annotations_categories",
                                                                mat), where, mat)]
        vads = [_vad(a, where + " annotations_continuous", mat) for a in _struct_list(p.annotations_continuous)]
        vad = tuple(float(np.mean(v)) for v in zip(*vads)) if vads else (math.nan,) * 3
    else:
        names = _strings(p.combined_categories, where + " combined_categories", mat)
        combined = _struct_list(p.combined_continuous)
        vad = _vad(combined[0], where + " combined_continuous", mat) if combined else (math.nan,) * 3
    return Person(record=rec_i, person=p_i, bbox=tuple(float(v) for v in bbox),
                  categories=_categories(names, where, mat), vad=vad,
                  gender=_text(p.gender, where + " gender", mat), age=_text(p.age, where + " age", mat))


def _parse_record(mat: Path, split: str, i: int, rec) -> Record:
    where = f"{split} record {i}"
    if not hasattr(rec, "_fieldnames"):
        raise PrepError(f"{mat}: {where}: expected a struct, got {type(rec).__name__}")
    for name in RECORD_FIELDS:
        _field(rec, name, where, mat)
    folder = _text(rec.folder, where + " folder", mat)
    filename = _text(rec.filename, where + " filename", mat)
    size = None
    if "image_size" in rec._fieldnames and hasattr(rec.image_size, "_fieldnames"):
        w, h = (_number(getattr(rec.image_size, k, np.empty(0))) for k in ("n_col", "n_row"))
        size = (int(w), int(h)) if not (math.isnan(w) or math.isnan(h)) else None
    source = ""
    if "original_database" in rec._fieldnames and hasattr(rec.original_database, "_fieldnames"):
        name = getattr(rec.original_database, "name", "")
        source = name.strip() if isinstance(name, str) else ""
    source = source or folder.split("/")[0]
    persons = tuple(_parse_person(mat, split, i, j, p) for j, p in enumerate(_struct_list(rec.person)))
    return Record(split, i, folder, filename, size, source, persons)


# ---------------------------------------------------------------------------------------------------------------
# The split CSV as published Emotic code reads it
# ---------------------------------------------------------------------------------------------------------------

#: Columns of the per-split CSV read by Tandon-A/emotic's ``Emotic_CSVDataset`` (and written by its own prep script).
#: They sit next to our own columns in ``{split}.csv``, so one file serves both readers: pandas column names are
#: case-sensitive, so ``Folder`` and ``folder`` never clash. List cells are Python literals for ``ast.literal_eval``.
PUBLISHED_CSV_COLUMNS = ("Index", "Folder", "Filename", "Image Size", "BBox", "Categorical_Labels",
                         "Continuous_Labels", "Gender", "Age")


def _literal(values) -> str:
    """A list as Python source, e.g. ``[10, 5, 50, 55]`` or ``['Happiness', 'Peace']`` (numpy scalars converted first,
    since numpy 2 would print ``np.float64(6.0)``, which ``ast.literal_eval`` rejects)."""
    return repr([v if isinstance(v, str) else v.item() if hasattr(v, "item") else v for v in values])


def published_csv_fields(index: int, record: Record, person: Person, box: Sequence[int], width: int,
                         height: int) -> dict:
    """One person's cells in the published columns.

    ``Image Size`` is ``[width, height]`` of the decoded image and ``BBox`` the clipped integer box ``[x1, y1, x2,
    y2]`` (the same box our ``x1..y2`` hold, so ``image.crop(BBox)`` is the body crop); ``Categorical_Labels`` lists
    category names in the canonical order (``[]`` for a person kept with ``--keep-unlabelled``);
    ``Continuous_Labels`` is ``[valence, arousal, dominance]`` on the 1..10 scale. The image path is
    ``<image root>/Folder/Filename``, as for our ``folder``/``filename``.
    """
    return {"Index": int(index), "Folder": record.folder, "Filename": record.filename,
            "Image Size": _literal([int(width), int(height)]), "BBox": _literal([int(v) for v in box]),
            "Categorical_Labels": _literal(person.categories),
            "Continuous_Labels": _literal([float(v) for v in person.vad]),
            "Gender": person.gender, "Age": person.age}


# ---------------------------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------------
# Descriptions
# ---------------------------------------------------------------------------------------------------------------

DESCRIPTION_SOURCES = ("metadata", "file", "captioner")

_NOUNS = {  # (age, gender) -> noun; Emotic's values are Adult/Teenager/Kid and Male/Female
    ("adult", "male"): "man", ("adult", "female"): "woman", ("adult", ""): "adult",
    ("teenager", "male"): "teenage boy", ("teenager", "female"): "teenage girl", ("teenager", ""): "teenager",
    ("kid", "male"): "boy", ("kid", "female"): "girl", ("kid", ""): "child",
    ("", "male"): "male person", ("", "female"): "female person",
}


def metadata_description(person: Person, record: Record, box: Sequence[int], width: int, height: int) -> str:
    """A sentence from fields that are not labels: who (age, gender), how large and where in the frame, which collection.

    It is the always-available, offline text source; it carries no emotion information, so any text-only result above
    chance on it comes from the scene statistics it names.
    """
    noun = _NOUNS.get((person.age.lower(), person.gender.lower()), "person")
    article = "An" if noun[0] in "aeiou" else "A"
    x1, y1, x2, y2 = box
    frac = (x2 - x1) * (y2 - y1) / float(width * height)
    size = ("filling most of the frame" if frac >= 0.5 else "taking up a large part of the frame" if frac >= 0.15
            else "of medium size in the frame" if frac >= 0.03 else "small in the frame")
    cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    place = f"at the {' '.join(w for w in (row, col) if w)}" if (row or col) else "in the centre"
    return f"{article} {noun}, {size}, {place} of a photo from the {record.source} collection."


class DescriptionFile:
    """Descriptions a user brings, as CSV with a ``description`` column and, per row, one of two keys:

    - ``split,index``: ``index`` is the row in the prepared ``{split}.csv`` (stable for a given input, so a first
      run with ``--descriptions metadata`` gives the rows to describe);
    - ``folder,filename,x1,y1,x2,y2``: the person's box, matched within ``tolerance`` pixels (largest coordinate
      difference) against the box as annotated or as clipped; the nearest box wins.

    An empty description counts as missing.
    """

    def __init__(self, path: str | os.PathLike, tolerance: float = 1.0):
        import pandas as pd

        self.path = Path(path)
        self.tolerance = tolerance
        if not self.path.is_file():
            raise PrepError(f"{self.path}: descriptions file not found")
        try:
            df = pd.read_csv(self.path, dtype=str, keep_default_na=False, encoding="utf-8")
        except Exception as e:  # pandas raises ParserError, UnicodeDecodeError, EmptyDataError...
            raise PrepError(f"{self.path}: cannot read as CSV ({e})") from e
        df.columns = [c.strip().lower() for c in df.columns]
        # A prepared {split}.csv also holds the published columns (Index, Folder, ...): same values, so keep the first.
        df = df.loc[:, ~df.columns.duplicated()]
        by_index, by_box = {"split", "index"}, {"folder", "filename", "x1", "y1", "x2", "y2"}
        if "description" not in df.columns or not (by_index <= set(df.columns) or by_box <= set(df.columns)):
            raise PrepError(f"{self.path}: needs a 'description' column and key columns 'split,index' or "
                            f"'folder,filename,x1,y1,x2,y2' (found: {', '.join(df.columns)})")
        self._by_index: dict[tuple[str, int], str] = {}
        self._by_image: dict[tuple[str, str], list[tuple[np.ndarray, str]]] = {}
        for line, row in enumerate(df.to_dict("records"), start=2):
            text = row["description"].strip()
            try:
                if by_index <= set(df.columns) and row["split"].strip():
                    self._by_index[(row["split"].strip(), int(row["index"]))] = text
                elif by_box <= set(df.columns) and row["filename"].strip():
                    box = np.array([float(row[k]) for k in ("x1", "y1", "x2", "y2")])
                    key = (row["folder"].strip().strip("/"), row["filename"].strip())
                    self._by_image.setdefault(key, []).append((box, text))
            except ValueError as e:
                raise PrepError(f"{self.path}: line {line}: bad key value ({e})") from e

    def lookup(self, split: str, index: int, record: Record, person: Person, box: Sequence[int]) -> str | None:
        """The description of one kept person, or None when the file has none."""
        text = self._by_index.get((split, index))
        if text:
            return text
        best, best_d = None, self.tolerance
        for cand, cand_text in self._by_image.get((record.folder.strip("/"), record.filename), ()):
            d = min(np.abs(cand - np.asarray(person.bbox)).max(), np.abs(cand - np.asarray(box)).max())
            if d <= best_d and cand_text:
                best, best_d = cand_text, d
        return best


class CaptionCache:
    """Captions on disk (SQLite), keyed by model fingerprint and crop key, so a rerun never recomputes one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS captions (model TEXT, key TEXT, caption TEXT, "
                         "PRIMARY KEY (model, key))")

    def get(self, model: str, key: str) -> str | None:
        row = self._db.execute("SELECT caption FROM captions WHERE model=? AND key=?", (model, key)).fetchone()
        return row[0] if row else None

    def put_many(self, model: str, items: dict[str, str]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO captions VALUES (?, ?, ?)",
                                 [(model, k, v) for k, v in items.items()])

    def close(self) -> None:
        self._db.close()


class Captioner:
    """Any ``transformers`` image-to-text model (hub name or local folder) run on person crops, cached on disk.

    Unit: one caption per person, from the crop of its (clipped) box, downscaled so its longer side is at most
    ``crop_side`` pixels. Per-person crops describe the person rather than repeating one caption for every person
    of a crowded image. Cache key: the model fingerprint (name, weights hash, generation settings) and the image
    file's content hash plus the box, so renaming files keeps hits and a changed image misses.
    """

    def __init__(self, name: str = "Salesforce/blip-image-captioning-base", cache: str | os.PathLike | None = None,
                 max_new_tokens: int = 30, batch_size: int = 8, crop_side: int = 384, prompt: str | None = None):
        self.name, self.max_new_tokens, self.batch_size = name, max_new_tokens, batch_size
        self.crop_side, self.prompt = crop_side, prompt
        if cache is None:
            cache = cache_dir() / "captions.sqlite"
        self.cache = CaptionCache(cache)
        self.fingerprint = "|".join([name, weights_hash(name), f"tokens={max_new_tokens}",
                                     f"side={crop_side}", f"prompt={prompt or ''}"])
        self._model = self._processor = self._decoder = None
        self.hits = self.computed = 0

    def _load(self) -> None:
        """Load lazily: a fully cached rerun never imports torch or touches the model."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        try:
            self._processor = AutoProcessor.from_pretrained(self.name)
            self._model = AutoModelForImageTextToText.from_pretrained(self.name).eval()
        except Exception as e:  # OSError (not found / offline), ValueError (not an image-to-text model)
            raise PrepError(f"captioner {self.name!r}: cannot load it as a transformers image-to-text model "
                            f"({type(e).__name__}: {e}). Without internet, pass a local folder with --captioner.") \
                from e
        # A VisionEncoderDecoder folder may give only an image processor; its tokenizer decodes.
        self._decoder = self._processor if hasattr(self._processor, "batch_decode") else \
            AutoTokenizer.from_pretrained(self.name)
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._model.to(self._device)

    def cached(self, key: str) -> str | None:
        text = self.cache.get(self.fingerprint, key)
        self.hits += text is not None
        return text

    def caption(self, items: dict[str, "PIL.Image.Image"]) -> dict[str, str]:  # noqa: F821
        """Caption crops ``{key: image}`` (cache misses), store them, and return ``{key: caption}``."""
        import torch

        if not items:
            return {}
        if self._model is None:
            self._load()
        keys, out = list(items), {}
        for i in range(0, len(keys), self.batch_size):
            batch = keys[i:i + self.batch_size]
            images = [items[k].convert("RGB") for k in batch]
            kwargs = {"images": images, "return_tensors": "pt"}
            if self.prompt:
                kwargs["text"] = [self.prompt] * len(images)
            inputs = self._processor(**kwargs).to(self._device)
            with torch.inference_mode():
                ids = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            texts = [t.strip() for t in self._decoder.batch_decode(ids, skip_special_tokens=True)]
            out.update(zip(batch, texts))
        self.cache.put_many(self.fingerprint, out)
        self.computed += len(out)
        return out


def weights_hash(name: str) -> str:
    """Hash of a local model folder's weight files, so retraining a model in place invalidates its captions."""
    folder = Path(name)
    if not folder.is_dir():
        return "hub"  # hub revisions are immutable in practice; the name is the key
    h = hashlib.sha256()
    for f in sorted(folder.glob("*")):
        if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
            h.update(f"{f.name}:{sha256_prefix(f, 64)};".encode())
    return h.hexdigest()[:16]

