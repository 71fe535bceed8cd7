"""Curves over the number of changed pixels: success rate per pixel budget, and pixels needed per image."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .pipelines import PixelPipeline

__all__ = ["success_vs_pixels", "compare_pipelines"]


def success_vs_pixels(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth=None,
                      pixel_counts: Sequence[int] = (1, 3, 5, 10), method: str = "de",
                      **budget) -> tuple[pd.DataFrame, dict]:
    """Run the attack once per pixel budget; return a table (one row per budget) and the reports by budget.

    The table has success rate, queries per success, mean true-score drop and mean rank shift, the curves the
    robustness notebooks plot. Every budget starts afresh (see :func:`pixels_needed` for the cumulative version).
    """
    from . import attack

    reports = {int(p): attack(pipeline, images, rows, int(p), method=method, truth=truth, **budget)
               for p in pixel_counts}
    return pd.DataFrame([r.summary() for r in reports.values()]), reports


def compare_pipelines(pipelines: Mapping[str, PixelPipeline], images: np.ndarray, rows=None, truth=None,
                      pixel_counts: Sequence[int] = (1, 3, 5, 10), **attack_kw) -> pd.DataFrame:
    """Same images, same budgets, several pipelines (baseline vs joint, image-only vs image+text).

    Each pipeline attacks only the images it gets right, so the ``attacked`` column can differ between them.
    """
    frames = []
    for name, pipe in pipelines.items():
        table, _ = success_vs_pixels(pipe, images, rows, truth, pixel_counts, **attack_kw)
        frames.append(table.assign(pipeline=name))
    return pd.concat(frames, ignore_index=True)
