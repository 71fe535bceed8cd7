"""Speed of the bootstrap machinery at the real test sizes (a benchmark that prints figures, not a test).

    python benchmarks/bench_stats.py [--persons 7203] [--resamples 100]

Prints, on random data shaped like the Emotic test split (7,203 persons x 26 categories) and the Flickr8k 1K test
split (1,000 images x 5,000 captions):
- resampled mAP: ``sklearn.metrics.average_precision_score`` in a loop over resamples and categories versus the
  vectorised weighted AP of ``utils.stats`` on the same resamples, their ratio, and that both agree;
- the wall time of ``emotic_intervals`` (1,000 resamples, and as many half-size subsets for the mAP bias
  correction), ``compare_emotic`` on mAP and ``retrieval_intervals``.

Whether the intervals hold the population value is benchmarks/bench_coverage.py's question.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import average_precision_score

from utils import stats as S


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, default=7203)
    ap.add_argument("--resamples", type=int, default=100, help="resamples timed for the sklearn-vs-vectorised ratio")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    n, k = args.persons, 26
    labels = (rng.random((n, k)) < 0.1).astype(np.float32)
    scores = np.round(rng.random((n, k)) + 0.4 * labels, 3)        # 3 decimals: realistic number of ties
    idx = np.random.default_rng(0).integers(0, n, (args.resamples, n))

    def sklearn_loop():
        out = np.full((len(idx), k), np.nan)
        for b, i in enumerate(idx):
            for j in range(k):
                if labels[i, j].any():
                    out[b, j] = average_precision_score(labels[i, j], scores[i, j])
        return out

    counts = np.stack([np.bincount(i, minlength=n) for i in idx])
    ref, t_sk = timed(sklearn_loop)
    got, t_vec = timed(lambda: S._EmoticItems(scores, labels).ap(counts))
    print(f"resampled AP, {n} x {k}, {args.resamples} resamples: sklearn loop {t_sk:.2f} s, "
          f"vectorised {t_vec:.2f} s, speed-up {t_sk / t_vec:.1f}x, max |difference| "
          f"{np.nanmax(np.abs(ref - got)):.1e}")

    _, t = timed(lambda: S.emotic_intervals(scores, labels, n_resamples=1000))
    print(f"emotic_intervals, 1000 resamples + 1000 half-size subsets: {t:.1f} s")
    other = scores + rng.normal(0, 0.05, scores.shape)
    _, t = timed(lambda: S.compare_emotic(scores, other, labels, n_resamples=1000))
    print(f"compare_emotic mAP, 1000 resamples + 2 x 1000 half-size subsets (no permutation for mAP): {t:.1f} s")

    m = 1000
    cap = np.repeat(np.arange(m), 5)
    sim = rng.normal(size=(m, 5 * m))
    sim[cap, np.arange(5 * m)] += 2.0
    _, t = timed(lambda: S.retrieval_intervals(sim, cap, n_resamples=1000))
    print(f"retrieval_intervals, {m} images x {5 * m} captions, 1000 resamples: {t:.1f} s")
    _, t = timed(lambda: S.compare_retrieval(sim, sim + rng.normal(0, 0.3, sim.shape), cap))
    print(f"compare_retrieval mean_R@1, 1000 resamples + 10000 permutations: {t:.1f} s")


if __name__ == "__main__":
    main()
