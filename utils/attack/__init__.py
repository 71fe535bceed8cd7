"""Few-pixel attacks on the whole pipeline from raw uint8 pixels to scores.

Modules: ``pipelines`` (what is attacked, scoring, fp32 confirmation), ``de`` (Su et al.'s differential
evolution), ``sparse`` (Sparse-RS-style random search), ``results`` (result objects and their .npz arrays), ``pixels`` (curves over the number of pixels).
:func:`attack` picks the search by name; both return the same :class:`AttackReport`.
"""
from __future__ import annotations

import numpy as np

from .de import differential_evolution, few_pixel_attack
from .pipelines import (ClassifierPixelPipeline, EmoticPixelPipeline, FlickrPixelPipeline, PixelPipeline,
                        apply_pixels, correct_top1, score_images)
from .pixels import PixelsNeeded, compare_pipelines, pixels_needed, success_vs_pixels
from .results import AttackReport, AttackResult, from_arrays, to_arrays
from .sparse import sparse_rs
from .sparse_pgd import sparse_pgd
from .ensemble import EnsembleReport, ensemble
from .defences import median_defended

__all__ = [
    "attack", "METHODS", "few_pixel_attack", "differential_evolution", "sparse_rs",
    "PixelPipeline", "ClassifierPixelPipeline", "EmoticPixelPipeline", "FlickrPixelPipeline",
    "AttackResult", "AttackReport", "to_arrays", "from_arrays",
    "apply_pixels", "score_images", "correct_top1", "success_vs_pixels", "compare_pipelines",
    "pixels_needed", "PixelsNeeded",
]

METHODS = {"de": differential_evolution, "sparse": sparse_rs}
METHODS["sparse-pgd"] = sparse_pgd  # white-box Sparse-PGD (sparse_pgd.py)
METHODS["ensemble"] = ensemble  # Sparse-PGD, then the sparse search on what it left (ensemble.py)


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
