"""Reading Flickr8k as downloaded: layout detection, caption parsing and the split by image.

Flickr8k circulates in two layouts, and both must give the same artefacts:

- **Kaggle**: ``captions.txt``, a CSV with header ``image,caption`` (captions quoted when they hold commas or
  quotes), and the photos in ``Images/``.
- **Original**: ``Flickr8k_text/Flickr8k.token.txt`` with lines ``<image>#<n><TAB><caption>``, the photos in
  ``Flickr8k_Dataset/`` (the official zip spells it ``Flicker8k_Dataset/``), and the standard split lists
  ``Flickr_8k.{train,dev,test}Images.txt``. The text files may also sit directly under the root.

Caption text is kept exactly as stored: only the line ending goes, so commas, quotes, non-ASCII and even
leading or trailing spaces survive (a tokenizer can strip; a prep script that strips cannot be undone).
A caption that is empty or only whitespace is skipped and counted. The CSV is read with the ``csv`` module rather
than pandas because pandas would turn a caption such as ``NA`` into a missing value.

Nothing here decodes images: this module decides *which* captions and images go to *which* split, and
``prepare_flickr8k.py`` streams the pixels.
"""
from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.prep.io import PrepError

SPLITS = ("train", "val", "test")
#: The standard split of Flickr8k (Hodosh et al. 2013); a seeded split keeps these proportions.
STANDARD_SIZES = {"train": 6000, "val": 1000, "test": 1000}
#: Split list file per split name; the dataset calls the validation split "dev".
LIST_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
TOKEN_FILE = "Flickr8k.token.txt"
KAGGLE_CAPTIONS = "captions.txt"
# Folder names seen in the wild, most specific first (the official zip sometimes unpacks one level deeper).
ORIGINAL_IMAGE_DIRS = ("Flickr8k_Dataset/Flicker8k_Dataset", "Flickr8k_Dataset/Flickr8k_Dataset",
                       "Flicker8k_Dataset", "Flickr8k_Dataset")
KAGGLE_IMAGE_DIRS = ("Images", "images")

# Reasons recorded in the manifest, kept in one place so tests and readers can refer to them.
EMPTY_CAPTION = "empty caption"
DUPLICATE_NUMBER = "duplicate caption number"
NO_CAPTIONS = "listed image has no captions"
DUPLICATE_LISTED = "image listed twice in its split list"
NOT_LISTED = "image not in any split list"
NO_USABLE_CAPTIONS = "image has no usable captions"


@dataclass(frozen=True)
class Source:
    """Where each part of a Flickr8k download lives."""

    layout: str                      # "kaggle" or "original"
    root: Path
    captions_file: Path
    image_dir: Path
    split_lists: dict[str, Path]     # split name -> list file; empty when the split is seeded

    def as_dict(self) -> dict:
        return {"root": str(self.root), "layout": self.layout, "captions_file": str(self.captions_file),
                "image_dir": str(self.image_dir),
                "split_lists": {k: str(v) for k, v in self.split_lists.items()}}


@dataclass(frozen=True)
class Caption:
    image: str
    number: int      # "#n" in the original layout; position among the image's rows in the Kaggle layout
    text: str
    line: int        # line in the caption file, for error messages


@dataclass
class ImageItem:
    """One image of a split with the captions that will be written for it, by caption number."""

    name: str
    captions: list[tuple[int, str]]


@dataclass(frozen=True)
class Skip:
    """A record left out of the artefacts. ``number`` is None when a whole image is left out."""

    split: str | None
    image: str
    number: int | None
    reason: str

    def as_dict(self) -> dict:
        return {"split": self.split, "image": self.image, "caption_number": self.number, "reason": self.reason}


@dataclass
class Plan:
    """The outcome of parsing: the images of each split, and everything skipped on the way."""

    source: Source
    split_source: str                               # "lists" or "seeded"
    splits: dict[str, list[ImageItem]]
    skips: list[Skip] = field(default_factory=list)
    # (split or None, "images" | "captions") -> Counter of reasons
    skipped: dict[tuple[str | None, str], Counter] = field(default_factory=dict)

    def skip(self, split: str | None, image: str, number: int | None, reason: str, n_captions: int = 0) -> None:
        """Record one skipped image (``number`` None, dropping ``n_captions`` captions with it) or one caption."""
        self.skips.append(Skip(split, image, number, reason))
        if number is None:
            self.skipped.setdefault((split, "images"), Counter())[reason] += 1
            if n_captions:
                self.skipped.setdefault((split, "captions"), Counter())[reason] += n_captions
        else:
            self.skipped.setdefault((split, "captions"), Counter())[reason] += 1

    def skipped_counts(self, split: str | None) -> dict:
        return {kind: dict(sorted(self.skipped.get((split, kind), Counter()).items()))
                for kind in ("images", "captions")}


# --------------------------------------------------------------------------------------------------------------
# Layout detection


