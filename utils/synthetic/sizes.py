"""How many persons and images each size profile holds, shared by the Emotic and Flickr8k generators."""
from __future__ import annotations

SIZES = {
    # persons over train/val/test (split 60/15/25 %), Flickr8k images (split 6:1:1)
    "smoke": {"emotic_persons": 75, "flickr_images": 40},
    "demo": {"emotic_persons": 600, "flickr_images": 500},
}


def check_size(size: str) -> dict[str, int]:
    """The counts of ``size``; a ValueError names the accepted sizes otherwise."""
    if size not in SIZES:
        raise ValueError(f"size={size!r}: expected one of {', '.join(SIZES)}")
    return SIZES[size]
