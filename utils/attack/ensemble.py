"""White-box then black-box, as Sparse-AutoAttack (Zhong & Liu 2024): Sparse-PGD on every attacked image, then
the sparse random search on the images it left unfooled (all of them with ``black_box_all``; docs/attacks.md)."""

import dataclasses
import time

import numpy as np

from .pipelines import PixelPipeline
from .results import AttackReport
from .sparse import sparse_rs
from .sparse_pgd import sparse_pgd


def ensemble(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth: np.ndarray | None = None, *,
             pixels: int = 1, queries: int = 1000, steps: int = 100, restarts: int = 2, seed: int = 0,
             batch_size: int | None = None, black_box_all: bool = False, init: np.ndarray | None = None,
             **search) -> AttackReport:
    """Sparse-PGD, then ``sparse_rs`` (``queries``, ``batch_size``, other keywords); a result's ``queries`` add up."""
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
                        model_queries=white.model_queries + black.model_queries,
                        search_seconds=white.search_seconds + black.search_seconds,
                        model_seconds=white.model_seconds + black.model_seconds,
                        members={"white-box": white, "black-box": black})
