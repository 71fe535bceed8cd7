"""Result objects shared by the searches, and their round trip through the flat arrays of a ``.npz`` file (no
pickle). Scores are logits (Flickr8k: similarities), so margins and ``true_score_drop`` are in logit units."""

import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .pipelines import Scorer, apply_pixels, margin_and_success, score_images

COLUMNS = ("row", "attacked", "success", "queries", "generations", "n_pixels", "top_before", "top_after",
           "rank_before", "rank_after", "true_score_drop", "margin_before", "margin_after")
_PER_RESULT = {"rows": ("row", np.int64), "attacked": ("attacked", bool), "success": ("success", bool),
               "queries": ("queries", np.int64), "generations": ("generations", np.int64)}
FIELDS = (*_PER_RESULT, "pixels", "scores_before", "scores_after", "truth", "settings", "cost")


@dataclass
class AttackResult:
    """One image. ``pixels`` holds the pixels that really differ from the original, as rows (x, y, r, g, b)."""
    row: int
    attacked: bool  # False when the clean image was already misclassified (not attacked)
    success: bool  # confirmed by an fp32 pass on ``adversarial``
    queries: int  # model evaluations spent (search + confirmation); a success: the query that fooled it
    generations: int  # search iterations: DE generations, accepted sparse proposals or Sparse-PGD steps
    pixels: np.ndarray  # (<=k, 5) int64
    scores_before: np.ndarray
    scores_after: np.ndarray
    truth: np.ndarray
    adversarial: np.ndarray | None  # (H, W, 3) uint8; None when read back without the clean images

    @property
    def true_score_drop(self) -> float:
        return float(self.scores_before[self.truth].mean() - self.scores_after[self.truth].mean())

    def row_of_table(self) -> list:
        ranks = [int((s[~self.truth] > s[self.truth].max()).sum()) + 1 for s in (self.scores_before, self.scores_after)]
        margins = margin_and_success(np.stack([self.scores_before, self.scores_after]), np.stack([self.truth] * 2))[0]
        return [self.row, self.attacked, self.success, self.queries, self.generations, len(self.pixels),
                int(np.argmax(self.scores_before)), int(np.argmax(self.scores_after)), *ranks, self.true_score_drop,
                *map(float, margins)]


@dataclass
class AttackReport:
    """All images of one run, its settings (``method``, ``pixels`` and the search's budget) and its cost."""
    results: list[AttackResult]
    settings: dict
    seconds: float
    model_queries: int  # images that went through the model during the search (all images)
    search_seconds: float = 0.0  # the whole search loop
    model_seconds: float = 0.0  # of which inside the pipeline's forward pass
    members: dict = field(default_factory=dict)  # an ensemble's members' own reports (not saved)

    def table(self) -> pd.DataFrame:
        """One row per image (no arrays), plus a fresh ensemble's verdicts per member (kept in its settings)."""
        t = pd.DataFrame([r.row_of_table() for r in self.results], columns=list(COLUMNS))
        for col in ("member", "white_box_success", "black_box_ran", "black_box_success") if self.members else ():
            t[col] = self.settings[col]
        return t

    def summary(self) -> dict:
        t = self.table()
        att = t[t.attacked.astype(bool)]
        won = att[att.success.astype(bool)]
        nan = float("nan")
        return {"method": self.settings.get("method", "de"), "pixels": self.settings["pixels"], "images": len(t),
                "attacked": len(att), "successes": len(won),  # attacked: correct before the attack
                "success_rate": float(len(won) / len(att)) if len(att) else nan,
                "queries_per_success": float(won.queries.mean()) if len(won) else nan,
                "median_queries_per_success": float(won.queries.median()) if len(won) else nan,
                "mean_true_score_drop": float(att.true_score_drop.mean()) if len(att) else nan,
                "mean_rank_shift": float((att.rank_after - att.rank_before).mean()) if len(att) else nan,
                "seconds": self.seconds,
                "queries_per_second": self.model_queries / self.search_seconds if self.search_seconds else nan}

    @property
    def adversarial(self) -> np.ndarray:
        if any(r.adversarial is None for r in self.results):
            raise ValueError("utils/attack/results.py: this report was read back without the clean images; "
                             "pass images= to from_arrays to rebuild the adversarial images")
        return np.stack([r.adversarial for r in self.results])


