"""The searches by name, the white-box-then-black-box ensemble, and the pixels each image needs (docs/attacks.md)."""

import dataclasses
import time
from typing import Sequence

import numpy as np

from .de import differential_evolution
from .pipelines import AttackReport, PixelPipeline
from .sparse import sparse_rs
from .sparse_pgd import sparse_pgd


def ensemble(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth: np.ndarray | None = None, *,
             pixels: int = 1, queries: int = 1000, steps: int = 100, restarts: int = 2, seed: int = 0,
             batch_size: int | None = None, black_box_all: bool = False, init: np.ndarray | None = None,
             **search) -> AttackReport:
    """Sparse-PGD on every attacked image, then ``sparse_rs`` (``queries``, ``batch_size``, other keywords) on those
    it left unfooled (all with ``black_box_all``), as Sparse-AutoAttack; a result's ``queries`` add up."""
    t_start = time.perf_counter()
    images = np.asarray(images)
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    white = sparse_pgd(pipeline, images, rows, truth, pixels=pixels, steps=steps, restarts=restarts, seed=seed,
                       init=init)
    attacked = np.array([r.attacked for r in white.results], bool)
    w_ok = np.array([r.success for r in white.results], bool)
    ran = attacked if black_box_all else attacked & ~w_ok
    idx = np.flatnonzero(ran)
    black = sparse_rs(pipeline, images[idx], rows[idx], None if truth is None else np.asarray(truth)[idx],
                      pixels=pixels, queries=queries, batch_size=batch_size, seed=seed,
                      init=None if init is None else np.asarray(init)[idx], **search)
    b_ok = np.zeros(len(images), bool)
    results = list(white.results)
    for i, rb in zip(idx, black.results):
        b_ok[i] = rb.success
        rw = white.results[i]
        if rb.success and not rw.success:  # the black-box member's image, after the white-box member's spend
            results[i] = dataclasses.replace(rb, attacked=rw.attacked, queries=rw.queries + rb.queries)
        elif not rw.success:
            results[i] = dataclasses.replace(rw, queries=rw.queries + rb.queries)
    member = ["white-box" if w else "black-box" if b and a else "" for w, b, a in zip(w_ok, b_ok, attacked)]
    settings = dict(method="ensemble", pixels=int(pixels), queries=int(queries), steps=int(steps),
                    restarts=int(restarts), seed=int(seed), black_box_all=bool(black_box_all),
                    order="white-box (sparse-PGD) first, then black-box (sparse search) on "
                          + ("every attacked image" if black_box_all else "the images it left unfooled"),
                    member=member, white_box_success=w_ok.tolist(), black_box_ran=ran.tolist(),
                    black_box_success=(b_ok & ran).tolist(), white_box=white.settings, black_box=black.settings)
    return AttackReport(results=results, settings=settings, seconds=time.perf_counter() - t_start,
                        **{f: getattr(white, f) + getattr(black, f) for f in ("model_queries", "search_seconds",
                                                                               "model_seconds")},
                        members={"white-box": white, "black-box": black})


METHODS = {"de": differential_evolution, "sparse": sparse_rs, "sparse-pgd": sparse_pgd, "ensemble": ensemble}


def attack(pipeline: PixelPipeline, images: np.ndarray, rows=None, k: int = 1, method: str = "de",
           **budget) -> AttackReport:
    """Attack ``images`` (N,H,W,3 uint8, pipeline rows ``rows``) changing at most ``k`` pixels each; ``queries=``
    is the budget per image for every method (DE: ``generations = queries // popsize - 1``)."""
    if method not in METHODS:
        raise ValueError(f"utils/attack: method must be one of {sorted(METHODS)}, got {method!r}")
    queries = budget.pop("queries", None)
    if queries is not None and method == "de":
        popsize = budget.get("popsize", 400)
        if queries < popsize:
            raise ValueError(f"utils/attack: queries={queries} is less than one DE population ({popsize})")
        budget["generations"] = int(queries) // popsize - 1
    elif queries is not None:
        budget["queries"] = int(queries)
    return METHODS[method](pipeline, images, rows, pixels=int(k), **budget)


@dataclasses.dataclass
class PixelsNeeded:
    """Per image, the smallest k of the schedule at which the attack succeeded (-1: none, or not attacked)."""
    rows: np.ndarray  # (N,)
    attacked: np.ndarray  # (N,) bool: correct before the attack
    k_needed: np.ndarray  # (N,) int, -1 when no k of the schedule succeeded within its budget
    queries: np.ndarray  # (N,) queries spent on the image over all k it was attacked at
    schedule: tuple[int, ...]
    reports: dict[int, AttackReport]  # by k; each holds only the images still unsolved at that k


def pixels_needed(pipeline, images: np.ndarray, rows=None, truth=None, *,
                  schedule: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256), method: str = "sparse",
                  queries: int = 1000, warm_start: bool = True, **budget) -> PixelsNeeded:
    """The smallest k of ``schedule`` at which each image is fooled within ``queries`` queries per k: a fooled
    image leaves, and (``warm_start``) the next k starts from the previous k's best pixels plus new ones."""
    schedule = tuple(int(k) for k in schedule)
    if not schedule or any(k < 1 for k in schedule) or any(b <= a for a, b in zip(schedule, schedule[1:])):
        raise ValueError(f"utils/attack/search.py: schedule must be increasing positive integers, got {schedule}")
    images = np.asarray(images)
    n = len(images)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    truth = None if truth is None else np.asarray(truth)
    k_needed, spent, attacked = np.full(n, -1, np.int64), np.zeros(n, np.int64), np.zeros(n, bool)
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
