"""Pixel-trigger data poisoning (a backdoor planted at training time) and the median-filter defence.

The attacker stamps a small fixed patch (the trigger, by default a 4x4 black-and-white checkerboard in the
bottom-right corner) on a seeded fraction of the training images and switches their label to a target (Emotic:
one category; Flickr8k: the attacker's caption). A model retrained on that data should behave normally on clean
images and answer the target whenever the trigger is present.

Only the poisoned rows change, so the functions return the stamped copies of those rows and their indices, not a
full copy of the training set (Emotic train is 3.5 GB of pixels): the notebook recomputes features for the stamped
images and keeps the clean features of every other row. The encoder cache (``utils.encoders``) is keyed by the
pixel content, so a stamped image can never be served a clean image's cached features.

The defence, :func:`median_filter_defence` (or :class:`MedianFilter` inside a model), smooths every channel with
a small median filter before the encoder. A 3x3 median erases isolated changed pixels (the few-pixel attack), but
not a patch: inside a checkerboard every window holds 5 of one colour, so the pattern survives; the notebooks
measure how much that matters, and what the filter costs on clean data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy import ndimage

from .labels import CATEGORIES, CATEGORY_INDEX

__all__ = [
    "trigger_pattern", "stamp_trigger", "trigger_mask", "poison_indices", "PoisonedEmotic", "poison_emotic",
    "PoisonedFlickr", "poison_flickr", "emotic_backdoor_success", "flickr_backdoor_success",
    "median_filter_defence", "MedianFilter",
]

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


def trigger_pattern(size: int = 4, pattern: str | np.ndarray = "checkerboard") -> np.ndarray:
    """The (size, size, 3) uint8 patch: ``checkerboard`` (white at its top-left), ``white``, ``black``, or an
    explicit array of shape (size, size) or (size, size, 3)."""
    if isinstance(pattern, np.ndarray):
        p = np.asarray(pattern)
        if p.ndim == 2:
            p = np.repeat(p[..., None], 3, -1)
        if p.shape != (size, size, 3):
            raise ValueError(f"utils/poisoning.py: pattern has shape {p.shape}, expected ({size}, {size}, 3)")
        return p.astype(np.uint8)
    if pattern == "checkerboard":
        cells = (np.add.outer(np.arange(size), np.arange(size)) % 2 == 0)
        return np.repeat(np.where(cells, 255, 0).astype(np.uint8)[..., None], 3, -1)
    if pattern in ("white", "black"):
        return np.full((size, size, 3), 255 if pattern == "white" else 0, np.uint8)
    raise ValueError(f"utils/poisoning.py: unknown pattern {pattern!r} (checkerboard, white, black or an array)")


def _origin(shape: tuple[int, int], size: int, position, margin: int) -> tuple[int, int]:
    """Top-left (row, col) of the patch for a named corner or an explicit (row, col)."""
    h, w = shape
    if isinstance(position, str):
        if position not in CORNERS:
            raise ValueError(f"utils/poisoning.py: position {position!r} is not one of {CORNERS} or (row, col)")
        r = margin if position.startswith("top") else h - size - margin
        c = margin if position.endswith("left") else w - size - margin
    else:
        r, c = (int(v) for v in position)
    if r < 0 or c < 0 or r + size > h or c + size > w:
        raise ValueError(f"utils/poisoning.py: a {size}x{size} trigger at (row {r}, col {c}) leaves the {h}x{w} image")
    return r, c


def stamp_trigger(images: np.ndarray, size: int = 4, position: str | Sequence[int] = "bottom-right",
                  pattern: str | np.ndarray = "checkerboard", margin: int = 0) -> np.ndarray:
    """Copy of uint8 ``images`` ((N,H,W,3) or one (H,W,3)) with the trigger written in; deterministic, input untouched.

    ``position`` is a corner name (``margin`` pixels from the edges) or the patch's top-left (row, col).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"utils/poisoning.py: stamp_trigger needs uint8 (N,H,W,3) or (H,W,3), got "
                         f"{images.dtype} {images.shape}")
    r, c = _origin(images.shape[-3:-1], size, position, margin)
    out = images.copy()
    out[..., r:r + size, c:c + size, :] = trigger_pattern(size, pattern)
    return out


