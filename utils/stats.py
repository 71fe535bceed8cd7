"""Intervals, paired comparisons and seed summaries for the numbers the notebooks report.

Test splits are small (the demo Emotic split has about 150 persons, the demo Flickr8k split about 60 images), so
a metric without an interval, or two models a point apart without a test, says little. Everything here takes numpy
arrays, returns plain floats and dicts, and is deterministic for a given ``seed``. docs/statistics.md explains the
choices in prose; in short:

- **Intervals** are bootstrap intervals over test items: Emotic persons; Flickr8k images, each together with its
  captions. Ranks are computed once on the full test gallery and the per-item outcomes are resampled. Success rates
  (attacks) get a Wilson score interval.
- **mAP is bias-corrected.** Sample AP overstates the population AP when a category has few positives, and a
  percentile bootstrap of that statistic leans the same way again. The mAP estimate is therefore the sample mAP minus
  a delete-half jackknife estimate of that bias, and its interval is the bootstrap distribution's spread re-centred
  on the corrected estimate (``_recentred``). benchmarks/bench_coverage.py measures what this buys.
- **Comparisons** of two models on the same items: a paired bootstrap of the difference (the interval) and a paired
  permutation test that swaps each item's predictions between the models with probability 1/2 (the p-value). For
  mAP, whose items are ranked against each other, a swap would rank one model's scores against the other's, so its
  p-value comes from the paired bootstrap instead (``_recentred_p``). Paired successes/failures: McNemar's exact
  test.
- **Point estimates** are those of ``utils.metrics`` (same function, same numbers) except the bias-corrected mAP;
  the resampled replicates use the vectorised code below, which is tested against the slow path.
- **The estimate always lies inside its interval** (asserted in ``_recentred`` and ``_covering``).

Draws: resample ``b`` is ``rng.integers(0, n, n)`` in order from ``np.random.default_rng(seed)``, exactly the
draws ``scipy.stats.bootstrap(..., rng=np.random.default_rng(seed))`` makes, so a mean's interval equals scipy's.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from scipy.stats import binomtest

from .metrics import emotic_metrics, retrieval_metrics, retrieval_ranks

__all__ = [
    "average_precision",
    "bias_corrected_map",
    "bootstrap_interval",
    "compare_emotic",
    "compare_retrieval",
    "difference_wording",
    "emotic_intervals",
    "format_interval",
    "mcnemar_exact",
    "paired_bootstrap",
    "paired_permutation_test",
    "retrieval_intervals",
    "seed_summary",
    "split_size_note",
    "success_rate_interval",
    "wilson_interval",
]

EMOTIC_METRICS = ("mAP", "dominant_accuracy", "vad_mae")
# Smallest test splits on which benchmarks/bench_coverage.py measured the 95 % intervals holding the population value
# at 90 % or more (Emotic-like persons; Flickr8k-like images with 5 captions each); smaller splits get a warning line.
MIN_ITEMS_FOR_COVERAGE = {"emotic": 1000, "flickr8k": 63}
_CHUNK = 128  # resamples (or permutations) evaluated at once: memory stays at _CHUNK x items per array


# ----------------------------------------------------------------------------------------------- helpers
def _check_settings(n_items: int, n_draws: int, confidence: float, what: str = "n_resamples") -> None:
    if int(n_items) < 1:
        raise ValueError(f"n_items: need at least one test item, got {n_items}")
    if int(n_draws) < 1:
        raise ValueError(f"{what}: must be at least 1, got {n_draws}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must lie strictly between 0 and 1, got {confidence}")


def _resample_chunks(n_items: int, n_resamples: int, seed) -> Iterator[np.ndarray]:
    """Index arrays (chunk, n_items); drawing in chunks gives the same stream as one (n_resamples, n_items) draw."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, _CHUNK):
        yield rng.integers(0, n_items, (min(_CHUNK, n_resamples - start), n_items))


def _counts(idx: np.ndarray, n_items: int) -> np.ndarray:
    """How often each item appears in each resample: (chunk, n_items) int32 from (chunk, n_items) indices."""
    rows = idx.shape[0]
    flat = (idx + n_items * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n_items).reshape(rows, n_items).astype(np.int32)


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2  # two calls like scipy.stats.bootstrap, so the numbers match it bit for bit
    return float(np.percentile(replicates, 100 * alpha)), float(np.percentile(replicates, 100 * (1 - alpha)))


def _summary(estimate: float, replicates: np.ndarray, confidence: float) -> dict:
    low, high = _percentiles(np.asarray(replicates, dtype=np.float64), confidence)
    return {"estimate": float(estimate), "low": low, "high": high}


def _inside(estimate: float, low: float, high: float) -> None:
    assert not (low > estimate or estimate > high), f"estimate {estimate} outside its interval [{low}, {high}]"


def _covering(estimate: float, replicates: np.ndarray, confidence: float) -> dict:
    """Percentile interval, widened to reach the estimate in the rare case it lies outside (a heavily skewed
    bootstrap distribution of a median rank on a few dozen items): an interval that excludes its own estimate
    cannot be read. For a mean (accuracy, VAD error, R@k) this is the plain percentile interval."""
    out = _summary(estimate, replicates, confidence)
    if np.isfinite(out["estimate"]) and np.isfinite(out["low"]):
        out["low"], out["high"] = min(out["low"], out["estimate"]), max(out["high"], out["estimate"])
        _inside(out["estimate"], out["low"], out["high"])
    return out