def _first_existing(root: Path, names, want_dir: bool) -> Path | None:
    for name in names:
        p = root / name
        if (p.is_dir() if want_dir else p.is_file()):
            return p
    return None


def _find_split_lists(folders: list[Path]) -> dict[str, Path]:
    """The three split lists, all from one folder, or {} when none is present. A partial set is an error."""
    for folder in folders:
        found = {s: folder / f for s, f in LIST_FILES.items() if (folder / f).is_file()}
        if len(found) == len(LIST_FILES):
            return found
        if found:
            missing = [LIST_FILES[s] for s in SPLITS if s not in found]
            raise PrepError(f"{folder}: found {', '.join(p.name for p in found.values())} but not "
                            f"{', '.join(missing)}; provide all three split lists or none (for a seeded split)")
    return {}


def find_source(root: str | Path, layout: str = "auto") -> Source:
    """Locate the caption file, the image folder and the split lists under ``root``.

    ``layout`` is "auto", "kaggle" or "original". In auto mode the original layout wins when both are present,
    because it carries the standard split.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise PrepError(f"{root}: data folder not found")
    if layout not in ("auto", "kaggle", "original"):
        raise ValueError(f"layout must be auto, kaggle or original, not {layout!r}")

    token = _first_existing(root, (f"Flickr8k_text/{TOKEN_FILE}", TOKEN_FILE), want_dir=False)
    kaggle = _first_existing(root, (KAGGLE_CAPTIONS,), want_dir=False)
    if layout == "original" or (layout == "auto" and token is not None):
        if token is None:
            raise PrepError(f"{root}: no caption file found (looked for Flickr8k_text/{TOKEN_FILE} and {TOKEN_FILE})")
        image_dir = _first_existing(root, ORIGINAL_IMAGE_DIRS, want_dir=True)
        if image_dir is None:
            raise PrepError(f"{root / 'Flickr8k_Dataset'}: image folder not found "
                            f"(also looked for {', '.join(ORIGINAL_IMAGE_DIRS[:-1])})")
        return Source("original", root, token, image_dir, _find_split_lists(_unique([token.parent, root])))
    if kaggle is None:
        looked = KAGGLE_CAPTIONS if layout == "kaggle" else \
            f"{KAGGLE_CAPTIONS}, Flickr8k_text/{TOKEN_FILE} and {TOKEN_FILE}"
        raise PrepError(f"{root}: no caption file found (looked for {looked})")
    image_dir = _first_existing(root, KAGGLE_IMAGE_DIRS, want_dir=True)
    if image_dir is None:
        raise PrepError(f"{root / 'Images'}: image folder not found")
    return Source("kaggle", root, kaggle, image_dir, _find_split_lists(_unique([root, root / "Flickr8k_text"])))


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


# --------------------------------------------------------------------------------------------------------------
# Parsing

_DRIVE = re.compile(r"^[A-Za-z]:")


def check_image_name(name: str, file: Path, line: int) -> str:
    """Return ``name`` if it is a plain file name; otherwise stop, since it would resolve outside the image folder."""
    if not name:
        raise PrepError(f"{file}: line {line}: empty image name")
    if "/" in name or "\\" in name or "\0" in name or name in (".", "..") or _DRIVE.match(name):
        raise PrepError(f"{file}: line {line}: image name {name!r} is not a plain file name "
                        "(path separators and '..' are not allowed: it must resolve inside the image folder)")
    return name


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PrepError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise PrepError(f"{path}: cannot read ({e.strerror or e})") from e


def read_kaggle_captions(path: Path) -> list[Caption]:
    """Parse Kaggle's ``captions.txt``: numbered 0, 1, ... per image in file order (empty rows included,
    so the numbers stay those of the full file).

    A row with more than two fields (a caption with commas that was not quoted) is joined back with commas,
    which restores its text because image names hold no commas.
    """
    text = _read_text(path)
    # newline="" hands csv the line endings untouched, as the csv docs require for quoted multi-line fields.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise PrepError(f"{path}: line 1: {e}") from e
    if header is None or [h.strip().lower() for h in header] != ["image", "caption"]:
        raise PrepError(f"{path}: line 1: expected the header 'image,caption', found {','.join(header or [])!r}")
    counts: Counter = Counter()
    out = []
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise PrepError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from e
        line, start = start, reader.line_num + 1
        if not row or (len(row) == 1 and not row[0].strip()):
            continue                                  # blank line
        if len(row) < 2:
            raise PrepError(f"{path}: line {line}: expected 'image,caption', found {row[0]!r}")
        name = check_image_name(row[0].strip(), path, line)
        out.append(Caption(name, counts[name], ",".join(row[1:]), line))
        counts[name] += 1
    return out


_TOKEN_KEY = re.compile(r"^(?P<image>.*)#(?P<n>\d+)$")


def read_token_file(path: Path) -> list[Caption]:
    """Parse ``Flickr8k.token.txt``: ``<image>#<n><TAB><caption>`` per line; blank lines are ignored."""
    out = []
    for i, raw in enumerate(_read_text(path).split("\n"), start=1):
        raw = raw.rstrip("\r")
        if not raw.strip():
            continue
        key, tab, caption = raw.partition("\t")
        m = _TOKEN_KEY.match(key.strip())
        if not tab or m is None:
            raise PrepError(f"{path}: line {i}: expected '<image>#<n><TAB><caption>', found {raw[:80]!r}")
        name = check_image_name(m["image"].strip(), path, i)
        out.append(Caption(name, int(m["n"]), caption, i))
    return out


