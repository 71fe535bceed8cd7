"""Pixel-trigger poisoning (a backdoor planted at training time) and the median-filter defence (docs/attacks.md)."""

import numpy as np
import torch
from scipy import ndimage

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


def stamp_trigger(images: np.ndarray, size: int = 4, position: str | tuple[int, int] = "bottom-right") -> np.ndarray:
    """Copy of uint8 ``images`` with a ``size`` checkerboard (white top-left) at a corner or at (row, col)."""
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"utils/poisoning.py: stamp_trigger needs uint8 (N,H,W,3) or (H,W,3), got "
                         f"{images.dtype} {images.shape}")
    h, w = images.shape[-3:-1]
    if isinstance(position, str):
        if position not in CORNERS:
            raise ValueError(f"utils/poisoning.py: position {position!r} is not one of {CORNERS} or (row, col)")
        position = (0 if position.startswith("top") else h - size, 0 if position.endswith("left") else w - size)
    r, c = (int(v) for v in position)
    if r < 0 or c < 0 or r + size > h or c + size > w:
        raise ValueError(f"utils/poisoning.py: a {size}x{size} trigger at (row {r}, col {c}) leaves the {h}x{w} image")
    out = images.copy()
    out[..., r:r + size, c:c + size, :] = 255 * (np.add.outer(np.arange(size), np.arange(size)) % 2 == 0)[..., None]
    return out


def poison_images(images: np.ndarray, fraction: float, seed: int = 0, **trigger) -> tuple[np.ndarray, np.ndarray]:
    """(sorted rows, their stamped copies): ``round(fraction * n)`` seeded rows; a memmap reads only those."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"utils/poisoning.py: fraction must lie in [0, 1], got {fraction}")
    rows = np.random.default_rng(seed).choice(len(images), size=int(round(fraction * len(images))), replace=False)
    rows = np.sort(rows).astype(np.int64)
    return rows, stamp_trigger(np.asarray(images[rows]), **trigger)


def median_filter_defence(images: np.ndarray, size: int = 3, batch_size: int = 256) -> np.ndarray:
    """Median-filter each channel of uint8 (N, H, W, 3) images in batches, so a memmap is never loaded whole."""
    out = np.empty(images.shape, np.uint8)
    for s in range(0, len(images), batch_size):
        out[s:s + batch_size] = ndimage.median_filter(np.asarray(images[s:s + batch_size]), size=(1, size, size, 1),
                                                      mode="reflect")  # each channel of each image on its own
    return out


class MedianFilter(torch.nn.Module):
    """The same filter on float (N, C, H, W) tensors, so a defended encoder can sit inside an attack pipeline."""

    def __init__(self, size: int = 3):
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"utils/poisoning.py: MedianFilter size must be odd and positive, got {size}")
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # scipy 'reflect' is numpy 'symmetric', it repeats the edge pixel (d c b a | a b c d | d c b a)
        rows, cols = (np.pad(np.arange(n), self.size // 2, mode="symmetric") for n in x.shape[-2:])
        windows = x[..., rows, :][..., cols].unfold(-2, self.size, 1).unfold(-2, self.size, 1)  # (N, C, H, W, s, s)
        return windows.flatten(-2).median(dim=-1).values