def _recentred(estimate: float, replicates: np.ndarray, confidence: float) -> dict:
    """The bootstrap distribution's percentile spread around its median, placed on ``estimate``:
    ``[estimate - (median - q_low), estimate + (q_high - median)]``. Used where the estimate is bias-corrected
    (mAP): the replicates are centred near ``sample + bias`` (the resampled statistic leans like the sample one), so
    their raw percentiles would sit beside the corrected estimate, not around it. Contains the estimate by
    construction (q_low <= median <= q_high)."""
    reps = np.asarray(replicates, dtype=np.float64)
    low, high = _percentiles(reps, confidence)
    median = float(np.percentile(reps, 50))
    out = {"estimate": float(estimate), "low": float(estimate - (median - low)),
           "high": float(estimate + (high - median))}
    if np.isfinite(out["estimate"]) and np.isfinite(out["low"]):
        _inside(out["estimate"], out["low"], out["high"])
    return out


# ---------------------------------------------------------------------------------------- success rates
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (0..1). Unlike the normal approximation it stays inside [0, 1] and
    is not degenerate at 0 or n successes, which matters on the few dozen images an attack is run on.
    ``n == 0`` gives ``(nan, nan)``: no trial, no information."""
    successes, n = int(successes), int(n)
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got successes={successes}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must lie strictly between 0 and 1, got {confidence}")
    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def success_rate_interval(successes: int, n: int, confidence: float = 0.95) -> dict:
    """A success rate in percent with its Wilson interval: ``{estimate, low, high}`` (NaN when ``n == 0``)."""
    low, high = wilson_interval(successes, n, confidence)
    estimate = 100.0 * successes / n if n else float("nan")
    return {"estimate": estimate, "low": 100.0 * low, "high": 100.0 * high}


# ------------------------------------------------------------------------------------ generic bootstrap
def bootstrap_interval(statistic: Callable[[np.ndarray], float], n_items: int, *, n_resamples: int = 1000,
                       confidence: float = 0.95, seed=0) -> dict:
    """Percentile bootstrap interval of ``statistic`` over test items.

    ``statistic(idx)`` receives an index array into the test items (``np.arange(n_items)`` for the point
    estimate, then each resample, items drawn with replacement) and returns a float. Returns
    ``{estimate, low, high}``. A statistic that is undefined on some resample (NaN) makes the interval NaN.
    """
    _check_settings(n_items, n_resamples, confidence)
    estimate = float(statistic(np.arange(n_items)))
    reps = np.array([statistic(i) for chunk in _resample_chunks(n_items, n_resamples, seed) for i in chunk],
                    dtype=np.float64)
    return _summary(estimate, reps, confidence)


# --------------------------------------------------------------------------------------------- Emotic
class _APPlan:
    """Each category's scores sorted once (descending), with its groups of tied scores and where its positives are.

    A bootstrap resample (or a permutation over stacked A and B predictions) only changes how often each item
    counts, never the order of the scores, so the resampled AP is a weighted AP over this fixed order: no sort per
    resample, which is why this replaces ``sklearn.metrics.average_precision_score`` in the resampling loops
    (sklearn stays the reference for the point estimate and in the tests).
    """
    # Why hand-written: benchmarks/bench_stats.py measures it against sklearn in a loop at Emotic's full test size
    # (7,203 persons x 26 categories); it is more than an order of magnitude faster and agrees to 1e-15.

    def __init__(self, labels: np.ndarray, scores: np.ndarray):
        self.columns = []
        for j in range(scores.shape[1]):
            order = np.argsort(-scores[:, j], kind="stable")
            s, y = scores[order, j], labels[order, j].astype(bool)
            ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])     # last position of each tie group
            group = np.repeat(np.arange(len(ends)), np.diff(np.r_[-1, ends]))
            pos_group = group[y]                                     # tie group of each positive, in sorted order
            # groups holding positives: their end position, and the index (among positives) of their last positive
            last = np.flatnonzero(np.r_[pos_group[1:] != pos_group[:-1], True]) if y.any() else np.array([], int)
            self.columns.append((order[y], order, ends[pos_group[last]], last))

    def ap(self, counts: np.ndarray) -> np.ndarray:
        """(B, K) average precision (0..1) for (B, N) item counts; NaN where a resample has no positive.

        sklearn treats tied scores as one threshold: precision is read only at the end of a tie group, and all
        positives of the group are credited at that precision. So AP = sum over groups g of
        (positive count in g) * precision(end of g) / positives, and only groups holding a positive contribute.
        """
        counts_t = np.ascontiguousarray(counts.T, dtype=np.int32)           # (N, B): row gathers are contiguous
        b, k = counts.shape[0], len(self.columns)
        out = np.full((b, k), np.nan)
        for j, (pos_items, order, pos_ends, last) in enumerate(self.columns):
            if not len(pos_items):
                continue
            seen = np.cumsum(counts_t[order], axis=0, dtype=np.int32)[pos_ends]       # (G, B) items up to g
            tp = np.cumsum(counts_t[pos_items], axis=0, dtype=np.int32)[last]         # (G, B) positives up to g
            out[:, j] = self._ap(tp, seen)
        return out

    @staticmethod
    def _ap(tp: np.ndarray, seen: np.ndarray) -> np.ndarray:
        gain = np.diff(tp, axis=0, prepend=0)
        precision = np.divide(tp, seen, out=np.zeros(tp.shape), where=seen > 0)
        positives = tp[-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(positives > 0, (gain * precision).sum(axis=0) / positives, np.nan)


def average_precision(labels, scores, counts=None) -> np.ndarray:
    """Per-column average precision (0..1), equal to ``sklearn.metrics.average_precision_score`` column by column
    (ties included), NaN for a column without a positive.

    ``labels`` and ``scores`` are (N, K) (or (N,)); ``counts`` (B, N) optionally weights each item by an integer
    count per row, which is what a bootstrap resample is: the result is then (B, K), row b equal to sklearn on the
    items repeated ``counts[b]`` times.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    one_d = scores.ndim == 1
    if one_d:
        labels, scores = labels[:, None], scores[:, None]
    if labels.shape != scores.shape or scores.ndim != 2:
        raise ValueError(f"average_precision: labels {labels.shape} and scores {scores.shape} must match, (N, K)")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels: expected a 0/1 array")
    n = scores.shape[0]
    weights = np.ones((1, n), np.int64) if counts is None else np.asarray(counts)
    if weights.ndim != 2 or weights.shape[1] != n or weights.dtype.kind not in "iu" or (weights < 0).any():
        raise ValueError(f"counts: expected non-negative integers of shape (B, {n}), got {weights.shape} "
                         f"{weights.dtype}")
    ap = _APPlan(labels, scores).ap(weights)
    if counts is None:
        ap = ap[0]
    return ap[..., 0] if one_d else ap


