"""Result objects shared by the searches, and their round trip through the flat arrays of a ``.npz`` file.

``scores_before`` / ``scores_after`` are what :meth:`PixelPipeline.scores` returns: logits (Flickr8k:
similarities), the numbers the margin is computed on. Ranks and the top entry are the same as on probabilities
(sigmoid and softmax keep the order within a row); ``true_score_drop`` and the margins are in logit units.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .pipelines import AttackInputs, Scorer, apply_pixels, margin_and_success, score_fp32

__all__ = ["AttackResult", "AttackReport", "to_arrays", "from_arrays", "assemble_report"]


@dataclass
class AttackResult:
    """One image. ``pixels`` holds the pixels that really differ from the original, as rows (x, y, r, g, b)."""

    row: int
    attacked: bool  # False when the clean image was already misclassified (not attacked)
    success: bool  # confirmed by an fp32 pass on ``adversarial``
    queries: int  # model evaluations spent on this image (search + confirmation); a success: the query that fooled it
    generations: int  # search iterations: DE generations (0 = only the initial population) or sparse steps
    pixels: np.ndarray  # (<=k, 5) int64
    scores_before: np.ndarray
    scores_after: np.ndarray
    truth: np.ndarray
    adversarial: np.ndarray | None  # (H, W, 3) uint8; None when read back from arrays without the clean images

    @property
    def rank_before(self) -> int:
        return _best_true_rank(self.scores_before, self.truth)

    @property
    def rank_after(self) -> int:
        return _best_true_rank(self.scores_after, self.truth)

    @property
    def true_score_drop(self) -> float:
        """Mean score (logit) of the true entries, before minus after (positive = the attack lowered them)."""
        return float(self.scores_before[self.truth].mean() - self.scores_after[self.truth].mean())

    @property
    def margin_before(self) -> float:
        """The search's objective on the clean image: best true score minus best other (negative = fooled)."""
        return float(margin_and_success(self.scores_before[None], self.truth[None])[0][0])

    @property
    def margin_after(self) -> float:
        return float(margin_and_success(self.scores_after[None], self.truth[None])[0][0])


def _best_true_rank(scores: np.ndarray, truth: np.ndarray) -> int:
    """1-based rank of the best-scored true entry (1 = correct top prediction)."""
    return int((scores[~truth] > scores[truth].max()).sum()) + 1


@dataclass
class AttackReport:
    """All images of one run, its settings (``method``, ``pixels`` and the search's budget) and its cost."""

    results: list[AttackResult]
    settings: dict
    seconds: float
    model_queries: int  # images that went through the model during the search (all images)
    search_seconds: float = 0.0  # the whole search loop (proposals, pixels written, model, bookkeeping)
    model_seconds: float = 0.0  # of which inside the pipeline's forward pass

    def table(self) -> pd.DataFrame:
        """One row per image (no arrays), ready for the notebooks' tables and plots."""
        return pd.DataFrame([
            dict(row=r.row, attacked=r.attacked, success=r.success, queries=r.queries, generations=r.generations,
                 n_pixels=len(r.pixels), top_before=int(np.argmax(r.scores_before)),
                 top_after=int(np.argmax(r.scores_after)), rank_before=r.rank_before, rank_after=r.rank_after,
                 true_score_drop=r.true_score_drop, margin_before=r.margin_before, margin_after=r.margin_after)
            for r in self.results],
            columns=["row", "attacked", "success", "queries", "generations", "n_pixels", "top_before", "top_after",
                     "rank_before", "rank_after", "true_score_drop", "margin_before", "margin_after"])

    def summary(self) -> dict:
        t = self.table()
        att = t[t.attacked.astype(bool)]
        won = att[att.success.astype(bool)]
        return {
            "method": self.settings.get("method", "de"),
            "pixels": self.settings["pixels"],
            "images": len(t),
            "attacked": len(att),  # correct before the attack
            "successes": len(won),
            "success_rate": float(len(won) / len(att)) if len(att) else float("nan"),
            "queries_per_success": float(won.queries.mean()) if len(won) else float("nan"),
            "median_queries_per_success": float(won.queries.median()) if len(won) else float("nan"),
            "mean_true_score_drop": float(att.true_score_drop.mean()) if len(att) else float("nan"),
            "mean_rank_shift": float((att.rank_after - att.rank_before).mean()) if len(att) else float("nan"),
            "seconds": self.seconds,
            "queries_per_second": self.model_queries / self.search_seconds if self.search_seconds else float("nan"),
        }

    @property
    def adversarial(self) -> np.ndarray:
        if any(r.adversarial is None for r in self.results):
            raise ValueError("utils/attack/results.py: this report was read back without the clean images; "
                             "pass images= to from_arrays to rebuild the adversarial images")
        return np.stack([r.adversarial for r in self.results])


