"""Pixels needed per image: the smallest k of a schedule at which the attack succeeds, with work reused across k."""

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .results import AttackReport
from .search import attack


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

    def curve(self) -> pd.DataFrame:
        """Success against k: share of the attacked images fooled with at most k pixels."""
        n = int(self.attacked.sum())
        won = [int(((self.k_needed > 0) & (self.k_needed <= k) & self.attacked).sum()) for k in self.schedule]
        return pd.DataFrame(dict(pixels=list(self.schedule), attacked=n, successes=won,
                                 success_rate=[w / n if n else float("nan") for w in won]))


def pixels_needed(pipeline, images: np.ndarray, rows=None, truth=None, *,
                  schedule: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256), method: str = "sparse",
                  queries: int = 1000, warm_start: bool = True, **budget) -> PixelsNeeded:
    """The smallest k of ``schedule`` at which each image is fooled within ``queries`` queries per k: a fooled
    image leaves, and (``warm_start``) the next k starts from the previous k's best pixels plus new ones."""
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
