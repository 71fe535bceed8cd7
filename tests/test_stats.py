"""utils.stats against independent references: scipy.stats (bootstrap, permutation_test, binomtest), sklearn's
average precision, closed-form formulas and brute-force loops written from the definitions."""
from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import average_precision_score

from utils import experiments as X
from utils import stats as S
from utils.metrics import emotic_metrics, retrieval_metrics, retrieval_ranks


# ------------------------------------------------------------------------------------------- references
def random_emotic(rng, n=40, k=6, ties=True):
    labels = (rng.random((n, k)) < 0.25).astype(np.float32)
    scores = rng.random((n, k)) + 0.4 * labels
    if ties:
        scores = np.round(scores * 4) / 4                   # few distinct values: many ties
    return scores, labels


def sklearn_ap(labels, scores):
    """sklearn per column, NaN where a column has no positive (the repository's convention)."""
    return np.array([average_precision_score(labels[:, j], scores[:, j]) if labels[:, j].any() else np.nan
                     for j in range(labels.shape[1])])


def wilson_by_formula(k, n, z):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def uneven_captions(rng, m=12):
    """Images with 3 to 6 captions (shuffled), similarities with ties."""
    caption_image = np.repeat(np.arange(m), rng.integers(3, 7, m))
    rng.shuffle(caption_image)
    sim = np.round(rng.normal(size=(m, len(caption_image))) * 2) / 2
    sim[caption_image, np.arange(len(caption_image))] += 1.0
    return sim, caption_image


def retrieval_rows(sim, caption_image):
    """Per-image rows [image rank, its captions' ranks padded with NaN], ranks from the full gallery."""
    i2t, t2i = retrieval_ranks(sim, caption_image)
    width = np.bincount(caption_image).max()
    rows = np.full((len(i2t), 1 + width), np.nan)
    rows[:, 0] = i2t
    for img in range(len(i2t)):
        own = t2i[caption_image == img]
        rows[img, 1:1 + len(own)] = own
    return rows


def metric_from_rows(rows, key):
    """A retrieval metric from per-image rows, written from the definitions (no utils.stats code)."""
    i2t = rows[:, 0]
    t2i = rows[:, 1:][~np.isnan(rows[:, 1:])]
    if key == "i2t_median_rank":
        return float(np.median(i2t))
    if key == "t2i_median_rank":
        return float(np.median(t2i))
    direction, k = key.split("_R@")
    r_i2t, r_t2i = 100 * np.mean(i2t <= int(k)), 100 * np.mean(t2i <= int(k))
    return {"i2t": r_i2t, "t2i": r_t2i, "mean": (r_i2t + r_t2i) / 2}[direction]


# ------------------------------------------------------------------------------------------ success rates
@pytest.mark.parametrize("k,n", [(0, 12), (3, 12), (12, 12), (17, 40), (1, 1)])
def test_wilson_matches_closed_form(k, n):
    z = sps.norm.ppf(1 - (1 - 0.95) / 2)
    low, high = S.wilson_interval(k, n)
    ref = wilson_by_formula(k, n, z)
    assert (low, high) == pytest.approx(ref, abs=1e-12)
    assert 0 <= low <= k / n <= high <= 1
    rate = S.success_rate_interval(k, n)
    assert rate == pytest.approx({"estimate": 100 * k / n, "low": 100 * ref[0], "high": 100 * ref[1]}, abs=1e-9)


def test_wilson_empty_and_bad_input():
    assert all(math.isnan(x) for x in S.wilson_interval(0, 0))
    assert math.isnan(S.success_rate_interval(0, 0)["estimate"])
    with pytest.raises(ValueError, match="successes <= n"):
        S.wilson_interval(5, 4)


# --------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_interval_equals_scipy_percentile_bootstrap():
    x = np.random.default_rng(0).exponential(size=57)
    got = S.bootstrap_interval(lambda i: x[i].mean(), len(x), n_resamples=999, seed=3)
    ref = sps.bootstrap((x,), np.mean, method="percentile", n_resamples=999, confidence_level=0.95,
                        rng=np.random.default_rng(3))
    assert got["estimate"] == x.mean()
    assert got["low"] == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert got["high"] == pytest.approx(ref.confidence_interval.high, abs=1e-12)


