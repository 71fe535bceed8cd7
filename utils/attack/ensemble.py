"""White-box then black-box, in the manner of Sparse-AutoAttack (Zhong & Liu 2024): Sparse-PGD (both variants) on
every attacked image, then the sparse random search (:func:`utils.attack.sparse_rs`) on the images it left unfooled.

One :class:`EnsembleReport` per run: each result is the ensemble's (an image counts as fooled when either member
fooled it), and ``settings`` keep, per result, which member fooled it and each member's own verdict, as JSON-ready
lists that survive :func:`utils.attack.to_arrays`. The white-box member's rate is the worst case (an attacker with
the gradients); the black-box member is the realistic attacker, who only sees scores. Its own rate over every
image needs it to run on every image: ``black_box_all=True`` does that (the ensemble's verdict is the same).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from .pipelines import PixelPipeline
from .results import AttackReport
from .sparse import sparse_rs
from .sparse_pgd import sparse_pgd

__all__ = ["ensemble", "EnsembleReport", "MEMBERS"]

WHERE = "utils/attack/ensemble.py"
MEMBERS = ("white-box", "black-box")


@dataclasses.dataclass
class EnsembleReport(AttackReport):
    """An :class:`AttackReport` whose table has a ``member`` column ("white-box", "black-box" or "" when not
    fooled) and the members' own verdicts; ``members`` holds the two members' own reports (not saved)."""

    members: dict = dataclasses.field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        t = super().table()
        for col in ("member", "white_box_success", "black_box_ran", "black_box_success"):
            t[col] = self.settings[col]
        return t

    def summary(self) -> dict:
        t = self.table()
        att = t[t.attacked.astype(bool)]
        out = super().summary()
        out.update(white_box_successes=int(att.white_box_success.sum()),
                   black_box_attacked=int(att.black_box_ran.sum()),
                   black_box_successes=int(att.black_box_success.sum()))
        return out


def ensemble(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth: np.ndarray | None = None, *,
             pixels: int = 1, queries: int = 1000, steps: int = 100, restarts: int = 2, seed: int = 0,
             batch_size: int | None = None, white_box_batch_size: int = 16, black_box_all: bool = False,
             progress: bool = True, init: np.ndarray | None = None, **search) -> EnsembleReport:
    """Sparse-PGD (``steps`` per restart, ``restarts`` alternating its two variants), then ``sparse_rs`` with
    ``queries`` queries per image on the images it did not fool (on every attacked image if ``black_box_all``).

    ``queries`` of a result add both members' spending (forward-equivalent): for an image the black-box member
    fooled, the white-box member's whole budget plus the query at which the search fooled it. ``batch_size`` is the
    search's (None: the device's fastest), ``white_box_batch_size`` Sparse-PGD's. Other keywords
    (``candidates``, ``p_init``, ``precision``, ``compile``) go to :func:`utils.attack.sparse_rs`; ``init`` to both.
    """
    t_start = time.perf_counter()
    images = np.asarray(images)
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    white = sparse_pgd(pipeline, images, rows, truth, pixels=pixels, steps=steps, restarts=restarts, seed=seed,
                       batch_size=white_box_batch_size, progress=progress, init=init)
    attacked = np.array([r.attacked for r in white.results], bool)
    w_ok = np.array([r.success for r in white.results], bool)
    ran = attacked if black_box_all else attacked & ~w_ok
    idx = np.flatnonzero(ran)
    black = sparse_rs(pipeline, images[idx], rows[idx], None if truth is None else np.asarray(truth)[idx],
                      pixels=pixels, queries=queries, batch_size=batch_size, seed=seed, progress=progress,
                      init=None if init is None else np.asarray(init)[idx], **search)
    b_ok = np.zeros(len(images), bool)
    results, member = list(white.results), [""] * len(images)
    for i, rb in zip(idx, black.results):
        b_ok[i] = rb.success
        rw = white.results[i]
        if rb.success and not rw.success:  # the black-box member's image, after the white-box member's spend
            results[i] = dataclasses.replace(rb, attacked=rw.attacked, queries=rw.queries + rb.queries)
        elif not rw.success:
            results[i] = dataclasses.replace(rw, queries=rw.queries + rb.queries)
    for i in range(len(images)):
        member[i] = "white-box" if w_ok[i] else "black-box" if b_ok[i] and attacked[i] else ""
    settings = dict(method="ensemble", pixels=int(pixels), queries=int(queries), steps=int(steps),
                    restarts=int(restarts), seed=int(seed), black_box_all=bool(black_box_all),
                    order="white-box (sparse-PGD) first, then black-box (sparse search) on "
                          + ("every attacked image" if black_box_all else "the images it left unfooled"),
                    member=member, white_box_success=w_ok.tolist(), black_box_ran=ran.tolist(),
                    black_box_success=(b_ok & ran).tolist(), white_box=white.settings, black_box=black.settings)
    return EnsembleReport(results=results, settings=settings, seconds=time.perf_counter() - t_start,
                          model_queries=white.model_queries + black.model_queries,
                          search_seconds=white.search_seconds + black.search_seconds,
                          model_seconds=white.model_seconds + black.model_seconds,
                          members={"white-box": white, "black-box": black})
