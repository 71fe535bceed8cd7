"""Defences an attacker knows about: the median filter inside the attacked pipeline (the adaptive attack).

Scoring the filter only on attacks made against the undefended model (transfer) says nothing about an attacker
who knows the filter. :func:`median_defended` puts the filter inside ``scores``, so every search attacks the
defended pipeline with its own budget. The black-box search only needs the scores; the white-box member needs a
gradient, and a median has almost none (it is piecewise a copy of one input), so the backward pass goes straight
through the filter (BPDA, Athalye et al. 2018: forward = filtered image, backward = identity).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..poisoning import MedianFilter
from .pipelines import PixelPipeline

__all__ = ["median_defended", "MedianDefended"]


class _StraightThrough(torch.autograd.Function):
    """Forward: ``fn(x)``; backward: the incoming gradient unchanged (as if ``fn`` were the identity)."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class MedianDefended(PixelPipeline):
    """``pipeline`` with a ``size`` x ``size`` median filter (the one of :mod:`utils.poisoning`) applied to the
    photo inside :meth:`scores`; same rows, truth and modules. Candidate pixel lists (``changed_xy``) are not
    passed on: the filter spreads a changed pixel to its neighbours, so caches keyed by changed pixels would not
    hold (the Emotic body crop is recomputed for every candidate)."""

    def __init__(self, pipeline: PixelPipeline, size: int = 3):
        if size < 1 or size % 2 == 0:
            raise ValueError(f"utils/attack/defences.py: size must be odd and positive, got {size}")
        # no super().__init__: the wrapped pipeline has already set its modules' mode and layout
        self.inner, self.size, self.filter = pipeline, int(size), MedianFilter(int(size))

    # the wrapped pipeline's modules and layout, also when a batch-size probe switches the layout
    @property
    def modules(self):
        return self.inner.modules

    @property
    def channels_last(self) -> bool:
        return self.inner.channels_last

    @channels_last.setter
    def channels_last(self, value: bool) -> None:
        self.inner.channels_last = value

    def filtered(self, x: torch.Tensor) -> torch.Tensor:
        """The median-filtered photo, in the layout the wrapped pipeline expects; gradient straight through."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return _StraightThrough.apply(x, lambda v: self.filter(v).contiguous(memory_format=fmt))

    @contextlib.contextmanager
    def compiled(self, batch_size: int):
        with self.inner.compiled(batch_size):
            yield self

    def prepare(self, clean, rows):
        self.inner.prepare(self.filtered(clean), rows)

    def scores(self, x, rows, changed_xy=None):
        return self.inner.scores(self.filtered(x), rows)

    def truth(self, rows) -> np.ndarray:
        return self.inner.truth(rows)


def median_defended(pipeline: PixelPipeline, size: int = 3) -> MedianDefended:
    """``pipeline`` defended by a ``size`` x ``size`` median filter inside its scores, attackable by every search
    with the same budget as the undefended one (white-box gradients pass straight through the filter)."""
    return MedianDefended(pipeline, size)
