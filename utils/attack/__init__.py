"""Few-pixel attacks from raw uint8 pixels to scores; each search returns an ``AttackReport`` (docs/attacks.md)."""

from .pipelines import (AttackReport, AttackResult, ClassifierPixelPipeline, EmoticPixelPipeline, FlickrPixelPipeline,
                        MedianDefended, PixelPipeline, apply_pixels, from_arrays, margin_and_success, score_images,
                        to_arrays)
from .sparse import sparse_pgd, sparse_rs
from .search import METHODS, PixelsNeeded, attack, differential_evolution, ensemble, pixels_needed
