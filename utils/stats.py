"""Intervals and paired tests for numbers measured on small test splits (methods, coverage: docs/statistics.md)."""

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy.stats import binomtest

from .metrics import emotic_metrics, retrieval_metrics, retrieval_ranks

CONFIDENCE = 0.95  # of every interval
_CHUNK = 128  # resamples (or permutations) evaluated at once: memory stays at _CHUNK x items per array


def _check_settings(n_items: int, n_draws: int, what: str = "n_resamples") -> None:
    if int(n_items) < 1:
        raise ValueError(f"n_items: need at least one test item, got {n_items}")
    if int(n_draws) < 1:
        raise ValueError(f"{what}: must be at least 1, got {n_draws}")


def _resample_chunks(n_items: int, n_resamples: int, seed, counts: bool = True) -> Iterator[np.ndarray]:
    """Per chunk, each item's count per resample (or the drawn indices): one (n_resamples, n_items) stream."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, _CHUNK):
        idx = rng.integers(0, n_items, (min(_CHUNK, n_resamples - start), n_items))
        flat = (idx + n_items * np.arange(len(idx))[:, None]).ravel()
        yield np.bincount(flat, minlength=idx.size).reshape(idx.shape).astype(np.int32) if counts else idx


def _covering(estimate: float, replicates: np.ndarray, confidence: float, widen: bool = True) -> dict:
    """Percentile interval, widened to reach the estimate in the rare case it lies outside."""
    reps, alpha = np.asarray(replicates, dtype=np.float64), (1 - confidence) / 2  # two calls, as scipy.stats.bootstrap
    low, high = float(np.percentile(reps, 100 * alpha)), float(np.percentile(reps, 100 * (1 - alpha)))
    if widen and np.isfinite(estimate) and np.isfinite(low):
        low, high = min(low, float(estimate)), max(high, float(estimate))
    return {"estimate": float(estimate), "low": low, "high": high}


def _recentred(estimate: float, replicates: np.ndarray, confidence: float) -> dict:
    """The bootstrap spread around its median, placed on a bias-corrected estimate the percentiles would miss."""
    q = _covering(estimate, replicates, confidence, widen=False)
    median = float(np.percentile(np.asarray(replicates, np.float64), 50))
    return {**q, "low": float(estimate - (median - q["low"])), "high": float(estimate + (q["high"] - median))}


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """Wilson interval of a proportion (0..1), not degenerate at 0 or n successes; ``(nan, nan)`` when n == 0."""
    successes, n = int(successes), int(n)
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(successes, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def success_rate_interval(successes: int, n: int) -> dict:
    """A success rate in percent with its Wilson interval: ``{estimate, low, high}`` (NaN when ``n == 0``)."""
    low, high = wilson_interval(successes, n)
    return {"estimate": 100.0 * successes / n if n else float("nan"), "low": 100.0 * low, "high": 100.0 * high}


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n_items: int, *, n_resamples: int = 1000,
                       seed=0) -> dict:
    """Percentile bootstrap ``{estimate, low, high}`` of ``statistic(item indices)`` over resampled test items."""
    _check_settings(n_items, n_resamples)
    estimate = float(statistic(np.arange(n_items)))
    reps = np.array([statistic(i) for c in _resample_chunks(n_items, n_resamples, seed, False) for i in c], np.float64)
    return _covering(estimate, reps, CONFIDENCE, widen=False)


class _EmoticItems:
    """Per-person quantities behind the Emotic metrics, AP sorted once: a resample only re-weights persons."""

    def __init__(self, scores, labels, vad_pred=None, vad_true=None):
        scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
        self.hits = labels[np.arange(len(scores)), scores.argmax(axis=1)].astype(np.float64)
        self.vad_error = None if vad_pred is None else np.abs(
            np.asarray(vad_pred, dtype=np.float64) - np.asarray(vad_true, dtype=np.float64)).mean(axis=1)
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
        """(B, K) AP (0..1) for (B, N) item counts, NaN without a positive; a tie group is one threshold."""
        counts_t = np.ascontiguousarray(counts.T, dtype=np.int32)           # (N, B): row gathers are contiguous
        out = np.full((counts.shape[0], len(self.columns)), np.nan)
        for j, (pos_items, order, pos_ends, last) in enumerate(self.columns):
            if not len(pos_items):
                continue
            seen = np.cumsum(counts_t[order], axis=0, dtype=np.int32)[pos_ends]       # (G, B) items up to g
            tp = np.cumsum(counts_t[pos_items], axis=0, dtype=np.int32)[last]         # (G, B) positives up to g
            gain = np.diff(tp, axis=0, prepend=0)
            precision = np.divide(tp, seen, out=np.zeros(tp.shape), where=seen > 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, j] = np.where(tp[-1] > 0, (gain * precision).sum(axis=0) / tp[-1], np.nan)
        return out

    def replicates(self, counts: np.ndarray, which: Sequence[str]) -> dict:
        out = {}
        if "mAP" in which:
            ap = self.ap(counts)
            scored = ~np.isnan(ap)
            with np.errstate(invalid="ignore"):  # a resample with no positive at all has no mAP (NaN)
                out["mAP"] = 100.0 * np.where(scored, ap, 0).sum(axis=1) / scored.sum(axis=1)
        total = counts.sum(axis=1)
        if "dominant_accuracy" in which:
            out["dominant_accuracy"] = 100.0 * (counts @ self.hits) / total
        if "vad_mae" in which and self.vad_error is not None:
            out["vad_mae"] = (counts @ self.vad_error) / total
        return out


def _replicates(items, n: int, n_resamples: int, seed, which=None) -> dict:
    chunks = [items.replicates(counts, which) for counts in _resample_chunks(n, n_resamples, seed)]
    return {k: np.concatenate([chunk[k] for chunk in chunks]) for k in chunks[0]}


def _map_correction(items: _EmoticItems, m: dict, n_draws: int, seed) -> tuple[float, np.ndarray]:
    """(bias-corrected mAP %, per-category AP bias 0..1): the delete-half jackknife (docs/statistics.md)."""
    ap = np.array(list(m["ap_per_category"].values()), dtype=np.float64) / 100
    n_items, h, bias = m["n"], m["n"] // 2, np.zeros_like(ap)
    if h >= 1:
        if n_items < 64 and math.comb(n_items, h) <= n_draws:
            keep = np.array(list(itertools.combinations(range(n_items), h)), dtype=np.int64).reshape(-1, h)
            chunks = np.array_split(keep, max(1, len(keep) // _CHUNK))
        else:
            rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
            chunks = (np.array([rng.choice(n_items, h, replace=False) for _ in range(min(_CHUNK, n_draws - start))])
                      .reshape(-1, h) for start in range(0, n_draws, _CHUNK))
        subs = []
        for keep in chunks:  # 0/1 masks keeping h items
            masks = np.zeros((len(keep), n_items), np.int32)
            np.put_along_axis(masks, keep, 1, axis=1)
            subs.append(items.ap(masks))
        total = sum((np.nansum(sub, axis=0) for sub in subs), np.zeros(len(ap)))
        scored = sum(((~np.isnan(sub)).sum(axis=0) for sub in subs), np.zeros(len(ap)))
        with np.errstate(invalid="ignore", divide="ignore"):
            bias = (total / scored - ap) * h / (n_items - h)
        bias = np.where(np.isfinite(bias), bias, 0.0)
    scored = ~np.isnan(ap)
    return (float(100 * np.mean(ap[scored] - bias[scored])) if scored.any() else float("nan")), bias


def bias_corrected_map(scores, labels, *, n_subsamples: int = 1000, seed=0) -> dict:
    """mAP minus its small-sample bias: ``{estimate, sample, bias, ap_bias}`` (percent; ``ap_bias`` 0..1)."""
    m = emotic_metrics(scores, labels)
    _check_settings(m["n"], n_subsamples, "n_subsamples")
    corrected, ap_bias = _map_correction(_EmoticItems(scores, labels), m, n_subsamples, seed)
    return {"estimate": corrected, "sample": m["mAP"], "bias": m["mAP"] - corrected, "ap_bias": ap_bias}


def emotic_intervals(scores, labels, vad_pred=None, vad_true=None, *, n_resamples: int = 1000, seed=0) -> dict:
    """``{metric: {estimate, low, high}}`` over resampled persons; mAP bias-corrected (plus ``sample``, ``bias``)."""
    m, estimates, reps, corrected = _emotic_replicates(scores, labels, vad_pred, vad_true, n_resamples, seed)
    return {k: {**_recentred(corrected, reps[k], CONFIDENCE), "sample": m["mAP"], "bias": m["mAP"] - corrected}
            if k == "mAP" else _covering(estimates[k], reps[k], CONFIDENCE) for k in estimates}


def _emotic_replicates(scores, labels, vad_pred, vad_true, n_resamples: int, seed) -> tuple:
    """(metrics, estimates, {key: replicates}, corrected mAP) behind ``emotic_intervals`` (and bench_coverage)."""
    m = emotic_metrics(scores, labels, vad_pred, vad_true)  # validates the inputs
    _check_settings(m["n"], n_resamples)
    estimates = {"mAP": m["mAP"], "dominant_accuracy": m["dominant_accuracy"],
                 **({"vad_mae": m["vad_mae"]["mean"]} if "vad_mae" in m else {})}
    items = _EmoticItems(scores, labels, vad_pred, vad_true)
    reps = _replicates(items, m["n"], n_resamples, seed, tuple(estimates))
    return m, estimates, reps, _map_correction(items, m, n_resamples, seed)[0]


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
        out = {f"i2t_R@{k}": 100.0 * (counts @ (self.i2t <= k)) / n_img for k in self.ks}
        out.update({f"t2i_R@{k}": 100.0 * (cap_counts @ (self.t2i <= k)) / n_cap for k in self.ks})
        out.update({f"mean_R@{k}": (out[f"i2t_R@{k}"] + out[f"t2i_R@{k}"]) / 2 for k in self.ks})
        for d, ranks, order, c in (("i2t", self.i2t, self.i2t_order, counts),
                                   ("t2i", self.t2i, self.t2i_order, cap_counts)):
            if which is None or f"{d}_median_rank" in which:
                out[f"{d}_median_rank"] = _weighted_median(ranks[order].astype(np.float64), c[:, order])
        out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in self.ks)
        return out


def retrieval_intervals(similarity, caption_image, ks: Sequence[int] = (1, 5, 10), *, n_resamples: int = 1000,
                        seed=0) -> dict:
    """``{key: {estimate, low, high}}`` over images resampled with their captions, ranked once on the full gallery."""
    _check_settings(1, n_resamples)
    m = retrieval_metrics(similarity, caption_image, ks)  # validates the inputs
    estimates = {f"{d}_R@{k}": m[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks}
    estimates.update({f"mean_R@{k}": (m[f"i2t_R@{k}"] + m[f"t2i_R@{k}"]) / 2 for k in ks})
    estimates.update({key: m[key] for key in ("i2t_median_rank", "t2i_median_rank", "rsum")})
    reps = _retrieval_replicates(similarity, caption_image, ks, n_resamples, seed)
    return {k: _covering(estimates[k], reps[k], CONFIDENCE) for k in estimates}


def _retrieval_replicates(similarity, caption_image, ks: Sequence[int], n_resamples: int, seed) -> dict:
    """{key: bootstrap replicates} behind ``retrieval_intervals`` (also read by benchmarks/bench_coverage.py)."""
    i2t, t2i = retrieval_ranks(similarity, caption_image)
    return _replicates(_RetrievalItems(i2t, t2i, np.asarray(caption_image, np.int64), ks), len(i2t), n_resamples, seed)


def _permutation_masks(n_items: int, n_permutations: int, seed) -> tuple[bool, Iterator[np.ndarray]]:
    """(exact, chunks of swap masks): all 2^n when that is at most ``n_permutations``, else random ones."""
    if n_items < 63 and 2 ** n_items <= n_permutations:
        masks = ((np.arange(2 ** n_items)[:, None] >> np.arange(n_items)) & 1).astype(bool)
        return True, iter(np.array_split(masks, max(1, len(masks) // _CHUNK)))
    rng = np.random.default_rng(seed)
    chunks = (rng.random((min(_CHUNK, n_permutations - s), n_items)) < 0.5 for s in range(0, n_permutations, _CHUNK))
    return False, chunks


def _permutation_p(observed: float, null: np.ndarray, exact: bool) -> float:
    """Two-sided share of swap patterns reaching |observed|, (1 + k) / (1 + draws) when drawn (never 0)."""
    count = int((np.abs(null) >= abs(observed) - 1e-9 * max(1.0, abs(observed))).sum())  # tolerance: rounding
    return count / len(null) if exact else (1 + count) / (1 + len(null))


def _paired(items_a, items_b, stacked, key: str, n: int, observed: float, estimates: tuple, n_resamples: int,
            n_permutations: int, seed, corrected: float | None = None) -> dict:
    """Paired bootstrap of A - B; with ``stacked`` the permutation test, with ``corrected`` re-centred."""
    _check_settings(n, n_resamples)
    diffs = np.concatenate([items_a.replicates(c, (key,))[key] - items_b.replicates(c, (key,))[key]
                            for c in _resample_chunks(n, n_resamples, seed)])
    ci = _covering(observed, diffs, CONFIDENCE) if corrected is None else _recentred(corrected, diffs, CONFIDENCE)
    out = {"difference": ci["estimate"], "low": ci["low"], "high": ci["high"], "sample_difference": float(observed),
           "confidence": CONFIDENCE, "n_items": int(n), "n_resamples": int(n_resamples)}
    tail = {"metric": key, "estimate_a": estimates[0], "estimate_b": estimates[1]}
    if stacked is None:  # two-sided p of the differences re-centred on the estimate: agrees with ``_recentred``
        shifted = diffs - np.percentile(diffs, 50) + ci["estimate"]
        k = min(int((shifted <= 0).sum()), int((shifted >= 0).sum()))
        return {**out, "p_value": float(min(1.0, 2 * (1 + k) / (1 + len(shifted)))), "test": "paired bootstrap",
                "n_permutations": 0, "exact": False, **tail}
    _check_settings(n, n_permutations, "n_permutations")
    exact, chunks = _permutation_masks(n, n_permutations, seed)
    # (P, n) swap masks -> (P, 2n) counts over [A items; B items] picking A' (B where swapped); B' takes the rest
    stacks = (np.hstack([~masks, masks]).astype(np.int32) for masks in chunks)
    null = np.concatenate([stacked.replicates(s, (key,))[key] - stacked.replicates(1 - s, (key,))[key] for s in stacks])
    return {**out, "p_value": _permutation_p(observed, null, exact), "test": "paired permutation",
            "n_permutations": len(null), "exact": exact, **tail}


def compare_emotic(scores_a, scores_b, labels, metric: str = "mAP", *, n_resamples: int = 1000, seed=0) -> dict:
    """Model A minus model B in bias-corrected mAP on the same persons (same subsamples: paired), p by bootstrap."""
    if metric != "mAP":
        raise ValueError(f"metric: compare_emotic compares mAP only, got {metric!r}")
    ma, mb = emotic_metrics(scores_a, labels), emotic_metrics(scores_b, labels)
    items_a, items_b = _EmoticItems(scores_a, labels), _EmoticItems(scores_b, labels)
    estimate_a, estimate_b = (_map_correction(i, m, n_resamples, seed)[0] for i, m in ((items_a, ma), (items_b, mb)))
    return _paired(items_a, items_b, None, "mAP", ma["n"], ma["mAP"] - mb["mAP"], (estimate_a, estimate_b),
                   n_resamples, 0, seed, estimate_a - estimate_b)


def compare_retrieval(sim_a, sim_b, caption_image, metric: str = "mean_R@1", *, n_resamples: int = 1000,
                      n_permutations: int = 10_000, seed=0) -> dict:
    """Model A minus model B in mean R@1 on the same images (with their captions)."""
    key, ks = metric.replace(" ", "_"), (1,)
    if key != "mean_R@1":
        raise ValueError(f"metric: compare_retrieval compares mean R@1 only, got {metric!r}")
    cap = np.asarray(caption_image)
    estimate_a, estimate_b = (retrieval_metrics(s, cap, ks)[key] for s in (sim_a, sim_b))
    (i2t_a, t2i_a), (i2t_b, t2i_b) = retrieval_ranks(sim_a, cap), retrieval_ranks(sim_b, cap)
    m, cap = len(i2t_a), cap.astype(np.int64)
    stacked = _RetrievalItems(np.concatenate([i2t_a, i2t_b]), np.concatenate([t2i_a, t2i_b]),
                              np.concatenate([cap, cap + m]), ks)
    return _paired(_RetrievalItems(i2t_a, t2i_a, cap, ks), _RetrievalItems(i2t_b, t2i_b, cap, ks), stacked, key, m,
                   estimate_a - estimate_b, (estimate_a, estimate_b), n_resamples, n_permutations, seed)


def _outcomes(success_a, success_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(success_a), np.asarray(success_b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"success_a {a.shape} and success_b {b.shape}: expected two 1-D arrays of equal length")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("success_a / success_b: expected 0/1 or boolean outcomes")
    return a.astype(bool), b.astype(bool)


def mcnemar_exact(success_a, success_b) -> dict:
    """McNemar's exact test on paired 0/1 outcomes: ``{b, c, p_value}`` (b: A only, c: B only)."""
    a, b = _outcomes(success_a, success_b)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"b": only_a, "c": only_b, "p_value": min(1.0, p)}


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values in input order (statsmodels' "holm"; four lines, so no statsmodels)."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"holm: expected a 1-D array of p-values in [0, 1], got {pvalues!r}")
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1)))
    return stepped[np.argsort(order)]  # back in input order