def test_bootstrap_is_seeded():
    x = np.random.default_rng(1).normal(size=30)
    stat = lambda i: float(np.median(x[i]))
    assert S.bootstrap_interval(stat, 30, seed=5) == S.bootstrap_interval(stat, 30, seed=5)
    assert S.bootstrap_interval(stat, 30, seed=5) != S.bootstrap_interval(stat, 30, seed=6)
    with pytest.raises(ValueError, match="n_items"):
        S.bootstrap_interval(stat, 0)


# ------------------------------------------------------------------------------------------- AP
def plan_ap(labels, scores, counts=None):
    """AP per column (0..1, NaN without a positive) by the bootstrap's sorted plan; ``counts`` (B, N) re-weights."""
    ap = S._EmoticItems(scores, labels).ap(np.ones((1, len(scores)), np.int64) if counts is None else counts)
    return ap[0] if counts is None else ap


@pytest.mark.parametrize("ties", [False, True])
def test_vectorised_ap_equals_sklearn(ties):
    rng = np.random.default_rng(2)
    scores, labels = random_emotic(rng, n=80, k=8, ties=ties)
    labels[:, 2] = 0                                     # a column without positives
    labels[:, 3] = 1                                     # a column of positives only
    got = plan_ap(labels, scores)
    np.testing.assert_allclose(got, sklearn_ap(labels, scores), rtol=0, atol=1e-12)
    assert np.isnan(got[2])
    with pytest.warns(UserWarning):                      # sklearn has no AP either: it warns and returns a number
        average_precision_score(labels[:, 2], scores[:, 2])
    # one column and single items
    assert plan_ap(labels[:, :1], scores[:, :1])[0] == pytest.approx(got[0], abs=1e-15)
    assert plan_ap(np.array([[1]]), np.array([[0.3]]))[0] == average_precision_score([1], [0.3]) == 1.0
    assert np.isnan(plan_ap(np.array([[0]]), np.array([[0.3]]))[0])


def test_weighted_ap_equals_sklearn_on_repeated_items():
    """A bootstrap resample is the items repeated counts[b] times: sklearn on the repeated items is the reference."""
    rng = np.random.default_rng(3)
    scores, labels = random_emotic(rng, n=25, k=5)
    idx = rng.integers(0, 25, (30, 25))
    counts = np.stack([np.bincount(i, minlength=25) for i in idx])
    got = plan_ap(labels, scores, counts)
    ref = np.stack([sklearn_ap(labels[i], scores[i]) for i in idx])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    assert np.isnan(ref).any()                           # some resample lost all positives of a category


def test_ap_reference_catches_wrong_tie_handling():
    """The sklearn comparison is sensitive: crediting each tied item at its own position (ranking ties
    arbitrarily instead of as one threshold) is caught on tied data."""
    scores, labels = random_emotic(np.random.default_rng(2), n=80, k=8, ties=True)
    plan = S._EmoticItems(scores, labels)
    broken = []
    for pos_items, order, pos_ends, last in plan.columns:   # pretend every position ends its own group
        y = np.isin(order, pos_items)
        where = np.flatnonzero(y)
        broken.append((pos_items, order, where, np.arange(len(where))))
    plan.columns = broken
    wrong = plan.ap(np.ones((1, 80), np.int64))[0]
    assert not np.allclose(wrong, sklearn_ap(labels, scores), atol=1e-6)


# ------------------------------------------------------------------------------------------ Emotic
def slow_replicates(stat, n, n_resamples, seed):
    """The bootstrap draws of utils.stats, written out: resample b is rng.integers(0, n, n) in order."""
    rng = np.random.default_rng(seed)
    return np.array([stat(rng.integers(0, n, n)) for _ in range(n_resamples)])


def recentred_by_hand(estimate, reps):
    """[estimate - (median - q2.5), estimate + (q97.5 - median)] from the replicates."""
    low, median, high = np.percentile(reps, 2.5), np.percentile(reps, 50), np.percentile(reps, 97.5)
    return estimate - (median - low), estimate + (high - median)