def assemble_report(scorer: Scorer, final: dict[int, np.ndarray], found: dict[int, np.ndarray],
                    queries: dict[int, int], iterations: dict[int, int], settings: dict, seconds: float,
                    search_seconds: float) -> AttackReport:
    """Build the report from each attacked image's final pixels.

    ``final`` maps an attacked image's index to its final candidate (k,5); ``found`` holds the fp32 scores of the
    ones whose success was confirmed. The rest are scored once more in eager fp32 here, so every ``scores_after``
    and every ``success`` comes from an fp32 pass of the final uint8 image.
    """
    inp: AttackInputs = scorer.inputs
    n = len(inp.images)
    adv = inp.images.copy()
    idx = np.array(sorted(final), dtype=np.int64)
    if len(idx):
        adv[idx] = apply_pixels(inp.images[idx], np.stack([final[i] for i in idx]))
    after = inp.before.copy()
    for i, sc in found.items():
        after[i] = sc
    rescore = np.array([i for i in idx if i not in found], dtype=np.int64)
    if len(rescore):
        after[rescore] = score_fp32(scorer.pipeline, adv[rescore], inp.rows[rescore], scorer.batch_size)
    success = margin_and_success(after, inp.truth)[1] if n else np.zeros(0, bool)
    results = []
    for i in range(n):
        diff = np.argwhere((adv[i] != inp.images[i]).any(-1))  # (y, x) of pixels that really changed
        px = np.array([[x, y, *adv[i][y, x]] for y, x in diff], dtype=np.int64).reshape(-1, 5)
        hit = i in final
        results.append(AttackResult(
            row=int(inp.rows[i]), attacked=hit, success=bool(hit and success[i]), queries=queries.get(i, 0),
            generations=iterations.get(i, 0), pixels=px, scores_before=inp.before[i], scores_after=after[i],
            truth=inp.truth[i], adversarial=adv[i]))
    return AttackReport(results=results, settings=settings, seconds=seconds, model_queries=scorer.queries,
                        search_seconds=search_seconds, model_seconds=scorer.model_seconds)


# --------------------------------------------------------------------------------------------------------------
# Flat arrays (what a .npz holds; no pickle)
# --------------------------------------------------------------------------------------------------------------
_FIELDS = ("rows", "attacked", "success", "queries", "generations", "pixels", "scores_before", "scores_after",
           "truth", "settings", "cost")


def to_arrays(report: AttackReport, prefix: str) -> dict[str, np.ndarray]:
    """Pack a report into plain arrays named ``{prefix}_{field}`` (``np.savez`` them; read with allow_pickle=False).

    ``pixels`` is (N, k, 5) int64 padded with -1 rows (an image may need fewer than k changed pixels);
    ``settings`` is a JSON string; ``cost`` is (seconds, model_queries, search_seconds, model_seconds).
    The adversarial images are not stored: they follow from the clean images and ``pixels``.
    """
    res = report.results
    k = int(report.settings["pixels"])
    pixels = np.full((len(res), k, 5), -1, np.int64)
    for i, r in enumerate(res):
        pixels[i, :len(r.pixels)] = r.pixels
    s = len(res[0].scores_before) if res else 0
    out = {
        "rows": np.array([r.row for r in res], np.int64),
        "attacked": np.array([r.attacked for r in res], bool),
        "success": np.array([r.success for r in res], bool),
        "queries": np.array([r.queries for r in res], np.int64),
        "generations": np.array([r.generations for r in res], np.int64),
        "pixels": pixels,
        "scores_before": np.stack([r.scores_before for r in res]) if res else np.zeros((0, s), np.float32),
        "scores_after": np.stack([r.scores_after for r in res]) if res else np.zeros((0, s), np.float32),
        "truth": np.stack([r.truth for r in res]).astype(bool) if res else np.zeros((0, s), bool),
        "settings": np.array(json.dumps(report.settings, sort_keys=True)),
        "cost": np.array([report.seconds, report.model_queries, report.search_seconds, report.model_seconds],
                         np.float64),
    }
    return {f"{prefix}_{name}": value for name, value in out.items()}


def from_arrays(arrays, prefix: str, images: np.ndarray | None = None) -> AttackReport:
    """Inverse of :func:`to_arrays` (``arrays``: a dict or an open ``np.load`` file). With the clean ``images``
    (N,H,W,3) of the same rows, the adversarial images are rebuilt; without, ``adversarial`` is None."""
    missing = [f"{prefix}_{f}" for f in _FIELDS if f"{prefix}_{f}" not in arrays]
    if missing:
        raise KeyError(f"utils/attack/results.py: arrays lack {', '.join(missing)}")
    a = {f: np.asarray(arrays[f"{prefix}_{f}"]) for f in _FIELDS}
    n = len(a["rows"])
    if images is not None:
        images = np.asarray(images)
        if images.shape[0] != n:
            raise ValueError(f"utils/attack/results.py: {len(images)} images for {n} results of {prefix!r}")
        adv = apply_pixels(images, a["pixels"])
    results = []
    for i in range(n):
        px = a["pixels"][i]
        results.append(AttackResult(
            row=int(a["rows"][i]), attacked=bool(a["attacked"][i]), success=bool(a["success"][i]),
            queries=int(a["queries"][i]), generations=int(a["generations"][i]), pixels=px[px[:, 0] >= 0],
            scores_before=a["scores_before"][i], scores_after=a["scores_after"][i], truth=a["truth"][i],
            adversarial=None if images is None else adv[i]))
    seconds, model_queries, search_seconds, model_seconds = a["cost"].tolist()
    return AttackReport(results=results, settings=json.loads(str(a["settings"])), seconds=seconds,
                        model_queries=int(model_queries), search_seconds=search_seconds, model_seconds=model_seconds)