class _EmoticItems:
    """Per-person quantities the Emotic metrics are built from, computed once on the full test split."""

    def __init__(self, scores, labels, vad_pred=None, vad_true=None, need_ap: bool = True):
        scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
        self.plan = _APPlan(labels, scores) if need_ap else None
        self.hits = labels[np.arange(len(scores)), scores.argmax(axis=1)].astype(np.float64)
        self.vad_error = None
        if vad_pred is not None:
            err = np.abs(np.asarray(vad_pred, dtype=np.float64) - np.asarray(vad_true, dtype=np.float64))
            self.vad_error = err.mean(axis=1)

    def replicates(self, counts: np.ndarray, which: Sequence[str], complement: bool = False):
        """Metric replicates (B,) for (B, N) counts; with ``complement`` also for the 0/1 masks ``1 - counts``."""
        parts = [counts, 1 - counts] if complement else [counts]
        outs = [{} for _ in parts]
        for out, c in zip(outs, parts):
            if "mAP" in which:
                ap = self.plan.ap(c)
                scored = ~np.isnan(ap)
                with np.errstate(invalid="ignore"):  # a resample with no positive at all has no mAP (NaN)
                    out["mAP"] = 100.0 * np.where(scored, ap, 0).sum(axis=1) / scored.sum(axis=1)
            total = c.sum(axis=1)
            if "dominant_accuracy" in which:
                out["dominant_accuracy"] = 100.0 * (c @ self.hits) / total
            if "vad_mae" in which and self.vad_error is not None:
                out["vad_mae"] = (c @ self.vad_error) / total
        return tuple(outs) if complement else outs[0]


def _emotic_estimates(m: dict) -> dict:
    est = {"mAP": m["mAP"], "dominant_accuracy": m["dominant_accuracy"]}
    if "vad_mae" in m:
        est["vad_mae"] = m["vad_mae"]["mean"]
    return est


