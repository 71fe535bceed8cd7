"""Picks a search by name: the one entry point the pixel-count curves and the robustness experiments call."""

import numpy as np

from .de import differential_evolution
from .ensemble import ensemble
from .pipelines import PixelPipeline
from .results import AttackReport
from .sparse import sparse_rs
from .sparse_pgd import sparse_pgd

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
