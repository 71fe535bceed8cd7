"""Emotic and Flickr8k evaluation metrics in percent (VAD errors and ranks aside); conventions: docs/statistics.md."""

from typing import Sequence

import numpy as np
from scipy.stats import hypergeom
from sklearn.metrics import average_precision_score

from .labels import CATEGORIES, CONTINUOUS


def as_2d(name: str, arr, n_rows: int | None = None, n_cols: int | None = None) -> np.ndarray:
    """``arr`` as a 2-D array of finite values (of ``n_rows`` or ``n_cols`` when given), or a ValueError naming it."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or any(want not in (None, got) for want, got in zip((n_rows, n_cols), arr.shape)):
        raise ValueError(f"{name}: expected an array of shape ({n_rows or 'N'}, {n_cols or 'K'}), got {arr.shape}")
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def emotic_metrics(scores, labels, vad_pred=None, vad_true=None) -> dict:
    """mAP, AP per category (NaN without a positive), dominant accuracy and, given VAD (N, 3), its MAE."""
    scores = as_2d("scores", scores)
    labels = as_2d("labels", labels, *scores.shape)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels: expected a 0/1 multi-hot array")
    if scores.shape[0] == 0:
        raise ValueError("scores: no rows to evaluate")
    n, k = scores.shape
    categories = CATEGORIES if k == len(CATEGORIES) else tuple(f"category_{j}" for j in range(k))
    labels, ap = labels.astype(np.int64), np.full(k, np.nan)
    for j in range(k):
        if labels[:, j].any():  # AP is undefined without a positive (sklearn warns and returns a meaningless 0)
            ap[j] = 100.0 * average_precision_score(labels[:, j], scores[:, j])
    scored = ~np.isnan(ap)
    out = {"mAP": float(ap[scored].mean()) if scored.any() else float("nan"),
           "ap_per_category": dict(zip(categories, map(float, ap))), "n_categories_scored": int(scored.sum()),
           "dominant_accuracy": float(100.0 * labels[np.arange(n), scores.argmax(axis=1)].mean()), "n": int(n)}
    if (vad_pred is None) != (vad_true is None):
        raise ValueError("vad_pred and vad_true must be given together")
    if vad_pred is not None:
        vad_pred, vad_true = (as_2d(name, v, n, len(CONTINUOUS)) for name, v in (("vad_pred", vad_pred),
                                                                                   ("vad_true", vad_true)))
        mae = np.abs(vad_pred.astype(np.float64) - vad_true.astype(np.float64)).mean(axis=0)
        out["vad_mae"] = {**{name: float(v) for name, v in zip(CONTINUOUS, mae)}, "mean": float(mae.mean())}
    return out


def retrieval_ranks(sim, caption_image) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks, pessimistic on ties: each image's best own caption (M,), each caption's image (C,)."""
    sim, caption_image = as_2d("similarity", sim), np.asarray(caption_image)
    m, c = sim.shape
    if caption_image.shape != (c,) or caption_image.dtype.kind not in "iu":
        raise ValueError(f"caption_image: expected integer image rows of shape ({c},) (one per caption column of the "
                         f"similarity matrix), got {caption_image.shape} {caption_image.dtype}")
    if c and (caption_image.min() < 0 or caption_image.max() >= m):
        raise ValueError(f"caption_image: values must lie in [0, {m}) (rows of the similarity matrix)")
    if (orphans := np.setdiff1d(np.arange(m), caption_image)).size:
        raise ValueError(f"caption_image: image row {orphans[0]} has no caption ({orphans.size} such images); "
                         "image->text recall is undefined for it")
    sim, caption_image = sim.astype(np.float64), caption_image.astype(np.int64)
    own = caption_image[None, :] == np.arange(m)[:, None]          # (M, C) True where caption c belongs to image m
    best_own = np.where(own, sim, -np.inf).max(axis=1)              # each image's best own-caption score
    i2t = 1 + ((sim >= best_own[:, None]) & ~own).sum(axis=1)
    pos = sim[caption_image, np.arange(c)]                          # each caption's score with its own image
    t2i = (sim >= pos[None, :]).sum(axis=0)                         # counts its own image once: 1 + wrong ones
    return i2t.astype(np.int64), t2i.astype(np.int64)


def retrieval_metrics(sim, caption_image, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """R@k both ways (percent), median ranks (possibly half ranks), ``mean_R@1`` and ``rsum`` of an (M, C) matrix."""
    i2t, t2i = retrieval_ranks(sim, caption_image)
    out = {f"{d}_R@{k}": float(100.0 * (r <= k).mean()) for d, r in (("i2t", i2t), ("t2i", t2i)) for k in ks}
    out["i2t_median_rank"], out["t2i_median_rank"] = float(np.median(i2t)), float(np.median(t2i))
    if 1 in ks:
        out["mean_R@1"] = (out["i2t_R@1"] + out["t2i_R@1"]) / 2
    out["rsum"] = float(sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks))
    out["n_images"], out["n_captions"] = int(i2t.size), int(t2i.size)
    return out


def retrieval_chance(caption_image, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Expected R@k (percent) of a random ranking, the floor a model must clear (docs/statistics.md)."""
    cap = np.asarray(caption_image)
    if cap.ndim != 1 or cap.size == 0 or cap.dtype.kind not in "iu" or cap.min() < 0:
        raise ValueError(f"caption_image: expected a non-empty 1-D array of image rows, got {cap.shape} {cap.dtype}")
    n_per_image = np.bincount(cap)
    if (n_per_image == 0).any():
        raise ValueError(f"caption_image: image row {np.flatnonzero(n_per_image == 0)[0]} has no caption")
    m, c = len(n_per_image), len(cap)
    out = {f"i2t_R@{k}": float(100.0 * np.mean(1.0 - hypergeom.pmf(0, c, n_per_image, min(k, c)))) for k in ks}
    out.update({f"t2i_R@{k}": float(100.0 * min(k, m) / m) for k in ks})
    if 1 in ks:
        out["mean_R@1"] = (out["i2t_R@1"] + out["t2i_R@1"]) / 2
    return out
