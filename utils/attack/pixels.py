"""Curves over the number of changed pixels: success rate per pixel budget, and pixels needed per image."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .pipelines import PixelPipeline
from .results import AttackReport
from .search import attack

__all__ = ["success_vs_pixels", "compare_pipelines", "pixels_needed", "PixelsNeeded", "DEFAULT_SCHEDULE"]

DEFAULT_SCHEDULE = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def success_vs_pixels(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth=None,
                      pixel_counts: Sequence[int] = (1, 3, 5, 10), method: str = "de",
                      **budget) -> tuple[pd.DataFrame, dict]:
    """Run the attack once per pixel budget; return a table (one row per budget) and the reports by budget.

    The table has success rate, queries per success, mean true-score drop and mean rank shift, the curves the
    robustness notebooks plot. Every budget starts afresh (see :func:`pixels_needed` for the cumulative version).
    """

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


@dataclass
class PixelsNeeded:
    """Per image, the smallest k of the schedule at which the attack succeeded (-1: none, or not attacked)."""

    rows: np.ndarray  # (N,)
    attacked: np.ndarray  # (N,) bool: correct before the attack
    k_needed: np.ndarray  # (N,) int, -1 when no k of the schedule succeeded within its budget
    queries: np.ndarray  # (N,) queries spent on the image over all k it was attacked at
    schedule: tuple[int, ...]
    reports: dict[int, AttackReport]  # by k; each holds only the images still unsolved at that k

    @property
    def k_or_inf(self) -> np.ndarray:
        """``k_needed`` as float with inf for "not within the schedule" (NaN for images not attacked)."""
        out = np.where(self.k_needed > 0, self.k_needed, np.inf).astype(float)
        out[~self.attacked] = np.nan
        return out

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(dict(row=self.rows, attacked=self.attacked, k_needed=self.k_needed,
                                 queries=self.queries))

    def curve(self) -> pd.DataFrame:
        """Success against k: share of the attacked images fooled with at most k pixels."""
        att = self.attacked
        n = int(att.sum())
        rows = []
        for k in self.schedule:
            won = int(((self.k_needed > 0) & (self.k_needed <= k) & att).sum())
            rows.append(dict(pixels=k, attacked=n, successes=won, success_rate=won / n if n else float("nan")))
        return pd.DataFrame(rows)


def pixels_needed(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth=None, *,
                  schedule: Sequence[int] = DEFAULT_SCHEDULE, method: str = "sparse", queries: int = 1000,
                  warm_start: bool = True, **budget) -> PixelsNeeded:
    """The smallest k of ``schedule`` at which each image is fooled within ``queries`` queries per k.

    Work is reused across k: an image leaves as soon as it is fooled, and (``warm_start``) the next k starts from
    the previous k's best pixels plus new ones. So ``k_needed`` is the first k of the schedule at which this
    sequence of searches succeeds. Other keywords go to :func:`utils.attack.attack`.
    """

    schedule = tuple(int(k) for k in schedule)
    if not schedule or any(k < 1 for k in schedule) or any(b <= a for a, b in zip(schedule, schedule[1:])):
        raise ValueError(f"utils/attack/pixels.py: schedule must be increasing positive integers, got {schedule}")
    images = np.asarray(images)
    n = len(images)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    truth = None if truth is None else np.asarray(truth)
    k_needed = np.full(n, -1, np.int64)
    spent = np.zeros(n, np.int64)
    attacked = np.zeros(n, bool)
    best = np.full((n, max(schedule), 5), -1, np.int64)  # each image's best pixels so far (-1 = padding)
    todo = np.arange(n)
    reports = {}
    for j, k in enumerate(schedule):
        if not len(todo):
            break
        init = best[todo, :k] if warm_start and j else None
        rep = attack(pipeline, images[todo], rows[todo], k, method=method, queries=queries,
                     truth=None if truth is None else truth[todo], init=init, **budget)
        reports[k] = rep
        for i, r in zip(todo, rep.results):
            if j == 0:
                attacked[i] = r.attacked
            spent[i] += r.queries
            best[i] = -1
            best[i, :len(r.pixels)] = r.pixels
            if r.success:
                k_needed[i] = k
        todo = np.array([i for i, r in zip(todo, rep.results) if r.attacked and not r.success], dtype=np.int64)
    return PixelsNeeded(rows=rows, attacked=attacked, k_needed=k_needed, queries=spent, schedule=schedule,
                        reports=reports)
