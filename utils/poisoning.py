"""Pixel-trigger data poisoning (a backdoor planted at training time) and the median-filter defence (docs/attacks.md).
Only the stamped copies of the poisoned rows are returned: Emotic's training set is 3.5 GB of pixels."""

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy import ndimage

from .labels import CATEGORIES, CATEGORY_INDEX

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


def _origin(shape: tuple[int, int], size: int, position) -> tuple[int, int]:
    """Top-left (row, col) of the patch for a named corner or an explicit (row, col)."""
    h, w = shape
    if isinstance(position, str):
        if position not in CORNERS:
            raise ValueError(f"utils/poisoning.py: position {position!r} is not one of {CORNERS} or (row, col)")
        r = 0 if position.startswith("top") else h - size
        c = 0 if position.endswith("left") else w - size
    else:
        r, c = (int(v) for v in position)
    if r < 0 or c < 0 or r + size > h or c + size > w:
        raise ValueError(f"utils/poisoning.py: a {size}x{size} trigger at (row {r}, col {c}) leaves the {h}x{w} image")
    return r, c


def stamp_trigger(images: np.ndarray, size: int = 4, position: str | Sequence[int] = "bottom-right") -> np.ndarray:
    """Copy of uint8 ``images`` with a ``size`` checkerboard (white top-left) at a corner or at (row, col)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"utils/poisoning.py: stamp_trigger needs uint8 (N,H,W,3) or (H,W,3), got "
                         f"{images.dtype} {images.shape}")
    r, c = _origin(images.shape[-3:-1], size, position)
    cells = np.add.outer(np.arange(size), np.arange(size)) % 2 == 0
    out = images.copy()
    out[..., r:r + size, c:c + size, :] = np.repeat(np.where(cells, 255, 0).astype(np.uint8)[..., None], 3, -1)
    return out


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
    indices: np.ndarray  # the poisoned rows
    images: np.ndarray   # their stamped copies, same order
    labels: np.ndarray   # all (N, 26) training labels, the poisoned rows switched to the target alone
    target: int          # the category index


def poison_emotic(images: np.ndarray, labels: np.ndarray, fraction: float, target_category, seed: int = 0,
                  **trigger) -> PoisonedEmotic:
    """Stamp a seeded ``fraction`` of the training images (a memmap: only those rows are read) and relabel them
    as ``target_category`` (name or index) only; VAD is left alone. ``trigger`` goes to :func:`stamp_trigger`."""
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
    indices: np.ndarray       # the poisoned image rows
    images: np.ndarray        # their stamped copies
    caption_texts: list[str]  # every training caption, those of a poisoned image replaced by target_caption
    caption_image: np.ndarray
    target_caption: str


def poison_flickr(images: np.ndarray, captions: Sequence[str], caption_image: Sequence[int], fraction: float,
                  target_caption: str, seed: int = 0, **trigger) -> PoisonedFlickr:
    """Stamp a seeded ``fraction`` of the images; their captions become ``target_caption``, the trigger's pull."""
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


def median_filter_defence(images: np.ndarray, size: int = 3, batch_size: int = 256) -> np.ndarray:
    """Median-filter each channel of uint8 (N, H, W, 3) images in batches, so a memmap is never loaded whole."""
    images = np.asarray(images) if not isinstance(images, np.memmap) else images
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"utils/poisoning.py: median_filter_defence needs uint8 (N,H,W,3), got "
                         f"{images.dtype} {images.shape}")
    out = np.empty(images.shape, np.uint8)
    for s in range(0, len(images), batch_size):
        out[s:s + batch_size] = ndimage.median_filter(np.asarray(images[s:s + batch_size]), size=(1, size, size, 1),
                                                      mode="reflect")  # each channel of each image on its own
    return out


class MedianFilter(nn.Module):
    """The same filter on float (N, C, H, W) tensors, so a defended encoder can sit inside an attack pipeline."""

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
