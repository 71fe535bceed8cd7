"""Do the intervals of utils.stats hold the population value? A coverage benchmark (prints figures, not a test).

    python benchmarks/bench_coverage.py                       # everything, default sizes (about 30 min, 2 cores)
    python benchmarks/bench_coverage.py --part emotic --sizes 150,1000 --sets 200 --resamples 500
    python benchmarks/bench_coverage.py --part flickr --sets 200
    python benchmarks/bench_coverage.py --part permutation --pairs 400

Simulated test sets whose population value is known:

- **Emotic-like**: 26 categories, prevalences spaced geometrically from 55 % down to 0.7 %, category scores
  ``signal_j * label + N(0, 1)`` (signals 0.3 .. 1.2, the rarer the stronger), VAD predictions with a per-person
  error. Population values (mAP = mean of the 26 categories' AP, dominant accuracy, VAD MAE) from one very large
  sample (``--population``, 400,000 persons). For each size (150 = the demo split, 1,000, 7,000 = Emotic's real
  test split), ``--sets`` test sets: the share of 95 % intervals that hold the population value and their mean
  width, for the old percentile bootstrap of the sample statistic and for ``utils.stats.emotic_intervals``.
- **Flickr8k-like**: images and their 5 captions embedded around a shared latent point plus noise; similarity =
  dot product. The population value of a metric at gallery size M is its mean over many test sets of M images
  (the metric depends on M); for the median ranks, the median of the pooled ranks.
- **Paired tests**: ``--pairs`` pairs of models with the same population mAP but different calibration (model
  B's scores pass through a category-specific increasing map: exp with its own scale and offset); at 5 %, the
  share of pairs called different by the old paired permutation test (raw scores swapped), by the same test on
  per-category rank fractions (tried, not adopted), and by ``compare_emotic`` (p-value and interval of the
  re-centred paired bootstrap). It should be 5 % within binomial error.

Old method: the percentile bootstrap of the sample statistic (the 2.5 and 97.5 percentiles of the resampled
statistic), computed from the very replicates the new method uses. Runs single-process; ratios within one run are
what to compare when the machine is loaded.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy.stats import rankdata

from utils import stats as S
from utils.metrics import emotic_metrics, retrieval_metrics, retrieval_ranks

K = 26
PREVALENCE = np.geomspace(0.55, 0.007, K)
SIGNAL = np.linspace(0.3, 1.2, K)
CONFIDENCE = 0.95


def emotic_set(n: int, rng) -> tuple:
    labels = (rng.random((n, K)) < PREVALENCE).astype(np.int8)
    scores = SIGNAL * labels + rng.normal(size=(n, K))
    vad_true = rng.uniform(1, 10, (n, 3))
    vad_pred = vad_true + rng.normal(0, 1, (n, 1)) * rng.exponential(1.0, (n, 3))  # skewed per-person errors
    return scores, labels, vad_pred, vad_true


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


def report(rows: list[tuple], header: str) -> None:
    print(header)
    print(f"  {'size':>6} {'metric':<18} {'population':>10} {'mean est.':>9} | {'old cover':>9} {'width':>6} | "
          f"{'new cover':>9} {'width':>6} | {'new est. inside':>15}")
    for size, metric, pop, est, old, new, inside in rows:
        print(f"  {size:>6} {metric:<18} {pop:>10.3f} {est:>9.3f} | {100 * old[0]:>8.1f}% {old[1]:>6.2f} | "
              f"{100 * new[0]:>8.1f}% {new[1]:>6.2f} | {100 * inside:>14.0f}%")


def coverage(intervals: np.ndarray, pop: float) -> tuple[float, float]:
    low, high = intervals[:, 0], intervals[:, 1]
    return float(np.mean((low <= pop) & (pop <= high))), float(np.mean(high - low))


# ---------------------------------------------------------------------------------------------------- Emotic
def bench_emotic(args) -> None:
    rng = np.random.default_rng(args.seed)
    scores, labels, vad_pred, vad_true = emotic_set(args.population, rng)
    m = emotic_metrics(scores, labels, vad_pred, vad_true)
    pop = {"mAP": float(np.mean(S._EmoticItems(scores, labels).ap(np.ones((1, len(labels)), np.int64))[0])) * 100,
           "dominant_accuracy": m["dominant_accuracy"], "vad_mae": m["vad_mae"]["mean"]}
    del scores, labels, vad_pred, vad_true
    rows = []
    for n in args.sizes:
        t = time.perf_counter()
        old, new, est, new_est, inside = ({k: [] for k in pop} for _ in range(5))
        boot_bias = []  # the bootstrap's own bias estimate of mAP (mean replicate - sample), for comparison
        for i in range(args.sets):
            data = emotic_set(n, rng)
            m, estimates, reps, corrected = S._emotic_replicates(*data, args.resamples, seed=i)
            # what emotic_intervals builds from these very replicates (checked against it on the first set)
            got = {k: S._covering(estimates[k], reps[k], CONFIDENCE) for k in estimates if k != "mAP"}
            got["mAP"] = S._recentred(corrected, reps["mAP"], CONFIDENCE)
            boot_bias.append(np.nanmean(reps["mAP"]) - estimates["mAP"])
            if i == 0:
                public = S.emotic_intervals(*data, n_resamples=args.resamples, seed=i)
                assert all(public[k]["low"] == got[k]["low"] and public[k]["high"] == got[k]["high"] for k in got)
            for k in pop:
                lo, hi = np.percentile(reps[k], [2.5, 97.5])
                old[k].append((lo, hi))
                new[k].append((got[k]["low"], got[k]["high"]))
                est[k].append(estimates[k])
                new_est[k].append(got[k]["estimate"])
                inside[k].append(got[k]["low"] <= got[k]["estimate"] <= got[k]["high"])
        for k in pop:
            rows.append((n, k, pop[k], np.mean(new_est[k]), coverage(np.array(old[k]), pop[k]),
                         coverage(np.array(new[k]), pop[k]), np.mean(inside[k])))
            if k == "mAP":
                print(f"  n={n}: sample mAP averages {np.mean(est[k]):.2f}, bias-corrected {np.mean(new_est[k]):.2f},"
                      f" population {pop[k]:.2f}; sd of the corrected estimate over sets {np.std(new_est[k]):.2f}; "
                      f"the bootstrap's own bias estimate averages {np.mean(boot_bias):.2f}")
        print(f"  n={n}: {args.sets} sets in {time.perf_counter() - t:.0f} s")
    se = binomial_se(CONFIDENCE, args.sets)
    report(rows, f"Emotic-like, {args.sets} sets per size, {args.resamples} resamples (and as many half-size "
                 f"subsamples); coverage standard error at 95 %: {100 * se:.1f} points")


# -------------------------------------------------------------------------------------------------- Flickr8k
def flickr_set(m: int, rng, dim: int = 32, noise: float = 1.2) -> tuple:
    z = rng.normal(size=(m, dim))
    image = z + noise * rng.normal(size=(m, dim))
    captions = np.repeat(z, 5, axis=0) + noise * rng.normal(size=(5 * m, dim))
    return image @ captions.T, np.repeat(np.arange(m), 5)


FLICKR_KEYS = ("mean_R@1", "i2t_R@1", "t2i_R@5", "i2t_median_rank", "t2i_median_rank")


def bench_flickr(args) -> None:
    rng = np.random.default_rng(args.seed + 1)
    rows = []
    for m in args.flickr_sizes:
        t = time.perf_counter()
        pooled_i2t, pooled_t2i, means = [], [], {k: [] for k in FLICKR_KEYS}
        for _ in range(args.population_sets):          # population at gallery size m: many independent test sets
            sim, cap = flickr_set(m, rng)
            r = retrieval_metrics(sim, cap, (1, 5))
            for k in FLICKR_KEYS:
                means[k].append(r[k])
            i2t, t2i = retrieval_ranks(sim, cap)
            pooled_i2t.append(i2t)
            pooled_t2i.append(t2i)
        pop = {k: float(np.mean(v)) for k, v in means.items()}
        pop["i2t_median_rank"] = float(np.median(np.concatenate(pooled_i2t)))
        pop["t2i_median_rank"] = float(np.median(np.concatenate(pooled_t2i)))
        old, new, est, inside = ({k: [] for k in FLICKR_KEYS} for _ in range(4))
        for i in range(args.sets):
            sim, cap = flickr_set(m, rng)
            reps = S._retrieval_replicates(sim, cap, (1, 5), args.resamples, seed=i)
            r = retrieval_metrics(sim, cap, (1, 5))
            got = {k: S._covering(r[k], reps[k], CONFIDENCE) for k in FLICKR_KEYS}  # = retrieval_intervals
            if i == 0:
                public = S.retrieval_intervals(sim, cap, (1, 5), n_resamples=args.resamples, seed=i)
                assert all(public[k] == got[k] for k in FLICKR_KEYS)
            for k in FLICKR_KEYS:
                old[k].append(np.percentile(reps[k], [2.5, 97.5]))
                new[k].append((got[k]["low"], got[k]["high"]))
                est[k].append(got[k]["estimate"])
                inside[k].append(got[k]["low"] <= got[k]["estimate"] <= got[k]["high"])
        for k in FLICKR_KEYS:
            rows.append((m, k, pop[k], np.mean(est[k]), coverage(np.array(old[k]), pop[k]),
                         coverage(np.array(new[k]), pop[k]), np.mean(inside[k])))
        print(f"  m={m}: {args.population_sets} population sets + {args.sets} test sets in "
              f"{time.perf_counter() - t:.0f} s")
    report(rows, f"Flickr8k-like (images x 5 captions), {args.sets} sets per size, {args.resamples} resamples; "
                 f"population from {args.population_sets} further sets per size")


# ----------------------------------------------------------------------------------------------- permutation
def calibrated_differently(x: np.ndarray, rng) -> np.ndarray:
    """A per-category strictly increasing map: same order (same AP), very different scale and offset."""
    scale, offset = rng.uniform(0.5, 3.0, x.shape[1]), rng.uniform(-5, 5, x.shape[1])
    return np.exp(scale * x) + offset


def permutation_p(scores_a, scores_b, labels, n_permutations: int, seed) -> float:
    """The paired permutation test on mAP as the notebooks ran it until now: each person's scores swapped between
    the models with probability 1/2 (pass rank fractions to swap per-category ranks instead)."""
    stacked = S._EmoticItems(np.vstack([scores_a, scores_b]), np.vstack([labels, labels]))
    observed = emotic_metrics(scores_a, labels)["mAP"] - emotic_metrics(scores_b, labels)["mAP"]
    exact, chunks = S._permutation_masks(len(labels), n_permutations, seed)
    null = []
    for masks in chunks:
        stack = np.hstack([~masks, masks]).astype(np.int32)  # A' picks A, or B where swapped
        null.append(stacked.replicates(stack, ("mAP",))["mAP"] - stacked.replicates(1 - stack, ("mAP",))["mAP"])
    return S._permutation_p(observed, np.concatenate(null), exact)


def rank_fractions(scores: np.ndarray) -> np.ndarray:
    """Each category's scores replaced by their rank among the persons / number of persons (AP unchanged)."""
    return rankdata(scores, axis=0) / len(scores)