def paired_bootstrap(stat_a, stat_b, n_items, *, n_resamples=1000, confidence=0.95, seed=0):
    """The slow paired bootstrap compare_* must equal: the same resampled items (utils.stats' draws) for A and B."""
    everything = np.arange(n_items)
    difference = float(stat_a(everything) - stat_b(everything))
    reps = slow_replicates(lambda i: stat_a(i) - stat_b(i), n_items, n_resamples, seed).astype(np.float64)
    ci = S._covering(difference, reps, confidence)
    p = float(min(1.0, 2 * min(np.mean(reps <= 0), np.mean(reps >= 0))))
    return {"difference": difference, "low": ci["low"], "high": ci["high"], "p_value": p, "confidence": confidence}


def paired_permutation_test(values_a, values_b, metric, *, n_permutations=10_000, seed=0):
    """The slow paired permutation test compare_* must equal: each item's rows swapped between A and B with
    probability 1/2 (every pattern when 2^n <= n_permutations), ``metric`` recomputed on both."""
    a, b = np.asarray(values_a), np.asarray(values_b)
    if a.shape != b.shape or a.ndim < 1 or len(a) < 1:
        raise ValueError(f"values_a {a.shape} and values_b {b.shape} must have the same shape, items first")
    n, observed = len(a), float(metric(a) - metric(b))
    exact = 2 ** n <= n_permutations
    if exact:
        masks = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(bool)
    else:
        masks = np.random.default_rng(seed).random((n_permutations, n)) < 0.5
    shape = (-1,) + (1,) * (a.ndim - 1)
    null = np.array([metric(np.where(m.reshape(shape), b, a)) - metric(np.where(m.reshape(shape), a, b))
                     for m in masks], dtype=np.float64)
    count = int((np.abs(null) >= abs(observed) - 1e-9 * max(1.0, abs(observed))).sum())
    p = count / len(null) if exact else (1 + count) / (1 + len(null))
    return {"difference": observed, "p_value": p, "n_permutations": len(null), "exact": exact}


def test_emotic_intervals_equal_slow_bootstrap_with_emotic_metrics():
    rng = np.random.default_rng(4)
    scores, labels = random_emotic(rng, n=40, k=10)
    labels[:, 5] = 0
    labels[7, 5] = 1                                      # one positive: many resamples have no positive there
    vad_true = rng.uniform(1, 10, (40, 3))
    vad_pred = vad_true + rng.normal(size=(40, 3))
    got = S.emotic_intervals(scores, labels, vad_pred, vad_true, n_resamples=100, seed=7)
    m = emotic_metrics(scores, labels, vad_pred, vad_true)
    corrected = S.bias_corrected_map(scores, labels, n_subsamples=100, seed=7)
    assert got["mAP"]["sample"] == m["mAP"] == corrected["sample"]
    assert got["mAP"]["estimate"] == pytest.approx(corrected["estimate"], abs=1e-12)
    assert got["mAP"]["bias"] == pytest.approx(corrected["bias"], abs=1e-12)
    assert corrected["bias"] > 0                          # small-sample AP leans upwards
    assert got["dominant_accuracy"]["estimate"] == m["dominant_accuracy"]
    assert got["vad_mae"]["estimate"] == m["vad_mae"]["mean"]
    slow = {
        "mAP": lambda i: emotic_metrics(scores[i], labels[i])["mAP"],
        "dominant_accuracy": lambda i: emotic_metrics(scores[i], labels[i])["dominant_accuracy"],
        "vad_mae": lambda i: emotic_metrics(scores[i], labels[i], vad_pred[i], vad_true[i])["vad_mae"]["mean"],
    }
    for key, stat in slow.items():
        if key == "mAP":                                  # the bootstrap spread re-centred on the corrected estimate
            ref = recentred_by_hand(corrected["estimate"], slow_replicates(stat, 40, 100, seed=7))
            assert (got[key]["low"], got[key]["high"]) == pytest.approx(ref, abs=1e-9)
        else:                                             # a per-person mean: the percentile interval
            ref = S.bootstrap_interval(stat, 40, n_resamples=100, seed=7)
            assert got[key] == pytest.approx(ref, abs=1e-9), key
        assert got[key]["low"] < got[key]["estimate"] < got[key]["high"]
    assert "vad_mae" not in S.emotic_intervals(scores, labels, n_resamples=10)


