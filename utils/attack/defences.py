"""The median filter inside the attacked pipeline, so every search attacks the defence it knows about (the adaptive
attack); the white-box gradient passes straight through the filter (BPDA; docs/attacks.md)."""

import numpy as np
import torch

from ..poisoning import MedianFilter
from .pipelines import PixelPipeline


class _StraightThrough(torch.autograd.Function):
    """Forward: ``fn(x)``; backward: the incoming gradient unchanged (as if ``fn`` were the identity)."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class MedianDefended(PixelPipeline):
    """``pipeline`` with a ``size`` x ``size`` median filter (:mod:`utils.poisoning`'s) on the photo inside
    :meth:`scores`. ``changed_xy`` is not passed on: the filter spreads a changed pixel to its neighbours."""

    def __init__(self, pipeline: PixelPipeline, size: int = 3):
        if size < 1 or size % 2 == 0:
            raise ValueError(f"utils/attack/defences.py: size must be odd and positive, got {size}")
        # no super().__init__: the wrapped pipeline has already set its modules' mode and layout
        self.inner, self.size, self.filter = pipeline, int(size), MedianFilter(int(size))

    @property
    def modules(self):
        return self.inner.modules

    @property
    def channels_last(self) -> bool:  # the wrapped pipeline's, also when a batch-size probe switches the layout
        return self.inner.channels_last

    @channels_last.setter
    def channels_last(self, value: bool) -> None:
        self.inner.channels_last = value

    def filtered(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return _StraightThrough.apply(x, lambda v: self.filter(v).contiguous(memory_format=fmt))

    def prepare(self, clean, rows):
        self.inner.prepare(self.filtered(clean), rows)

    def scores(self, x, rows, changed_xy=None):
        return self.inner.scores(self.filtered(x), rows)

    def truth(self, rows) -> np.ndarray:
        return self.inner.truth(rows)


median_defended = MedianDefended  # the name the robustness experiments call