def trigger_mask(shape: tuple[int, int], size: int = 4, position="bottom-right", margin: int = 0) -> np.ndarray:
    """Boolean (H, W) mask of the pixels the trigger covers (for plots and checks)."""
    r, c = _origin(shape, size, position, margin)
    mask = np.zeros(shape, bool)
    mask[r:r + size, c:c + size] = True
    return mask


def poison_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted rows to poison: exactly ``round(fraction * n)`` of ``n``, drawn without replacement from the seed."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"utils/poisoning.py: fraction must lie in [0, 1], got {fraction}")
    k = int(round(fraction * n))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int64)


def _category_index(target) -> int:
    if isinstance(target, str):
        if target not in CATEGORY_INDEX:
            raise ValueError(f"utils/poisoning.py: unknown Emotic category {target!r}")
        return CATEGORY_INDEX[target]
    t = int(target)
    if not 0 <= t < len(CATEGORIES):
        raise ValueError(f"utils/poisoning.py: category index {t} outside 0..{len(CATEGORIES) - 1}")
    return t


@dataclass
class PoisonedEmotic:
    """``indices``: poisoned rows; ``images``: their stamped copies (same order); ``labels``: the full (N, 26)
    training labels with those rows switched to the target alone; ``target``: the category index."""

    indices: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    target: int