def assemble_report(scorer: Scorer, final: dict[int, np.ndarray], found: dict[int, np.ndarray],
                    queries: dict[int, int], iterations: dict[int, int], settings: dict) -> AttackReport:
    """The report from the attacked images' ``final`` pixels; those not ``found`` (confirmed) are rescored in fp32."""
    end = time.perf_counter()
    n = len(scorer.images)
    adv = scorer.images.copy()
    idx = np.array(sorted(final), dtype=np.int64)
    if len(idx):
        adv[idx] = apply_pixels(scorer.images[idx], np.stack([final[i] for i in idx]))
    after = scorer.before.copy()
    for i, sc in found.items():
        after[i] = sc
    rescore = np.array([i for i in idx if i not in found], dtype=np.int64)
    if len(rescore):
        after[rescore] = score_images(scorer.pipeline, adv[rescore], scorer.rows[rescore], scorer.batch_size)
    success = margin_and_success(after, scorer.truth)[1] if n else np.zeros(0, bool)
    results = []
    for i in range(n):
        diff = np.argwhere((adv[i] != scorer.images[i]).any(-1))  # (y, x) of pixels that really changed
        px = np.array([[x, y, *adv[i][y, x]] for y, x in diff], dtype=np.int64).reshape(-1, 5)
        results.append(AttackResult(
            row=int(scorer.rows[i]), attacked=i in final, success=bool(i in final and success[i]),
            queries=queries.get(i, 0), generations=iterations.get(i, 0), pixels=px, scores_before=scorer.before[i],
            scores_after=after[i], truth=scorer.truth[i], adversarial=adv[i]))
    return AttackReport(results=results, settings=settings, seconds=end - scorer.started, model_queries=scorer.queries,
                        search_seconds=end - scorer.ready, model_seconds=scorer.model_seconds)


def to_arrays(report: AttackReport, prefix: str) -> dict[str, np.ndarray]:
    """A report as plain arrays ``{prefix}_{field}`` (layout in docs/attacks.md); no pickle, no images."""
    res = report.results
    out = {name: np.array([getattr(r, attr) for r in res], dtype) for name, (attr, dtype) in _PER_RESULT.items()}
    out["pixels"] = np.full((len(res), int(report.settings["pixels"]), 5), -1, np.int64)
    for i, r in enumerate(res):
        out["pixels"][i, :len(r.pixels)] = r.pixels
    for name, empty in (("scores_before", np.float32), ("scores_after", np.float32), ("truth", bool)):
        out[name] = np.stack([getattr(r, name) for r in res]) if res else np.zeros((0, 0), empty)
    out["truth"] = out["truth"].astype(bool)
    out["settings"] = np.array(json.dumps(report.settings, sort_keys=True))
    out["cost"] = np.array([report.seconds, report.model_queries, report.search_seconds, report.model_seconds],
                           np.float64)
    return {f"{prefix}_{name}": value for name, value in out.items()}


def from_arrays(arrays, prefix: str, images: np.ndarray | None = None) -> AttackReport:
    """Inverse of :func:`to_arrays` (a dict or an open ``np.load``); the clean ``images`` rebuild the adversarial."""
    missing = [f"{prefix}_{f}" for f in FIELDS if f"{prefix}_{f}" not in arrays]
    if missing:
        raise KeyError(f"utils/attack/results.py: arrays lack {', '.join(missing)}")
    a = {f: np.asarray(arrays[f"{prefix}_{f}"]) for f in FIELDS}
    n = len(a["rows"])
    if images is not None:
        images = np.asarray(images)
        if images.shape[0] != n:
            raise ValueError(f"utils/attack/results.py: {len(images)} images for {n} results of {prefix!r}")
        adv = apply_pixels(images, a["pixels"])
    results = [AttackResult(**{attr: a[name][i].item() for name, (attr, _) in _PER_RESULT.items()},
                            **{name: a[name][i] for name in ("scores_before", "scores_after", "truth")},
                            pixels=px[px[:, 0] >= 0], adversarial=None if images is None else adv[i])
               for i, px in enumerate(a["pixels"])]
    seconds, model_queries, search_seconds, model_seconds = a["cost"].tolist()
    return AttackReport(results=results, settings=json.loads(str(a["settings"])), seconds=seconds,
                        model_queries=int(model_queries), search_seconds=search_seconds, model_seconds=model_seconds)