def _half_masks(n_items: int, n_draws: int, seed) -> Iterator[np.ndarray]:
    """Chunks of 0/1 masks (rows, n_items) keeping h = ``n_items // 2`` items: every such subset, in
    ``itertools.combinations`` order, when there are no more than ``n_draws`` of them (the bias estimate is then
    exact); otherwise ``n_draws`` subsets, subset r being the r-th ``rng.choice(n_items, h, replace=False)`` of
    ``rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])`` (a stream independent of the
    bootstrap's; documented so that an independent check can draw the same subsets)."""
    h = n_items // 2
    if n_items < 64 and math.comb(n_items, h) <= n_draws:
        keep = np.array(list(itertools.combinations(range(n_items), h)), dtype=np.int64).reshape(-1, h)
        masks = np.zeros((len(keep), n_items), np.int32)
        np.put_along_axis(masks, keep, 1, axis=1)
        yield from np.array_split(masks, max(1, len(masks) // _CHUNK))
        return
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    for start in range(0, n_draws, _CHUNK):
        keep = np.array([rng.choice(n_items, h, replace=False) for _ in range(min(_CHUNK, n_draws - start))])
        masks = np.zeros((len(keep), n_items), np.int32)
        np.put_along_axis(masks, keep.reshape(len(keep), h), 1, axis=1)
        yield masks


def _ap_bias(plan: "_APPlan", ap: np.ndarray, n_items: int, n_draws: int, seed) -> np.ndarray:
    """Per-category small-sample bias of AP (0..1), the delete-d jackknife with half the items kept.

    If AP on n items overstates the population value by about c / n, a subsample of h items overstates it by c / h,
    so (mean AP over subsamples - AP) * h / (n - h) estimates the bias at n. Subsamples hold distinct items only, so
    they reproduce how sample AP behaves (a bootstrap resample repeats positives and catches about half the bias,
    benchmarks/bench_coverage.py). A category is averaged over the subsamples that hold one of its positives; 0
    where none does or the split has fewer than 2 items."""
    h = n_items // 2
    if h < 1:
        return np.zeros_like(ap)
    total, scored = np.zeros(len(ap)), np.zeros(len(ap))
    for masks in _half_masks(n_items, n_draws, seed):
        sub = plan.ap(masks)
        total += np.nansum(sub, axis=0)
        scored += (~np.isnan(sub)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        bias = (total / scored - ap) * h / (n_items - h)
    return np.where(np.isfinite(bias), bias, 0.0)


def _map_correction(plan: "_APPlan", m: dict, n_draws: int, seed) -> tuple[float, np.ndarray]:
    """(bias-corrected mAP in percent, per-category bias 0..1) for the categories the sample mAP averages."""
    ap = np.array(list(m["ap_per_category"].values()), dtype=np.float64) / 100
    bias = _ap_bias(plan, ap, m["n"], n_draws, seed)
    scored = ~np.isnan(ap)
    corrected = float(100 * np.mean(ap[scored] - bias[scored])) if scored.any() else float("nan")
    return corrected, bias


def bias_corrected_map(scores, labels, *, n_subsamples: int = 1000, seed=0) -> dict:
    """mAP with its small-sample bias removed: ``{estimate, sample, bias, ap_bias}`` (percent; ``ap_bias`` per
    category, 0..1, NaN-free). ``sample`` is ``utils.metrics.emotic_metrics``' mAP, ``estimate = sample - bias``.
    With no more than ``n_subsamples`` half-size subsets (tiny splits) all are enumerated and the result is exact."""
    m = emotic_metrics(scores, labels)
    _check_settings(m["n"], n_subsamples, 0.5, "n_subsamples")
    corrected, ap_bias = _map_correction(_APPlan(np.asarray(labels), np.asarray(scores, dtype=np.float64)), m,
                                         n_subsamples, seed)
    return {"estimate": corrected, "sample": m["mAP"], "bias": m["mAP"] - corrected, "ap_bias": ap_bias}


def emotic_intervals(scores, labels, vad_pred=None, vad_true=None, *, n_resamples: int = 1000,
                     confidence: float = 0.95, seed=0) -> dict:
    """Bootstrap intervals (resampling persons) for the Emotic headline metrics.

    Returns ``{"mAP": {estimate, low, high, sample, bias}, "dominant_accuracy": {...}, "vad_mae": {...}}``
    (``vad_mae``, the mean of the V, A, D errors, only when VAD is given). mAP's ``estimate`` is the bias-corrected
    one (``bias_corrected_map``, ``n_resamples`` half-size subsamples) and its interval the bootstrap spread
    re-centred on it (``_recentred``); ``sample`` is ``utils.metrics.emotic_metrics``' plain mAP. The other two are
    per-person means: estimates equal ``emotic_metrics``, intervals are percentile intervals (``_covering``). In each
    resample mAP averages the categories that have at least one positive in that resample, as the estimate does.
    """
    m, estimates, reps, corrected = _emotic_replicates(scores, labels, vad_pred, vad_true, n_resamples, seed)
    _check_settings(m["n"], n_resamples, confidence)
    out = {k: _covering(estimates[k], reps[k], confidence) for k in estimates if k != "mAP"}
    out["mAP"] = {**_recentred(corrected, reps["mAP"], confidence), "sample": m["mAP"], "bias": m["mAP"] - corrected}
    return {k: out[k] for k in estimates}


def _emotic_replicates(scores, labels, vad_pred, vad_true, n_resamples: int, seed) -> tuple:
    """(metrics, estimates, {key: bootstrap replicates}, bias-corrected mAP): what ``emotic_intervals`` is built
    from, also used by benchmarks/bench_coverage.py to put the old percentile interval beside the new one."""
    m = emotic_metrics(scores, labels, vad_pred, vad_true)  # validates the inputs
    n = m["n"]
    _check_settings(n, n_resamples, 0.5)
    estimates = _emotic_estimates(m)
    items = _EmoticItems(scores, labels, vad_pred, vad_true)
    reps = {k: [] for k in estimates}
    for idx in _resample_chunks(n, n_resamples, seed):
        for k, v in items.replicates(_counts(idx, n), tuple(estimates)).items():
            reps[k].append(v)
    corrected, _ = _map_correction(items.plan, m, n_resamples, seed)
    return m, estimates, {k: np.concatenate(v) for k, v in reps.items()}, corrected


def split_size_note(kind: str, n_items: int) -> str | None:
    """The sentence a notebook prints when its test split is smaller than the smallest size at which
    benchmarks/bench_coverage.py measured the 95 % intervals holding the population value at least 90 % of the time
    (``MIN_ITEMS_FOR_COVERAGE``); None when the split is large enough. ``kind``: ``"emotic"`` (persons) or
    ``"flickr8k"`` (images)."""
    if kind not in MIN_ITEMS_FOR_COVERAGE:
        raise ValueError(f"kind: expected one of {tuple(MIN_ITEMS_FOR_COVERAGE)}, got {kind!r}")
    need, unit = MIN_ITEMS_FOR_COVERAGE[kind], "persons" if kind == "emotic" else "images"
    if int(n_items) >= need:
        return None
    what = "mAP" if kind == "emotic" else "mean R@1"
    return (f"this test split ({int(n_items)} {unit}) is too small for its intervals to hold: simulated splits "
            f"smaller than {need} {unit} held the population {what} in fewer than 90 % of their 95 % intervals "
            f"(benchmarks/bench_coverage.py), so read the intervals here as rough")


# ------------------------------------------------------------------------------------------- Flickr8k
def _weighted_median(sorted_values: np.ndarray, sorted_counts: np.ndarray) -> np.ndarray:
    """``np.median`` of each row's multiset (value i repeated counts[b, i] times); values sorted ascending."""
    cum = np.cumsum(sorted_counts, axis=1)
    total = cum[:, -1]
    lower = (cum <= ((total - 1) // 2)[:, None]).sum(axis=1)  # item holding 0-based position (total-1)//2
    upper = (cum <= (total // 2)[:, None]).sum(axis=1)
    return (sorted_values[lower] + sorted_values[upper]) / 2


class _RetrievalItems:
    """Per-image outcomes on the full gallery: each image's rank (image->text) and its captions' ranks."""

    def __init__(self, i2t: np.ndarray, t2i: np.ndarray, caption_image: np.ndarray, ks: Sequence[int]):
        self.i2t, self.t2i, self.caption_image, self.ks = i2t, t2i, caption_image, tuple(ks)
        self.i2t_order, self.t2i_order = np.argsort(i2t, kind="stable"), np.argsort(t2i, kind="stable")

    def replicates(self, counts: np.ndarray, which: Sequence[str] | None = None) -> dict:
        cap_counts = counts[:, self.caption_image]          # an image drawn twice brings its captions twice
        n_img, n_cap = counts.sum(axis=1), cap_counts.sum(axis=1)
        out = {}
        for k in self.ks:
            out[f"i2t_R@{k}"] = 100.0 * (counts @ (self.i2t <= k)) / n_img
        for k in self.ks:
            out[f"t2i_R@{k}"] = 100.0 * (cap_counts @ (self.t2i <= k)) / n_cap
        for k in self.ks:
            out[f"mean_R@{k}"] = (out[f"i2t_R@{k}"] + out[f"t2i_R@{k}"]) / 2
        if which is None or "i2t_median_rank" in which:
            out["i2t_median_rank"] = _weighted_median(self.i2t[self.i2t_order].astype(np.float64),
                                                      counts[:, self.i2t_order])
        if which is None or "t2i_median_rank" in which:
            out["t2i_median_rank"] = _weighted_median(self.t2i[self.t2i_order].astype(np.float64),
                                                      cap_counts[:, self.t2i_order])
        out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in self.ks)
        return out


def _retrieval_estimates(m: dict, ks: Sequence[int]) -> dict:
    est = {}
    for k in ks:
        est[f"i2t_R@{k}"] = m[f"i2t_R@{k}"]
    for k in ks:
        est[f"t2i_R@{k}"] = m[f"t2i_R@{k}"]
    for k in ks:  # retrieval_metrics reports mean_R@1 only; the others follow the same formula
        est[f"mean_R@{k}"] = m.get(f"mean_R@{k}", (m[f"i2t_R@{k}"] + m[f"t2i_R@{k}"]) / 2)
    est["i2t_median_rank"], est["t2i_median_rank"], est["rsum"] = (
        m["i2t_median_rank"], m["t2i_median_rank"], m["rsum"])
    return est


def retrieval_intervals(similarity, caption_image, ks: Sequence[int] = (1, 5, 10), *, n_resamples: int = 1000,
                        confidence: float = 0.95, seed=0) -> dict:
    """Bootstrap intervals for the Flickr8k retrieval metrics, resampling images together with their captions.

    Rule: every query's rank is computed once against the full test gallery (``utils.metrics.retrieval_ranks``);
    a resample draws images with replacement and an image drawn twice brings its rank and all its captions' ranks
    twice. The gallery itself is not resampled, so a resampled R@k is always the recall of the model that was
    evaluated, on a re-weighted set of queries. Returns ``{key: {estimate, low, high}}`` for ``i2t_R@k``,
    ``t2i_R@k``, ``mean_R@k`` (each k), ``i2t_median_rank``, ``t2i_median_rank`` and ``rsum``; estimates equal
    ``utils.metrics.retrieval_metrics``.
    """
    _check_settings(1, n_resamples, confidence)
    estimates = _retrieval_estimates(retrieval_metrics(similarity, caption_image, ks), ks)  # validates the inputs
    reps = _retrieval_replicates(similarity, caption_image, ks, n_resamples, seed)
    return {k: _covering(estimates[k], reps[k], confidence) for k in estimates}


def _retrieval_replicates(similarity, caption_image, ks: Sequence[int], n_resamples: int, seed) -> dict:
    """{key: bootstrap replicates} behind ``retrieval_intervals`` (also read by benchmarks/bench_coverage.py)."""
    i2t, t2i = retrieval_ranks(similarity, caption_image)
    n = len(i2t)
    items = _RetrievalItems(i2t, t2i, np.asarray(caption_image, dtype=np.int64), ks)
    reps: dict = {}
    for idx in _resample_chunks(n, n_resamples, seed):
        for k, v in items.replicates(_counts(idx, n)).items():
            reps.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in reps.items()}


# ---------------------------------------------------------------------------------- paired comparisons
def _bootstrap_p(differences: np.ndarray) -> float:
    """Two-sided: twice the smaller share of resampled differences on one side of zero (capped at 1), i.e. the
    smallest level at which the percentile interval would exclude zero."""
    return float(min(1.0, 2 * min(np.mean(differences <= 0), np.mean(differences >= 0))))


def paired_bootstrap(stat_a: Callable[[np.ndarray], float], stat_b: Callable[[np.ndarray], float], n_items: int,
                     *, n_resamples: int = 1000, confidence: float = 0.95, seed=0) -> dict:
    """Percentile bootstrap interval of ``stat_a - stat_b`` with the SAME resampled items for both models.

    Pairing removes the item-to-item variation the two models share (hard persons are hard for both), so the
    interval of a difference is much narrower than two separate intervals suggest. Returns
    ``{difference, low, high, p_value, confidence}``: the percentile interval (widened to reach the difference in
    the rare case it does not, ``_covering``); ``p_value`` is the bootstrap one of ``_bootstrap_p``
    (``compare_*`` report the permutation test's instead).
    """
    _check_settings(n_items, n_resamples, confidence)
    everything = np.arange(n_items)
    difference = float(stat_a(everything) - stat_b(everything))
    reps = np.array([stat_a(i) - stat_b(i) for chunk in _resample_chunks(n_items, n_resamples, seed)
                     for i in chunk], dtype=np.float64)
    ci = _covering(difference, reps, confidence)
    return {"difference": difference, "low": ci["low"], "high": ci["high"], "p_value": _bootstrap_p(reps),
            "confidence": confidence}


def _permutation_masks(n_items: int, n_permutations: int, seed) -> tuple[bool, Iterator[np.ndarray]]:
    """(exact, chunks of swap masks). All 2^n masks when that is no more than ``n_permutations``, else random
    ones, each item swapped with probability 1/2."""
    if n_items < 63 and 2 ** n_items <= n_permutations:
        codes = np.arange(2 ** n_items)
        masks = ((codes[:, None] >> np.arange(n_items)) & 1).astype(bool)
        return True, iter(np.array_split(masks, max(1, len(masks) // _CHUNK)))
    rng = np.random.default_rng(seed)
    chunks = (rng.random((min(_CHUNK, n_permutations - s), n_items)) < 0.5 for s in range(0, n_permutations, _CHUNK))
    return False, chunks


def _permutation_p(observed: float, null: np.ndarray, exact: bool) -> float:
    """Two-sided p: share of swap patterns whose |difference| reaches the observed one. Random patterns use
    (1 + count) / (1 + draws), which never returns 0 and keeps the test valid. The tolerance only absorbs
    rounding (the no-swap pattern must count as reaching the observed value)."""
    reach = np.abs(null) >= abs(observed) - 1e-9 * max(1.0, abs(observed))
    count = int(reach.sum())
    return count / len(null) if exact else (1 + count) / (1 + len(null))


def paired_permutation_test(values_a, values_b, metric: Callable[[np.ndarray], float], *,
                            n_permutations: int = 10_000, seed=0) -> dict:
    """Paired permutation test: under "no difference", each item's predictions could as well have come from the
    other model, so each item's row is swapped between A and B with probability 1/2 and ``metric`` is recomputed on
    both (works for non-additive metrics such as mAP, whose value is not a sum over items).

    ``values_a`` / ``values_b`` have the same shape, items along the first axis; ``metric(rows) -> float``. When
    2^n <= ``n_permutations`` every swap pattern is enumerated (an exact test). Returns
    ``{difference, p_value, n_permutations, exact}``.
    """
    a, b = np.asarray(values_a), np.asarray(values_b)
    if a.shape != b.shape or a.ndim < 1 or len(a) < 1:
        raise ValueError(f"values_a {a.shape} and values_b {b.shape} must have the same shape, items first")
    _check_settings(len(a), n_permutations, 0.5, "n_permutations")
    observed = float(metric(a) - metric(b))
    exact, chunks = _permutation_masks(len(a), n_permutations, seed)
    null = []
    shape = (-1,) + (1,) * (a.ndim - 1)
    for masks in chunks:
        for mask in masks:
            swap = mask.reshape(shape)
            null.append(metric(np.where(swap, b, a)) - metric(np.where(swap, a, b)))
    null = np.asarray(null, dtype=np.float64)
    return {"difference": observed, "p_value": _permutation_p(observed, null, exact), "n_permutations": len(null),
            "exact": exact}


def _recentred_p(differences: np.ndarray, centre: float) -> float:
    """Two-sided p-value of the bootstrap distribution re-centred on ``centre`` (what ``_recentred`` does to the
    interval): twice the smaller share of shifted replicates on one side of zero, counted as (1 + k) / (1 + B) so
    it is never 0. It agrees with the interval: p < 1 - confidence when the interval excludes zero (up to the
    percentiles' interpolation)."""
    shifted = differences - np.percentile(differences, 50) + centre
    k = min(int((shifted <= 0).sum()), int((shifted >= 0).sum()))
    return float(min(1.0, 2 * (1 + k) / (1 + len(shifted))))


def _paired(boot: Callable[[np.ndarray], np.ndarray], perm: Callable[[np.ndarray], np.ndarray] | None, n: int,
            observed: float, *, n_resamples: int, n_permutations: int, confidence: float, seed,
            corrected: float | None = None) -> dict:
    """Shared by compare_*: ``boot(counts)`` gives A - B on (B, n) resample counts; ``perm(masks)`` gives A - B
    after swapping the items where the (P, n) boolean mask is set. Draws are those of ``paired_bootstrap`` and
    ``paired_permutation_test`` with the same seed, so the results equal theirs. With ``corrected`` (mAP: the
    difference of the bias-corrected estimates) that is the reported difference, the interval is re-centred on it
    and, with ``perm=None``, the p-value is the re-centred bootstrap's (``_recentred_p``)."""
    _check_settings(n, n_resamples, confidence)
    _check_settings(n, n_permutations, confidence, "n_permutations")
    diffs = np.concatenate([boot(_counts(idx, n)) for idx in _resample_chunks(n, n_resamples, seed)])
    ci = _covering(observed, diffs, confidence) if corrected is None else _recentred(corrected, diffs, confidence)
    out = {"difference": ci["estimate"], "low": ci["low"], "high": ci["high"], "sample_difference": float(observed),
           "confidence": confidence, "n_items": int(n), "n_resamples": int(n_resamples)}
    if perm is None:
        return {**out, "p_value": _recentred_p(diffs, ci["estimate"]), "test": "paired bootstrap",
                "n_permutations": 0, "exact": False}
    exact, chunks = _permutation_masks(n, n_permutations, seed)
    null = np.concatenate([perm(masks) for masks in chunks])
    return {**out, "p_value": _permutation_p(observed, null, exact), "test": "paired permutation",
            "n_permutations": len(null), "exact": exact}


def _stack_masks(masks: np.ndarray) -> np.ndarray:
    """(P, n) swap masks -> (P, 2n) 0/1 counts over [A items; B items] selecting model A' (B where swapped)."""
    return np.hstack([~masks, masks]).astype(np.int32)


def compare_emotic(scores_a, scores_b, labels, metric: str = "mAP", vad_pred_a=None, vad_pred_b=None,
                   vad_true=None, *, n_resamples: int = 1000, n_permutations: int = 10_000,
                   confidence: float = 0.95, seed=0) -> dict:
    """Model A minus model B on the same Emotic persons, for ``metric`` in ``mAP``, ``dominant_accuracy`` or
    ``vad_mae`` (the last needs ``vad_pred_a``, ``vad_pred_b`` and ``vad_true``).

    Returns ``{difference, low, high, p_value, test, sample_difference, ...}``: the interval is a paired bootstrap
    over persons and, for accuracy and VAD error, the p-value a paired permutation test, both computed with the
    vectorised metric. They equal ``paired_bootstrap`` / ``paired_permutation_test`` called with
    ``emotic_metrics`` (same seed), only faster. mAP differs in two ways. ``difference`` is that of the
    bias-corrected estimates (``bias_corrected_map``, the same half-size subsets for both models) with the bootstrap
    interval re-centred on it, as ``emotic_intervals`` does (``sample_difference`` is the plain one). And the
    p-value is that of the same re-centred paired bootstrap (``_recentred_p``), not a permutation test: swapping a
    person's scores between the models ranks model A's scores against model B's inside a category, so with
    differently calibrated models that null is not "equal mAP"; swapping per-category ranks instead still rejected
    too often (benchmarks/bench_coverage.py). AP depends only on the order within each model's own scores, so
    neither number changes when one model is recalibrated by an increasing map.
    """
    if metric not in EMOTIC_METRICS:
        raise ValueError(f"metric: expected one of {EMOTIC_METRICS}, got {metric!r}")
    if metric == "vad_mae" and (vad_pred_a is None or vad_pred_b is None or vad_true is None):
        raise ValueError("metric 'vad_mae' needs vad_pred_a, vad_pred_b and vad_true")
    use_vad = metric == "vad_mae"
    ma = emotic_metrics(scores_a, labels, vad_pred_a if use_vad else None, vad_true if use_vad else None)
    mb = emotic_metrics(scores_b, labels, vad_pred_b if use_vad else None, vad_true if use_vad else None)
    observed = _emotic_estimates(ma)[metric] - _emotic_estimates(mb)[metric]
    need_ap = metric == "mAP"
    items_a = _EmoticItems(scores_a, labels, vad_pred_a if use_vad else None, vad_true, need_ap)
    items_b = _EmoticItems(scores_b, labels, vad_pred_b if use_vad else None, vad_true, need_ap)
    stacked = _EmoticItems(np.vstack([scores_a, scores_b]), np.vstack([labels, labels]),  # permutations: not mAP
                           np.vstack([vad_pred_a, vad_pred_b]) if use_vad else None,
                           np.vstack([vad_true, vad_true]) if use_vad else None, need_ap=False)

    def boot(counts):
        return items_a.replicates(counts, (metric,))[metric] - items_b.replicates(counts, (metric,))[metric]

    def perm(masks):  # B' selects exactly the stacked items A' leaves out: one pass gives both
        a, b = stacked.replicates(_stack_masks(masks), (metric,), complement=True)
        return a[metric] - b[metric]

    estimate_a, estimate_b, corrected = _emotic_estimates(ma)[metric], _emotic_estimates(mb)[metric], None
    if need_ap:  # the same subsamples (same seed) for both models: a paired correction
        estimate_a = _map_correction(items_a.plan, ma, n_resamples, seed)[0]
        estimate_b = _map_correction(items_b.plan, mb, n_resamples, seed)[0]
        corrected = estimate_a - estimate_b
    out = _paired(boot, None if need_ap else perm, ma["n"], observed, n_resamples=n_resamples,
                  n_permutations=n_permutations, confidence=confidence, seed=seed, corrected=corrected)
    return {**out, "metric": metric, "estimate_a": estimate_a, "estimate_b": estimate_b}


def compare_retrieval(sim_a, sim_b, caption_image, metric: str = "mean_R@1", *, n_resamples: int = 1000,
                      n_permutations: int = 10_000, confidence: float = 0.95, seed=0) -> dict:
    """Model A minus model B on the same Flickr8k test images (each with its captions), for any key of
    ``retrieval_intervals`` (``mean_R@1``, ``i2t_R@5``, ``t2i_median_rank``, ...; ``"mean R@1"`` is accepted too).

    Each model's ranks are computed once on its full gallery; the bootstrap resamples images with their captions
    and the permutation test swaps an image's outcomes (its rank and its captions' ranks) between the models.
    Returns ``{difference, low, high, p_value, ...}`` like ``compare_emotic``.
    """
    key = metric.replace(" ", "_")
    ks = (int(key.rsplit("@", 1)[1]),) if "@" in key else (1,)
    if not (key in ("i2t_median_rank", "t2i_median_rank") or key.split("@")[0] in ("i2t_R", "t2i_R", "mean_R")):
        raise ValueError(f"metric: expected i2t_R@k, t2i_R@k, mean_R@k, i2t_median_rank or t2i_median_rank, "
                         f"got {metric!r}")
    cap = np.asarray(caption_image)
    ma, mb = retrieval_metrics(sim_a, cap, ks), retrieval_metrics(sim_b, cap, ks)
    observed = _retrieval_estimates(ma, ks)[key] - _retrieval_estimates(mb, ks)[key]
    (i2t_a, t2i_a), (i2t_b, t2i_b) = retrieval_ranks(sim_a, cap), retrieval_ranks(sim_b, cap)
    m, cap = len(i2t_a), cap.astype(np.int64)
    items_a, items_b = _RetrievalItems(i2t_a, t2i_a, cap, ks), _RetrievalItems(i2t_b, t2i_b, cap, ks)
    stacked = _RetrievalItems(np.concatenate([i2t_a, i2t_b]), np.concatenate([t2i_a, t2i_b]),
                              np.concatenate([cap, cap + m]), ks)

    def boot(counts):
        return items_a.replicates(counts, (key,))[key] - items_b.replicates(counts, (key,))[key]

    def perm(masks):
        stack = _stack_masks(masks)
        return stacked.replicates(stack, (key,))[key] - stacked.replicates(1 - stack, (key,))[key]

    out = _paired(boot, perm, m, observed, n_resamples=n_resamples, n_permutations=n_permutations,
                  confidence=confidence, seed=seed)
    return {**out, "metric": key, "estimate_a": _retrieval_estimates(ma, ks)[key],
            "estimate_b": _retrieval_estimates(mb, ks)[key]}


def mcnemar_exact(success_a, success_b) -> dict:
    """McNemar's exact test for paired success/failure outcomes (e.g. attack success per image, models A and B).

    Only discordant items carry information: ``b`` = A succeeds where B fails, ``c`` = the reverse. Under "no
    difference" b ~ Binomial(b + c, 1/2); the two-sided p-value comes from ``scipy.stats.binomtest``. No discordant
    pair gives p = 1. Returns ``{b, c, p_value}``.
    """
    a, b = np.asarray(success_a), np.asarray(success_b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"success_a {a.shape} and success_b {b.shape}: expected two 1-D arrays of equal length")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("success_a / success_b: expected 0/1 or boolean outcomes")
    a, b = a.astype(bool), b.astype(bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"b": only_a, "c": only_b, "p_value": min(1.0, p)}


# --------------------------------------------------------------------------------------------- wording
def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def difference_wording(result: Mapping, name_a: str, name_b: str, metric: str, unit: str = "points",
                       digits: int = 1) -> str:
    """The sentence a notebook prints for a paired comparison (``compare_*`` or ``paired_bootstrap`` result).

    The interval decides: when it covers zero the sentence says "no detectable difference", otherwise it names the
    model whose metric is higher and by how much, with the interval oriented the same way. Note "higher" is
    literal: for an error or a rank, higher is worse.
    """
    d, lo, hi = float(result["difference"]), float(result["low"]), float(result["high"])
    level = f"{100 * float(result.get('confidence', 0.95)):g} % CI"
    p = result.get("p_value")
    p_text = "" if p is None else f", {_format_p(float(p))}"
    u = f" {unit}" if unit else ""
    f = f".{digits}f"
    if not (lo > 0 or hi < 0):  # covers zero (or undefined): nothing to claim
        return (f"no detectable difference in {metric} between {name_a} and {name_b} "
                f"({name_a} - {name_b} = {d:+{f}}{u}, {level} {lo:{f}} to {hi:{f}}{p_text})")
    if lo > 0:
        return f"{name_a} is higher than {name_b} in {metric} by {d:{f}}{u} ({level} {lo:{f}} to {hi:{f}}{p_text})"
    return f"{name_b} is higher than {name_a} in {metric} by {-d:{f}}{u} ({level} {-hi:{f}} to {-lo:{f}}{p_text})"


def seed_summary(values) -> dict:
    """Mean and sample standard deviation (ddof=1) of a metric over training seeds; one seed gives sd NaN."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("seed_summary: no values")
    if not np.isfinite(v).all():
        raise ValueError("seed_summary: values contain NaN or infinity")
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"), "n": int(v.size)}


def format_interval(d: Mapping, digits: int = 1) -> str:
    """``"41.6 [39.2, 44.0]"`` for a table cell, from ``{estimate, low, high}`` (or ``{difference, low, high}``)."""
    centre = d["estimate"] if "estimate" in d else d["difference"]
    return f"{centre:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


# ----------------------------------------------------------------------------- part 3: multiplicity, paired rates
def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (what ``statsmodels.stats.multitest.multipletests(...,
    method="holm")`` returns as its second value), in the input order: the i-th smallest p is multiplied by
    (m - i + 1), the running maximum is taken in that order and capped at 1. Rejecting where the adjusted p < alpha
    keeps the family-wise error rate at alpha. Four lines, so written here rather than adding statsmodels."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"holm: expected a 1-D array of p-values in [0, 1], got {pvalues!r}")
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1)))
    out = np.empty_like(p)
    out[order] = stepped
    return out


def paired_rate_difference(success_a, success_b, confidence: float = 0.95) -> dict:
    """The difference of two success rates measured on the same items (rate of ``a`` minus rate of ``b``, in
    percent) with Newcombe's square-and-add interval for paired proportions (Stat. Med. 1998, method 10): each
    rate's Wilson interval, combined with the (continuity-corrected) correlation of the paired outcomes. Unlike a
    paired bootstrap it does not collapse to one point when no item is discordant, and it stays inside [-100, 100]. No library offers it (statsmodels
    only has the Wald interval); the formula is five lines. Returns ``{difference, low, high, a, b, n}``."""
    a, b = np.asarray(success_a), np.asarray(success_b)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"success_a {a.shape} and success_b {b.shape}: expected two non-empty 1-D arrays of equal "
                         "length")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("success_a / success_b: expected 0/1 or boolean outcomes")
    a, b = a.astype(bool), b.astype(bool)
    n = len(a)
    both, only_a, only_b = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
    neither = n - both - only_a - only_b
    pa, pb = (both + only_a) / n, (both + only_b) / n
    (la, ua), (lb, ub) = wilson_interval(both + only_a, n, confidence), wilson_interval(both + only_b, n, confidence)
    denominator = (both + only_a) * (neither + only_b) * (both + only_b) * (neither + only_a)
    # the correlation of the paired outcomes, continuity-corrected towards 0 as Newcombe specifies
    cross = both * neither - only_a * only_b
    cross = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = cross / np.sqrt(denominator) if denominator else 0.0
    d = pa - pb
    low = d - np.sqrt(max((pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2, 0.0))
    high = d + np.sqrt(max((ua - pa) ** 2 - 2 * phi * (ua - pa) * (pb - lb) + (pb - lb) ** 2, 0.0))
    return {"difference": 100 * d, "low": 100 * low, "high": 100 * high, "a": 100 * pa, "b": 100 * pb, "n": n}