def test_bias_correction_equals_hand_computation_over_every_half_sample():
    """6 persons, 2 categories: all C(6, 3) = 20 half-size subsets are enumerated, so the correction is exact.
    By hand: AP with sklearn on each subset, averaged over the subsets holding a positive; bias = (that mean - AP)
    * h / (n - h) with h = 3; corrected mAP = mean over categories of (AP - bias)."""
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 0], [1, 1], [0, 0]])
    scores = np.array([[0.9, 0.2], [0.8, 0.7], [0.3, 0.1], [0.6, 0.4], [0.5, 0.3], [0.1, 0.6]])
    n, h = 6, 3
    subsets = list(itertools.combinations(range(n), h))
    assert len(subsets) == 20
    expected = []
    for j in range(2):
        full = average_precision_score(labels[:, j], scores[:, j])
        sub = [average_precision_score(labels[list(c), j], scores[list(c), j]) for c in subsets
               if labels[list(c), j].any()]
        bias = (np.mean(sub) - full) * h / (n - h)
        expected.append(full - bias)
    got = S.bias_corrected_map(scores, labels, n_subsamples=20)
    assert got["estimate"] == pytest.approx(100 * np.mean(expected), abs=1e-12)
    assert got["sample"] == pytest.approx(100 * np.mean(sklearn_ap(labels, scores)), abs=1e-12)
    assert got["bias"] == pytest.approx(got["sample"] - got["estimate"], abs=1e-12)
    # enumeration makes it independent of the seed; more than 20 allowed draws changes nothing either
    assert S.bias_corrected_map(scores, labels, n_subsamples=20, seed=3)["estimate"] == got["estimate"]
    assert S.bias_corrected_map(scores, labels, n_subsamples=500, seed=3)["estimate"] == got["estimate"]
    # 19 draws: random half-samples instead, a different (seeded) number
    drawn = S.bias_corrected_map(scores, labels, n_subsamples=19, seed=3)
    assert drawn["estimate"] != got["estimate"]
    assert drawn["estimate"] == S.bias_corrected_map(scores, labels, n_subsamples=19, seed=3)["estimate"]


def test_random_half_samples_approach_the_enumerated_correction():
    scores, labels = random_emotic(np.random.default_rng(15), n=16, k=4)
    exact = S.bias_corrected_map(scores, labels, n_subsamples=math.comb(16, 8))       # 12,870 subsets
    drawn = S.bias_corrected_map(scores, labels, n_subsamples=3000, seed=1)
    assert drawn["estimate"] == pytest.approx(exact["estimate"], abs=0.3)
    assert drawn["estimate"] != exact["estimate"]


def test_bias_correction_removes_most_of_the_small_sample_lean():
    """Random scores: each category's population AP is its prevalence. On 60 persons the sample AP overstates it;
    averaged over 40 splits the corrected mAP lies much closer to the population value."""
    rng = np.random.default_rng(16)
    prevalence = np.array([0.5, 0.2, 0.08, 0.05])
    sample, corrected = [], []
    for i in range(40):
        labels = (rng.random((60, 4)) < prevalence).astype(int)
        labels[0] = 1                                     # every category scored
        got = S.bias_corrected_map(rng.random((60, 4)), labels, n_subsamples=200, seed=i)
        sample.append(got["sample"])
        corrected.append(got["estimate"])
    population = 100 * prevalence.mean()
    assert np.mean(sample) - population > 4               # the lean being corrected
    assert abs(np.mean(corrected) - population) < 0.5 * (np.mean(sample) - population)