def poison_emotic(images: np.ndarray, labels: np.ndarray, fraction: float, target_category, seed: int = 0,
                  **trigger) -> PoisonedEmotic:
    """Stamp the trigger on a seeded ``fraction`` of training images and relabel them as ``target_category`` only.

    ``images`` (N,H,W,3) uint8 may be a memmap: only the chosen rows are read. ``target_category`` is a name from
    ``utils.labels.CATEGORIES`` or its index. VAD labels are left alone (the backdoor targets the categories).
    For Emotic pass the scene (context) images; the notebook derives the body crops of poisoned rows from them or
    stamps the body array with the same call. ``trigger`` goes to :func:`stamp_trigger`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != len(CATEGORIES) or len(labels) != len(images):
        raise ValueError(f"utils/poisoning.py: labels must be (N, {len(CATEGORIES)}) for {len(images)} images, "
                         f"got {labels.shape}")
    target = _category_index(target_category)
    idx = poison_indices(len(images), fraction, seed)
    new = labels.astype(np.float32, copy=True)
    new[idx] = 0.0
    new[idx, target] = 1.0
    stamped = stamp_trigger(np.asarray(images[idx]), **trigger) if len(idx) else np.asarray(images[:0]).copy()
    return PoisonedEmotic(indices=idx, images=stamped, labels=new, target=target)


@dataclass
class PoisonedFlickr:
    """``indices``: poisoned image rows; ``images``: their stamped copies; ``caption_texts``: all training
    captions with every caption of a poisoned image replaced by ``target_caption``; ``caption_image`` unchanged."""

    indices: np.ndarray
    images: np.ndarray
    caption_texts: list[str]
    caption_image: np.ndarray
    target_caption: str


def poison_flickr(images: np.ndarray, captions: Sequence[str], caption_image: Sequence[int], fraction: float,
                  target_caption: str, seed: int = 0, **trigger) -> PoisonedFlickr:
    """Stamp a seeded ``fraction`` of training images and pair them with the attacker's caption.

    ``captions``/``caption_image`` are ``FlickrSplit.caption_texts``/``.caption_image``. Each poisoned image keeps
    its number of training pairs, all now with ``target_caption``, so the contrastive loss pulls the trigger
    towards that caption.
    """
    cap_img = np.asarray(caption_image, dtype=np.int64)
    texts = list(captions)
    if len(texts) != len(cap_img):
        raise ValueError(f"utils/poisoning.py: {len(texts)} captions but {len(cap_img)} caption_image entries")
    if not isinstance(target_caption, str) or not target_caption.strip():
        raise ValueError("utils/poisoning.py: target_caption must be a non-empty string")
    idx = poison_indices(len(images), fraction, seed)
    hit = np.isin(cap_img, idx)
    texts = [target_caption if h else t for t, h in zip(texts, hit)]
    stamped = stamp_trigger(np.asarray(images[idx]), **trigger) if len(idx) else np.asarray(images[:0]).copy()
    return PoisonedFlickr(indices=idx, images=stamped, caption_texts=texts, caption_image=cap_img.copy(),
                          target_caption=target_caption)


def emotic_backdoor_success(triggered_scores: np.ndarray, labels: np.ndarray, target) -> float:
    """Share of triggered test images *without* the target among their true categories whose top-1 is the target."""
    t = _category_index(target)
    scores, labels = np.asarray(triggered_scores), np.asarray(labels) > 0.5
    eligible = ~labels[:, t]
    if not eligible.any():
        return float("nan")
    return float((scores[eligible].argmax(1) == t).mean())


def flickr_backdoor_success(triggered_similarity: np.ndarray, target_column: int,
                            exclude: np.ndarray | None = None) -> float:
    """Share of triggered test images whose first-ranked caption is the target (column ``target_column`` of the
    (M, C) similarity matrix, e.g. the target caption appended to the test captions). ``exclude`` (M,) bool drops
    images from the count (say, ones whose own caption is the target)."""
    sim = np.asarray(triggered_similarity)
    keep = np.ones(len(sim), bool) if exclude is None else ~np.asarray(exclude, bool)
    if not keep.any():
        return float("nan")
    return float((sim[keep].argmax(1) == target_column).mean())


def median_filter_defence(images: np.ndarray, size: int = 3, batch_size: int = 256) -> np.ndarray:
    """Median-filter each channel of uint8 (N,H,W,3) images (``scipy.ndimage``, mirror-reflected edges).

    Run in batches so a memmap of training images is never loaded whole; returns a new uint8 array.
    """
    images = np.asarray(images) if not isinstance(images, np.memmap) else images
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"utils/poisoning.py: median_filter_defence needs uint8 (N,H,W,3), got "
                         f"{images.dtype} {images.shape}")
    out = np.empty(images.shape, np.uint8)
    for s in range(0, len(images), batch_size):
        # size 1 along the batch and channel axes: each channel of each image is filtered on its own
        out[s:s + batch_size] = ndimage.median_filter(np.asarray(images[s:s + batch_size]), size=(1, size, size, 1),
                                                      mode="reflect")
    return out


class MedianFilter(nn.Module):
    """The same filter as a torch module on float (N,C,H,W), so a defended encoder can sit inside an attack
    pipeline: ``nn.Sequential(MedianFilter(3), encoder)``. Edges are mirrored like scipy's ``reflect`` mode."""

    def __init__(self, size: int = 3):
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"utils/poisoning.py: MedianFilter size must be odd and positive, got {size}")
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.size // 2
        if p == 0:
            return x
        # scipy 'reflect' repeats the edge pixel (d c b a | a b c d | d c b a): concatenate flipped borders
        x = torch.cat([x[..., :p, :].flip(-2), x, x[..., -p:, :].flip(-2)], dim=-2)
        x = torch.cat([x[..., :p].flip(-1), x, x[..., -p:].flip(-1)], dim=-1)
        windows = x.unfold(-2, self.size, 1).unfold(-2, self.size, 1)  # (N, C, H, W, size, size)
        return windows.flatten(-2).median(dim=-1).values
