"""Are the robustness verdicts verdicts on every machine? Notebook 05's and 06's attack sections run again with
several attack seeds and thread counts, and each pair's verdict printed per run (a benchmark that prints, not a test).

    python benchmarks/bench_verdicts.py [--profile smoke|demo|full] [--seeds 0,1,2] [--threads 1,2]
                                        [--experiments emotic,flickr8k] [--adaptive]

The notebooks' own calls, not nbconvert: ``attack_job`` of scripts/robustness.py loads the data, the very models
(checkpoints of notebooks 01-04 in the output folder, trained by the same recipe when missing) and the rows the
notebook attacks; then for every (attack seed, threads) ``utils.robustness.attack_items`` and ``summarise`` give
the member searches, the budget status and each pair's sentence. The attack seed (``attack_seed``) changes only
the searches' random numbers; the thread count changes the order of floating-point sums, as another CPU does.
A verdict that changes between runs is, by the findings' rule, not a verdict: the target is the same wording in
every run for every pair. ``--adaptive`` adds the adaptive attack on the median filter (rate per model and run).

Prints every setting that shapes the searches, the machine's load before the first run, each run's wall and CPU
seconds (on a shared machine the CPU seconds, divided by the threads, say what an idle machine would take),
verdicts, rates at the largest k (ensemble / white-box / black-box) and budget status, then per pair whether the
verdict was the same in all runs. The profile's data must be prepared (``make run`` or
``python scripts/run_all.py --profile P --prepare-only``).
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import time
from pathlib import Path
from types import SimpleNamespace

from utils import config
from utils import robustness as R

#: scripts/robustness.py: the attack jobs (data, models, pipelines and rows exactly as the notebooks have them)
P = SimpleNamespace(**runpy.run_path(str(Path(__file__).resolve().parent.parent / "scripts" / "robustness.py")))


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _pairs(experiment: str) -> list[tuple[str, str]]:
    """The pairs each notebook compares: consecutive models of its attacked list (image only, then with text)."""
    models = P.EMOTIC_ATTACKED if experiment == "emotic" else P.FLICKR_ATTACKED
    return list(zip(models[::2], models[1::2]))


def run_experiment(experiment: str, profile: str, seeds: list[int], threads: list[int], adaptive: bool) -> dict:
    """Every (seed, threads) run of one notebook's attack section; returns pair -> list of verdicts."""
    cfg = config.load(experiment, profile)
    t = time.perf_counter()
    job = P.attack_job(cfg)
    print(f"\n=== {experiment} ({profile}): {len(job.rows)} items, models {list(job.pipelines)}, loaded in "
          f"{time.perf_counter() - t:.0f} s")
    print("search settings (seed and threads vary per run):", json.dumps(
        {k: cfg[k] for k in sorted(cfg) if (k.startswith("attack_") or k in ("pixels", "median_size"))
         and k not in ("attack_seed", "attack_threads")}))
    print("budget:", R.budget_statement(cfg))
    pairs, labels, k_max = _pairs(experiment), list(job.pipelines), max(cfg["pixels"])
    verdicts = {pair: [] for pair in pairs}
    for seed in seeds:
        for n_threads in threads:
            run_cfg = dict(cfg, attack_seed=seed, attack_threads=n_threads)
            t, cpu = time.perf_counter(), time.process_time()
            run = R.summarise(R.attack_items(job.pipelines, job.images, job.rows, run_cfg), labels, run_cfg, pairs)
            print(f"\n-- attack seed {seed}, {n_threads} thread(s): {time.perf_counter() - t:.0f} s wall, "
                  f"{time.process_time() - cpu:.0f} s CPU")
            at_max = run.member_curve[run.member_curve.pixels == k_max]
            for label in labels:
                rate = run.curve[(run.curve.model == label) & (run.curve.pixels == k_max)]["success %"].iloc[0]
                members = ", ".join(f"{r['member']} {r['success %']:.0f} %" for _, r in
                                    at_max[at_max.model == label].iterrows())
                st = run.status.loc[label]
                status = "settled" if st["settled"] else f"not settled ({int(st['fooled late'])} late)"
                print(f"   {label}: {rate:.0f} % at {k_max} px ({members}); {status}")
            for pair, v in zip(pairs, run.verdicts):
                verdicts[pair].append(v)
                print(f"   VERDICT {pair[0]} vs {pair[1]}: {v}")
            if adaptive:
                t = time.perf_counter()
                defended, runs = R.adaptive_attack(job.pipelines, job.images, job.rows, run_cfg)
                for label in labels:
                    pn = R.ensemble_needed({m: runs[R.run_label(label, m)] for m in R.MEMBERS[cfg["attack_method"]]})
                    won, n = int(((pn.k_needed > 0) & pn.attacked).sum()), int(pn.attacked.sum())
                    print(f"   adaptive, {label}: {won} of {n} fooled through the filter")
                print(f"   (adaptive attack: {time.perf_counter() - t:.0f} s)")
    return verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=os.environ.get("MMER_PROFILE", "demo"), help="smoke, demo or full")
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="attack seeds, comma-separated (default 0,1,2)")
    ap.add_argument("--threads", type=_ints, default=[1, 2], help="torch threads, comma-separated (default 1,2)")
    ap.add_argument("--experiments", default="emotic,flickr8k", help="emotic, flickr8k or both (default)")
    ap.add_argument("--adaptive", action="store_true", help="also run the adaptive attack on the median filter")
    args = ap.parse_args()
    os.environ["MMER_PROFILE"] = args.profile
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"profile {args.profile}, attack seeds {args.seeds}, threads {args.threads}, {os.cpu_count()} CPUs"
          + (f", load average {load[0]:.1f} before the first run (a shared machine slows every run alike)"
             if load else ""))
    same = {}
    for experiment in [e.strip() for e in args.experiments.split(",") if e.strip()]:
        for pair, verdicts in run_experiment(experiment, args.profile, args.seeds, args.threads, args.adaptive).items():
            same[pair] = verdicts
    print(f"\n=== verdicts over {len(args.seeds) * len(args.threads)} runs")
    for (a, b), verdicts in same.items():
        distinct = sorted(set(verdicts))
        print(f"{a} vs {b}: {'the same in every run' if len(distinct) == 1 else 'CHANGED between runs'}: "
              + " | ".join(f"{verdicts.count(v)}x {v}" for v in distinct))


if __name__ == "__main__":
    main()