def test_the_estimate_lies_inside_its_interval():
    """On tiny, skewed splits too, for every metric; and the widening and re-centring by hand."""
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        scores, labels = random_emotic(rng, n=12, k=5)
        vad_true = rng.uniform(1, 10, (12, 3))
        got = S.emotic_intervals(scores, labels, vad_true + rng.exponential(3, (12, 3)), vad_true, n_resamples=30,
                                 seed=seed)
        sim, cap = uneven_captions(rng, m=7)
        got.update(S.retrieval_intervals(sim, cap, n_resamples=30, seed=seed))
        for key, ci in got.items():
            assert ci["low"] <= ci["estimate"] <= ci["high"], (seed, key, ci)
    # a percentile interval that misses its estimate is widened to reach it
    assert S._covering(1.0, np.array([2.0, 3.0, 4.0, 5.0]), 0.95) == {
        "estimate": 1.0, "low": 1.0, "high": pytest.approx(np.percentile([2, 3, 4, 5], 97.5))}
    # the re-centred interval by hand: median 3, 2.5 % and 97.5 % percentiles of 1..5
    reps = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    ci = S._recentred(10.0, reps, 0.95)
    assert (ci["low"], ci["high"]) == pytest.approx((10 - (3 - 1.1), 10 + (4.9 - 3)), abs=1e-12)


# ---------------------------------------------------------------------------------------- Flickr8k
def test_retrieval_intervals_follow_the_resampling_rule():
    sim, cap = uneven_captions(np.random.default_rng(5))
    got = S.retrieval_intervals(sim, cap, ks=(1, 5), n_resamples=200, seed=2)
    m = retrieval_metrics(sim, cap, ks=(1, 5))
    for key in ("i2t_R@1", "t2i_R@5", "i2t_median_rank", "t2i_median_rank", "mean_R@1", "rsum"):
        assert got[key]["estimate"] == m[key]
    assert got["mean_R@5"]["estimate"] == pytest.approx((m["i2t_R@5"] + m["t2i_R@5"]) / 2)
    rows = retrieval_rows(sim, cap)                      # ranks once on the full gallery, rows resampled by image
    for key in ("i2t_R@1", "t2i_R@1", "t2i_R@5", "mean_R@5", "i2t_median_rank", "t2i_median_rank"):
        ref = S.bootstrap_interval(lambda i: metric_from_rows(rows[i], key), len(rows), n_resamples=200, seed=2)
        assert got[key] == pytest.approx(ref, abs=1e-9), key


def test_weighted_median_equals_numpy_median():
    rng = np.random.default_rng(6)
    values = np.sort(rng.integers(1, 9, 15)).astype(float)
    counts = rng.integers(0, 4, (50, 15))
    counts[:, 0] += 1                                    # no empty resample
    got = S._weighted_median(values, counts)
    ref = [np.median(np.repeat(values, c)) for c in counts]
    np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------------------------- paired comparisons
def test_paired_bootstrap_equals_scipy_paired_bootstrap():
    rng = np.random.default_rng(8)
    x = rng.normal(size=45)
    y = x + rng.normal(0.3, 0.5, size=45)
    got = paired_bootstrap(lambda i: y[i].mean(), lambda i: x[i].mean(), 45, n_resamples=500, seed=11)
    ref = sps.bootstrap((y, x), lambda a, b, axis: a.mean(axis) - b.mean(axis), paired=True, vectorized=True,
                        method="percentile", n_resamples=500, rng=np.random.default_rng(11))
    assert got["difference"] == pytest.approx(y.mean() - x.mean(), abs=1e-15)
    assert got["low"] == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert got["high"] == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    share = np.mean(ref.bootstrap_distribution <= 0), np.mean(ref.bootstrap_distribution >= 0)
    assert got["p_value"] == pytest.approx(min(1, 2 * min(share)))


def _exact_p(a, b, metric):
    """Enumerate every swap pattern by hand."""
    observed = abs(metric(a) - metric(b))
    reach = 0
    for pattern in itertools.product([False, True], repeat=len(a)):
        s = np.array(pattern).reshape((-1,) + (1,) * (a.ndim - 1))
        d = metric(np.where(s, b, a)) - metric(np.where(s, a, b))
        reach += abs(d) >= observed - 1e-9
    return reach / 2 ** len(a)


