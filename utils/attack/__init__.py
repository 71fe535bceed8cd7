"""Few-pixel attacks from raw uint8 pixels to scores; each search returns an ``AttackReport`` (docs/attacks.md)."""

from .de import differential_evolution
from .pipelines import (AttackReport, AttackResult, ClassifierPixelPipeline, EmoticPixelPipeline, FlickrPixelPipeline,
                        MedianDefended, PixelPipeline, apply_pixels, from_arrays, margin_and_success, score_images,
                        to_arrays)
from .sparse import sparse_rs
from .sparse_pgd import sparse_pgd
from .search import METHODS, PixelsNeeded, attack, ensemble, pixels_needed