def paired_rate_difference(success_a, success_b) -> dict:
    """Rate of A minus rate of B on the same items (%), Newcombe's paired 95 % interval (no library has it)."""
    a, b = _outcomes(success_a, success_b)
    if not (n := len(a)):
        raise ValueError("success_a / success_b: expected two non-empty 1-D arrays of equal length")
    both, only_a, only_b = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
    neither, pa, pb = n - both - only_a - only_b, (both + only_a) / n, (both + only_b) / n
    (la, ua), (lb, ub) = wilson_interval(both + only_a, n), wilson_interval(both + only_b, n)
    denominator = (both + only_a) * (neither + only_b) * (both + only_b) * (neither + only_a)
    # the correlation of the paired outcomes, continuity-corrected towards 0 as Newcombe specifies
    cross = both * neither - only_a * only_b
    cross = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = cross / np.sqrt(denominator) if denominator else 0.0
    low = pa - pb - np.sqrt(max((pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2, 0.0))
    high = pa - pb + np.sqrt(max((ua - pa) ** 2 - 2 * phi * (ua - pa) * (pb - lb) + (pb - lb) ** 2, 0.0))
    return {"difference": 100 * (pa - pb), "low": 100 * low, "high": 100 * high, "a": 100 * pa, "b": 100 * pb, "n": n}