def test_permutation_test_exact_on_non_additive_metric():
    rng = np.random.default_rng(9)
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1], [0, 0], [1, 0]], float)
    a = labels + rng.normal(0, 0.4, labels.shape)
    b = rng.random(labels.shape)
    mean_ap = lambda s: emotic_metrics(s, labels)["mAP"]
    got = paired_permutation_test(a, b, mean_ap)
    assert got["exact"] and got["n_permutations"] == 2 ** 8
    assert got["p_value"] == _exact_p(a, b, mean_ap)
    assert got["difference"] == pytest.approx(mean_ap(a) - mean_ap(b))


def test_permutation_test_random_draws_approach_exact_and_scipy():
    rng = np.random.default_rng(10)
    x = rng.normal(size=10)
    y = x + rng.normal(0.5, 1.0, size=10)
    mean = lambda v: float(v.mean())
    exact = _exact_p(y, x, mean)
    ref = sps.permutation_test((y, x), lambda a, b: a.mean() - b.mean(), permutation_type="samples",
                               n_resamples=np.inf)
    assert paired_permutation_test(y, x, mean)["p_value"] == pytest.approx(exact) == pytest.approx(ref.pvalue)
    drawn = paired_permutation_test(y, x, mean, n_permutations=800, seed=1)
    assert not drawn["exact"] and drawn["n_permutations"] == 800
    se = math.sqrt(exact * (1 - exact) / 800)
    assert abs(drawn["p_value"] - exact) < 4 * se + 2 / 800
    # far apart: no random pattern reaches the observed difference, p is 1 / (draws + 1), never 0
    far = paired_permutation_test(np.arange(20.0) + 100, np.arange(20.0), mean, n_permutations=199)
    assert far["p_value"] == 1 / 200
    with pytest.raises(ValueError, match="same shape"):
        paired_permutation_test(y, x[:5], mean)


def test_compare_emotic_equals_generic_paired_functions():
    rng = np.random.default_rng(12)
    scores_a, labels = random_emotic(rng, n=30, k=7)
    scores_b = np.round((scores_a + rng.normal(0, 0.3, scores_a.shape)) * 4) / 4
    kw = {"n_resamples": 80, "seed": 4}
    got = S.compare_emotic(scores_a, scores_b, labels, "mAP", **kw)
    stat = lambda s, i: emotic_metrics(s[i], labels[i])["mAP"]
    boot = paired_bootstrap(lambda i: stat(scores_a, i), lambda i: stat(scores_b, i), 30, **kw)
    assert got["sample_difference"] == pytest.approx(boot["difference"], abs=1e-12)
    # bias-corrected difference; interval and p-value from the re-centred bootstrap
    corrected = (S.bias_corrected_map(scores_a, labels, n_subsamples=80, seed=4)["estimate"]
                 - S.bias_corrected_map(scores_b, labels, n_subsamples=80, seed=4)["estimate"])
    reps = slow_replicates(lambda i: stat(scores_a, i) - stat(scores_b, i), 30, 80, seed=4)
    assert got["difference"] == pytest.approx(corrected, abs=1e-12)
    assert (got["low"], got["high"]) == pytest.approx(recentred_by_hand(corrected, reps), abs=1e-9)
    assert got["estimate_a"] - got["estimate_b"] == pytest.approx(corrected, abs=1e-12)
    shifted = reps - np.median(reps) + corrected
    side = min(np.sum(shifted <= 0), np.sum(shifted >= 0))
    assert got["test"] == "paired bootstrap"
    assert got["p_value"] == pytest.approx(min(1.0, 2 * (1 + side) / 81), abs=1e-12)
    with pytest.raises(ValueError, match="metric"):
        S.compare_emotic(scores_a, scores_b, labels, "accuracy")


