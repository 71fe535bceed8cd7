"""The top Emotic categories of one person on one photo (notebook 01's examples, ``scripts/predict.py``), with
features computed exactly as for the training data: scene squashed to 224, body box cropped as ``mat2py.py``
crops it and squashed to 128."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from . import encoders
from .images import load_rgb, pixel_box, resize_rgb
from .labels import CATEGORIES, CONTINUOUS
from .training import predict


def _crop_body(image: np.ndarray, box) -> np.ndarray:
    """The person crop exactly as ``mat2py.py`` makes it: box clipped and outer-rounded, squashed to 128 x 128."""
    if box is None:
        return resize_rgb(image, 128)
    h, w = image.shape[:2]
    clipped = pixel_box([float(v) for v in box], w, h)
    if clipped is None:
        raise ValueError(f"top_emotions: box {tuple(box)} has no area inside the {w}x{h} image")
    x1, y1, x2, y2 = clipped
    return resize_rgb(image[y1:y2, x1:x2], 128)


@torch.no_grad()
def top_emotions(image, description: str | None = None, *, model: nn.Module, image_encoder=None, text_encoder=None,
                 box=None, k: int = 5, with_vad: bool = False):
    """The ``k`` highest-scored categories as ``[(category, score), ...]`` (and the VAD dict with ``with_vad``).

    ``image``: a path or (H, W, 3) uint8 RGB; ``box`` (x1, y1, x2, y2 pixels; default the whole image); the
    encoders default to the offline ones and must be those the model was trained on."""
    if isinstance(image, (str, os.PathLike)):
        image = load_rgb(image)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"top_emotions: expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    needs = set(getattr(model, "inputs", ("body", "context", "text")))
    feats = {}
    if needs & {"body", "context"}:
        image_encoder = image_encoder or encoders.load_image_encoder()
        if "body" in needs:
            feats["body"] = encoders.image_features(image_encoder, _crop_body(image, box)[None], cache=False)
        if "context" in needs:
            feats["context"] = encoders.image_features(image_encoder, resize_rgb(image, 224)[None], cache=False)
    if "text" in needs:
        if not description:
            raise ValueError("top_emotions: this model reads a text description; pass description=...")
        text_encoder = text_encoder or encoders.load_text_encoder()
        feats["text"] = encoders.text_features(text_encoder, [description], cache=False)
    out = predict(model, feats, keys=("scores", "vad"))
    scores = out["scores"][0]
    order = np.argsort(-scores, kind="stable")[:k]
    top = [(CATEGORIES[i], float(scores[i])) for i in order]
    if with_vad:
        return top, dict(zip(CONTINUOUS, map(float, out["vad"][0])))
    return top
