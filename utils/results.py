"""How results are saved: metrics as strict JSON, predictions as ``.npz`` (no pickle), both written atomically.

Every notebook saves ``<output>/metrics/<notebook>.json`` and ``<output>/predictions/<notebook>.npz``; the tests
recompute every reported number from the ``.npz`` with independent code. ``docs/results.md`` lists the keys.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from .labels import CATEGORIES, CONTINUOUS
from .metrics import as_2d, check_retrieval


def emotic_payload(scores, labels, vad_pred, vad_true, index=None) -> dict[str, np.ndarray]:
    """Arrays a notebook saves for its Emotic test predictions.

    Keys: ``scores`` (N, 26) float32 category probabilities; ``labels`` (N, 26) uint8 multi-hot ground truth;
    ``vad_pred`` and ``vad_true`` (N, 3) float32 valence/arousal/dominance on 1..10; ``categories`` (26,) and
    ``continuous`` (3,) column names; ``index`` (N,) int64, the row of each person in ``test.csv``
    (defaults to 0..N-1). ``emotic_metrics(p["scores"], p["labels"], p["vad_pred"], p["vad_true"])``
    reproduces the reported numbers.
    """
    scores = as_2d("scores", scores, len(CATEGORIES)).astype(np.float32)
    labels = as_2d("labels", labels, len(CATEGORIES))
    n = scores.shape[0]
    payload = {
        "scores": scores,
        "labels": labels.astype(np.uint8),
        "vad_pred": as_2d("vad_pred", vad_pred, 3).astype(np.float32),
        "vad_true": as_2d("vad_true", vad_true, 3).astype(np.float32),
        "categories": np.array(CATEGORIES),
        "continuous": np.array(CONTINUOUS),
        "index": np.arange(n, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64),
    }
    for key in ("labels", "vad_pred", "vad_true", "index"):
        if payload[key].shape[0] != n:
            raise ValueError(f"{key}: {payload[key].shape[0]} rows, expected {n} like scores")
    return payload


def flickr_payload(similarity, caption_image, image_names=None, captions=None) -> dict[str, np.ndarray]:
    """Arrays a notebook saves for its Flickr8k test predictions.

    Keys: ``similarity`` (M, C) float32 image-by-caption scores; ``caption_image`` (C,) int64 image row of every
    caption; optional ``image_names`` (M,) file names and ``captions`` (C,) texts.
    ``retrieval_metrics(p["similarity"], p["caption_image"])`` reproduces the reported numbers.
    """
    sim, cap = check_retrieval(similarity, caption_image)
    payload = {"similarity": np.asarray(similarity, dtype=np.float32), "caption_image": cap}
    if image_names is not None:
        payload["image_names"] = np.asarray(list(image_names), dtype=str)
        if payload["image_names"].shape != (sim.shape[0],):
            raise ValueError(f"image_names: expected {sim.shape[0]} names, got {payload['image_names'].shape}")
    if captions is not None:
        payload["captions"] = np.asarray(list(captions), dtype=str)
        if payload["captions"].shape != (sim.shape[1],):
            raise ValueError(f"captions: expected {sim.shape[1]} texts, got {payload['captions'].shape}")
    return payload


def save_predictions(path, payload: Mapping[str, np.ndarray]) -> Path:
    """Write a payload to a compressed ``.npz`` readable with ``np.load(path, allow_pickle=False)``."""
    path = Path(path)
    arrays = {k: np.asarray(v) for k, v in payload.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise ValueError(f"{path}: array {k!r} has dtype object, which would need pickle to load")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the temporary name
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
    return path


def load_predictions(path) -> dict[str, np.ndarray]:
    """Read a predictions ``.npz`` back into a dict of arrays (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN; null marks "undefined" (e.g. AP of a category without positives)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, obj: Mapping) -> Path:
    """The one JSON writer of the repository (metrics, checkpoint records, manifests): strict JSON, atomic.

    NaN values (undefined metrics) become ``null``; numpy scalars and arrays become plain numbers and lists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = _jsonable(obj)
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"  # serialise first: a failure leaves no partial file
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: a reader (the main job's summary) never sees half a file
    return path