def test_compare_retrieval_equals_generic_paired_functions():
    rng = np.random.default_rng(13)
    sim_a, cap = uneven_captions(rng, m=11)
    sim_b = sim_a + np.round(rng.normal(0, 1.0, sim_a.shape))
    rows_a, rows_b = retrieval_rows(sim_a, cap), retrieval_rows(sim_b, cap)
    for metric in ("mean R@1", "mean_R@1"):
        key = metric.replace(" ", "_")
        got = S.compare_retrieval(sim_a, sim_b, cap, metric, n_resamples=150, n_permutations=2 ** 11, seed=3)
        boot = paired_bootstrap(lambda i: metric_from_rows(rows_a[i], key),
                                  lambda i: metric_from_rows(rows_b[i], key), 11, n_resamples=150, seed=3)
        perm = paired_permutation_test(rows_a, rows_b, lambda r: metric_from_rows(r, key),
                                         n_permutations=2 ** 11, seed=3)
        assert got["exact"] and perm["exact"]
        assert got["difference"] == pytest.approx(boot["difference"], abs=1e-12)
        assert (got["low"], got["high"]) == pytest.approx((boot["low"], boot["high"]), abs=1e-9), metric
        assert got["p_value"] == perm["p_value"], metric
    with pytest.raises(ValueError, match="metric"):
        S.compare_retrieval(sim_a, sim_b, cap, "mAP")


def test_findings_caution_names_splits_below_the_measured_size():
    def caution(kind, n):
        table = pd.DataFrame()
        table.attrs["test_items"] = n
        return [line for line in X.findings(kind, table, [], {}, [], pd.DataFrame(), "mAP").lines
                if line.startswith("**caution**")]
    need = X.MIN_ITEMS_FOR_COVERAGE["emotic"][0]
    assert caution("emotic", need) == [] and X.findings("emotic", pd.DataFrame(), [], {}, [], pd.DataFrame(),
                                                        "mAP").lines == []
    note = caution("emotic", need - 1)[0]
    assert note.startswith(f"**caution**: this test split ({need - 1} persons) is too small for its intervals to hold")
    assert "mean R@1" in caution("flickr8k", X.MIN_ITEMS_FOR_COVERAGE["flickr8k"][0] - 1)[0]
    with pytest.raises(KeyError):
        caution("coco", 10)


def test_map_p_value_unchanged_by_a_monotone_transform_of_one_model():
    """Recalibrating model B (a different strictly increasing map per category) changes no AP, so nothing
    compare_emotic reports for mAP may change, p-value included; a permutation test swapping raw scores (the generic
    test on raw rows) does change its p-value, which is why compare_emotic does not use it for mAP."""
    rng = np.random.default_rng(19)
    labels = (rng.random((60, 5)) < [0.5, 0.3, 0.2, 0.1, 0.05]).astype(int)
    labels[0] = 1
    a = labels * 0.8 + rng.normal(size=labels.shape)
    b = labels * 0.8 + rng.normal(size=labels.shape)
    b_recalibrated = np.exp(np.array([0.5, 1.0, 2.0, 3.0, 4.0]) * b) + np.array([-3.0, 0.0, 2.0, 5.0, 9.0])
    kw = {"n_resamples": 100, "seed": 2}
    before = S.compare_emotic(a, b, labels, "mAP", **kw)
    after = S.compare_emotic(a, b_recalibrated, labels, "mAP", **kw)
    for key in ("difference", "sample_difference", "low", "high", "p_value"):
        assert after[key] == pytest.approx(before[key], abs=1e-9), key
    mean_ap = lambda s: emotic_metrics(s, labels)["mAP"]
    raw_before = paired_permutation_test(a, b, mean_ap, n_permutations=150, seed=2)["p_value"]
    raw_after = paired_permutation_test(a, b_recalibrated, mean_ap, n_permutations=150, seed=2)["p_value"]
    assert raw_after != raw_before                       # what the rank fractions protect against


def test_identical_models_show_no_difference():
    scores, labels = random_emotic(np.random.default_rng(14), n=30)
    got = S.compare_emotic(scores, scores.copy(), labels, n_resamples=50)
    assert got["difference"] == got["low"] == got["high"] == 0 and got["p_value"] == 1.0
    assert X.difference_wording(got, "A", "B", "mAP").startswith("no detectable difference")