def read_captions(source: Source) -> list[Caption]:
    return (read_kaggle_captions if source.layout == "kaggle" else read_token_file)(source.captions_file)


def read_split_list(path: Path) -> list[tuple[str, int]]:
    """Image names of one split list, in file order, with their line numbers."""
    return [(check_image_name(s.strip(), path, i), i)
            for i, s in enumerate(_read_text(path).splitlines(), start=1) if s.strip()]


# --------------------------------------------------------------------------------------------------------------
# Splitting


def split_sizes(n: int) -> tuple[int, int, int]:
    """Train/val/test image counts for ``n`` images in the standard 6000:1000:1000 proportions.

    Val and test are each n/8 rounded half up; train takes the rest, so 8000 images give exactly the standard
    sizes. With 3 images or more every split gets at least one; with fewer, they all go to train.
    """
    if n < 3:
        return n, 0, 0
    total = sum(STANDARD_SIZES.values())
    held = [max(1, (2 * n * STANDARD_SIZES[s] + total) // (2 * total)) for s in ("val", "test")]
    return n - sum(held), held[0], held[1]


def seeded_split(names, seed: int) -> dict[str, list[str]]:
    """Assign whole images to splits with a seeded permutation.

    The names are sorted first, so the result depends only on the set of names and the seed, never on the
    order files were listed in. Each split is returned sorted by name.
    """
    names = sorted(set(names))
    perm = np.random.default_rng(seed).permutation(len(names))
    n_train, n_val, _ = split_sizes(len(names))
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(names))}
    return {s: sorted(names[i] for i in perm[a:b]) for s, (a, b) in bounds.items()}


def _read_assignment(lists: dict[str, Path]) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Images per split from the split lists, in list order, plus (split, name) of repeated entries.

    An image in two different lists is an error: it would leak test data into training.
    """
    assignment: dict[str, list[str]] = {}
    seen: dict[str, tuple[str, Path, int]] = {}
    repeated = []
    for split in SPLITS:
        assignment[split] = []
        for name, line in read_split_list(lists[split]):
            if name in seen:
                prev_split, prev_path, prev_line = seen[name]
                if prev_split != split:
                    raise PrepError(f"{lists[split]}: line {line}: image {name!r} is already in the {prev_split} "
                                    f"split ({prev_path.name} line {prev_line}); splits must not share images")
                repeated.append((split, name))
                continue
            seen[name] = (split, lists[split], line)
            assignment[split].append(name)
    return assignment, repeated


def plan_splits(source: Source, seed: int = 0) -> Plan:
    """Parse the captions and decide every image's split; count what is left out and why.

    With split lists, each split holds the listed images in list order; captioned images missing from every list
    are left out (the real token file has a few). Without lists, every image named in the caption file is split by
    :func:`seeded_split` before any caption is filtered, so one bad caption never moves other images.
    """
    captions = read_captions(source)
    by_image: dict[str, list[Caption]] = {}
    for c in captions:
        by_image.setdefault(c.image, []).append(c)

    listed_twice: list[tuple[str, str]] = []
    if source.split_lists:
        split_source = "lists"
        assignment, listed_twice = _read_assignment(source.split_lists)
    else:
        split_source = "seeded"
        assignment = seeded_split(by_image, seed)

    plan = Plan(source, split_source, {s: [] for s in SPLITS})
    for split, name in listed_twice:
        plan.skip(split, name, None, DUPLICATE_LISTED)
    for split in SPLITS:
        for name in assignment[split]:
            rows = by_image.get(name)
            if not rows:
                plan.skip(split, name, None, NO_CAPTIONS)
                continue
            kept, numbers = [], set()
            for c in rows:
                if not c.text.strip():
                    plan.skip(split, name, c.number, EMPTY_CAPTION)
                elif c.number in numbers:
                    plan.skip(split, name, c.number, DUPLICATE_NUMBER)
                else:
                    numbers.add(c.number)
                    kept.append((c.number, c.text))
            if kept:
                plan.splits[split].append(ImageItem(name, sorted(kept)))
            else:
                plan.skip(split, name, None, NO_USABLE_CAPTIONS)

    assigned = {n for names in assignment.values() for n in names}
    for name, rows in by_image.items():
        if name not in assigned:
            plan.skip(None, name, None, NOT_LISTED, n_captions=len(rows))
    return plan