def bench_permutation(args) -> None:
    rng = np.random.default_rng(args.seed + 2)
    n = args.pair_persons
    rejections = {"old: permutation, raw scores swapped": [], "tried: permutation, ranks swapped": [],
                  "new: compare_emotic p (paired bootstrap)": [], "new: compare_emotic interval excludes 0": []}
    t = time.perf_counter()
    for i in range(args.pairs):
        labels = (rng.random((n, K)) < PREVALENCE).astype(np.int8)
        a = SIGNAL * labels + rng.normal(size=(n, K))
        b = calibrated_differently(SIGNAL * labels + rng.normal(size=(n, K)), rng)  # same population AP
        r = S.compare_emotic(a, b, labels, "mAP", n_resamples=args.resamples, seed=i)
        rejections["new: compare_emotic p (paired bootstrap)"].append(r["p_value"] <= 0.05)
        rejections["new: compare_emotic interval excludes 0"].append(r["low"] > 0 or r["high"] < 0)
        rejections["old: permutation, raw scores swapped"].append(
            permutation_p(a, b, labels, args.permutations, seed=i) <= 0.05)
        rejections["tried: permutation, ranks swapped"].append(
            permutation_p(rank_fractions(a), rank_fractions(b), labels, args.permutations, seed=i) <= 0.05)
    se = binomial_se(0.05, args.pairs)
    print(f"Paired tests at 5 %: {args.pairs} pairs of models with equal population mAP and different "
          f"calibration, {n} persons, {args.permutations} permutations, {args.resamples} resamples "
          f"({time.perf_counter() - t:.0f} s); binomial standard error at 5 %: {100 * se:.1f} points")
    for name, hits in rejections.items():
        rate = float(np.mean(hits))
        verdict = "within 2 standard errors of 5 %" if abs(rate - 0.05) <= 2 * se else "NOT within 2 s.e. of 5 %"
        print(f"  {name:<42} false-positive rate {100 * rate:5.1f} %  ({verdict})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("all", "emotic", "flickr", "permutation"), default="all")
    ap.add_argument("--sizes", default="150,1000,7000", help="Emotic-like test sizes (persons)")
    ap.add_argument("--flickr-sizes", default="63,1000", help="Flickr8k-like test sizes (images, 5 captions each)")
    ap.add_argument("--sets", type=int, default=200, help="simulated test sets per size")
    ap.add_argument("--resamples", type=int, default=500, help="bootstrap resamples (and half-size subsamples)")
    ap.add_argument("--population", type=int, default=400_000, help="persons in the Emotic population sample")
    ap.add_argument("--population-sets", type=int, default=300, help="Flickr8k sets averaged for the population")
    ap.add_argument("--pairs", type=int, default=400, help="model pairs for the permutation false-positive rate")
    ap.add_argument("--pair-persons", type=int, default=1000, help="persons per pair's test set")
    ap.add_argument("--permutations", type=int, default=400, help="permutations per pair")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.sizes = [int(v) for v in args.sizes.split(",")]
    args.flickr_sizes = [int(v) for v in args.flickr_sizes.split(",")]
    print(f"confidence {CONFIDENCE}; numpy {np.__version__}; seed {args.seed}")
    if args.part in ("all", "emotic"):
        bench_emotic(args)
    if args.part in ("all", "flickr"):
        bench_flickr(args)
    if args.part in ("all", "permutation"):
        bench_permutation(args)


if __name__ == "__main__":
    main()
