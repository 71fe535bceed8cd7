"""Few-pixel attacks on the whole pipeline from raw uint8 pixels to scores.

Modules: ``pipelines`` (what is attacked, scoring on logits, fp32 confirmation), ``de`` (Su et al.'s differential
evolution), ``sparse`` (the Sparse-RS random search), ``sparse_pgd`` (white-box Sparse-PGD), ``ensemble``
(Sparse-PGD, then the sparse search on what it left), ``defences`` (the median filter inside a pipeline, gradient
passed straight through), ``search`` (:func:`attack` picks a search by name), ``results`` (result objects and their
.npz arrays), ``pixels`` (curves over the number of pixels). Every search returns the same :class:`AttackReport`.
"""
from __future__ import annotations

from .de import differential_evolution, few_pixel_attack
from .pipelines import (ClassifierPixelPipeline, EmoticPixelPipeline, FlickrPixelPipeline, PixelPipeline,
                        apply_pixels, correct_top1, score_images)
from .pixels import PixelsNeeded, compare_pipelines, pixels_needed, success_vs_pixels
from .results import AttackReport, AttackResult, from_arrays, to_arrays
from .sparse import sparse_rs
from .sparse_pgd import sparse_pgd
from .ensemble import EnsembleReport, ensemble
from .defences import median_defended
from .search import METHODS, attack

__all__ = [
    "attack", "METHODS", "few_pixel_attack", "differential_evolution", "sparse_rs",
    "PixelPipeline", "ClassifierPixelPipeline", "EmoticPixelPipeline", "FlickrPixelPipeline",
    "AttackResult", "AttackReport", "to_arrays", "from_arrays",
    "apply_pixels", "score_images", "correct_top1", "success_vs_pixels", "compare_pipelines",
    "pixels_needed", "PixelsNeeded", "sparse_pgd", "ensemble", "EnsembleReport", "median_defended",
]
