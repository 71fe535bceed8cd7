"""Picks a search by name: the one entry point the pixel-count curves, the robustness experiments and the
precomputed-attack jobs call, so a new search is registered in one place."""
from __future__ import annotations

import numpy as np

from .de import differential_evolution
from .ensemble import ensemble
from .pipelines import PixelPipeline
from .results import AttackReport
from .sparse import sparse_rs
from .sparse_pgd import sparse_pgd

__all__ = ["attack", "METHODS"]

METHODS = {"de": differential_evolution, "sparse": sparse_rs,
           "sparse-pgd": sparse_pgd,  # white-box Sparse-PGD (sparse_pgd.py)
           "ensemble": ensemble}  # Sparse-PGD, then the sparse search on what it left (ensemble.py)


def attack(pipeline: PixelPipeline, images: np.ndarray, rows=None, k: int = 1, method: str = "de",
           **budget) -> AttackReport:
    """Attack ``images`` (N,H,W,3 uint8, pipeline rows ``rows``) changing at most ``k`` pixels each.

    ``method``: "de" (differential evolution; budget ``popsize``, ``generations``, ``F``) or "sparse" (sparse
    random search as Sparse-RS; budget ``queries``, ``p_init``; ``candidates`` caps its adaptive proposals per
    call). ``queries=`` sets the budget per image for every method (for DE: ``generations = queries // popsize -
    1``). Other keywords (``truth``, ``batch_size`` (default: the device's fastest, ``utils.batching``), ``seed``,
    ``precision``, ``compile``, ``progress``, ``init``) go to the search. Scores and margins are on logits.
    """
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