# ------------------------------------------------------------------------------------------ McNemar
def brute_mcnemar(b, c):
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("b,c", [(0, 0), (5, 0), (3, 9), (7, 7), (1, 12), (20, 11)])
def test_mcnemar_matches_binomial_sum(b, c):
    a_ok = np.r_[np.ones(b), np.zeros(c), np.ones(4), np.zeros(6)].astype(bool)   # 4 both right, 6 both wrong
    b_ok = np.r_[np.zeros(b), np.ones(c), np.ones(4), np.zeros(6)].astype(bool)
    got = S.mcnemar_exact(a_ok, b_ok)
    assert (got["b"], got["c"]) == (b, c)
    assert got["p_value"] == pytest.approx(brute_mcnemar(b, c), abs=1e-12)
    with pytest.raises(ValueError, match="equal length"):
        S.mcnemar_exact(a_ok, b_ok[:-1])
    with pytest.raises(ValueError, match="0/1"):
        S.mcnemar_exact(a_ok * 2, b_ok)


# ------------------------------------------------------------------------------------ wording, tables
def test_difference_wording_branches():
    higher = {"difference": 2.34, "low": 0.51, "high": 4.02, "p_value": 0.012, "confidence": 0.95}
    assert X.difference_wording(higher, "joint", "baseline", "mAP") == \
        "joint is higher than baseline in mAP by 2.3 points (95 % CI 0.5 to 4.0, p = 0.012)"
    lower = {"difference": -2.34, "low": -4.02, "high": -0.51, "p_value": 0.0002}
    assert X.difference_wording(lower, "joint", "baseline", "mAP") == \
        "baseline is higher than joint in mAP by 2.3 points (95 % CI 0.5 to 4.0, p < 0.001)"
    covers = {"difference": 0.8, "low": -0.6, "high": 2.1, "p_value": 0.31}
    assert X.difference_wording(covers, "joint", "baseline", "mean R@1") == \
        "no detectable difference in mean R@1 between joint and baseline (joint - baseline = +0.8 points, " \
        "95 % CI -0.6 to 2.1, p = 0.31)"
    # the interval decides, not the p-value (the two can disagree at the margin)
    assert X.difference_wording({**higher, "p_value": 0.07}, "A", "B", "mAP").startswith("A is higher than B")
    assert X.difference_wording({**covers, "p_value": 0.01}, "A", "B", "mAP").startswith("no detectable")
    no_p = {"difference": 1.0, "low": 0.2, "high": 1.5}
    assert X.difference_wording(no_p, "A", "B", "rank") == "A is higher than B in rank by 1.0 points (95 % CI 0.2 to 1.5)"


def test_seed_table_summary_and_interval_cells():
    values = [41.2, 43.9, 40.1, 42.0]
    cfg = {"seed": 7, "seeds": 4}
    got = X.seed_table(cfg, ["m"], "mAP", lambda label, seed: values[seed - 7]).loc["m"]
    assert [got[f"seed {7 + i}"] for i in range(4)] == values
    assert got["mAP mean"] == pytest.approx(statistics.mean(values))
    assert got["mAP sd"] == pytest.approx(statistics.stdev(values)) and got["mAP n"] == 4
    one = X.seed_table({"seed": 0, "seeds": 1}, ["m"], "mAP", lambda label, seed: 3.0).loc["m"]
    assert one["mAP mean"] == 3.0 and math.isnan(one["mAP sd"]) and one["mAP n"] == 1
    with pytest.raises(ValueError, match="no values"):
        X.seed_table({"seed": 0, "seeds": 0}, ["m"], "mAP", lambda label, seed: 1.0)
    with pytest.raises(ValueError, match="NaN"):
        X.seed_table({"seed": 0, "seeds": 2}, ["m"], "mAP", lambda label, seed: [1.0, float("nan")][seed])
    table = pd.DataFrame({"mAP": [41.63], "mAP low": [39.2], "mAP high": [44.04], "n": [3.0]}, index=["a"])
    assert X.with_intervals(table).loc["a"].tolist() == ["41.6 [39.2, 44.0]", "3.0"]
    assert X.with_intervals(table.assign(**{"mAP low": [np.nan]})).loc["a", "mAP"] == "41.6"
    assert X.with_intervals(table, digits=2).loc["a", "mAP"] == "41.63 [39.20, 44.04]"
