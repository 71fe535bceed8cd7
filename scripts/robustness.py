"""The few-pixel attacks of notebooks 05 (Emotic) and 06 (Flickr8k), on one process or many via ``torchrun``.

    python scripts/robustness.py emotic                                   # one process
    torchrun --nproc_per_node 4 scripts/robustness.py emotic              # 4 GPUs (or 4 CPU processes)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29400 --rdzv_id mmer \\
        scripts/robustness.py flickr8k --rows correct                     # 2 machines, 8 GPUs each
    python scripts/robustness.py emotic --features-only                   # only the frozen features, sharded

Settings come from ``utils.config`` for the active profile (``MMER_PROFILE``) with ``MMER_<KNOB>`` overrides, as in
the notebooks. Each rank loads the data and the models (rank 0 first, so a missing feature cache or checkpoint is
made once), attacks its shards of the rows (shard i goes to rank i % world) and writes each shard atomically;
rank 0 then checks and merges them into ``<output>/attacks/<experiment>_<key>.npz``, which the notebook loads
instead of attacking (``utils.robustness.pixels_needed``). A rerun skips the shards already written; any number
of processes gives the same result. The key, the files and the shards: ``utils.precomputed_attacks``. See
docs/distributed.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from utils import config
from utils import distributed as D
from utils import precomputed_attacks as P
from utils import robustness as R


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/robustness.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", choices=config.EXPERIMENTS)
    ap.add_argument("--rows", default="notebook",
                    help="notebook (default: the notebook's seeded draw), correct (every row all models get right), "
                         "all (every test row), a comma-separated list of test rows, or @file (one row per line)")
    ap.add_argument("--limit", type=int, default=None, help="attack only the first N of those rows")
    ap.add_argument("--shard-size", type=int, default=None,
                    help="items per shard, the unit of resumption (default: attack_batch / 4, the items the "
                         "notebook attacks together, so its in-process result is the same to the last bit)")
    ap.add_argument("--merge-only", action="store_true", help="do not attack: check and merge the shards written")
    ap.add_argument("--features-only", action="store_true",
                    help="only extract the frozen features of every split, sharded, into the feature cache")
    ap.add_argument("--feature-shard-size", type=int, default=1024,
                    help="photos or texts per shard of --features-only (default 1024)")
    ap.add_argument("--timeout-hours", type=float, default=72.0,
                    help="longest wait of a collective, rank 0's wait for the slowest rank included (default 72)")
    return ap


def _threads(cfg: dict) -> dict:
    """One process per core under torchrun: ``OMP_NUM_THREADS`` (which torchrun sets to 1) wins over the
    profile's ``attack_threads``; the thread count never changes a result, only the speed."""
    if os.environ.get("OMP_NUM_THREADS"):
        return {**cfg, "attack_threads": int(os.environ["OMP_NUM_THREADS"])}
    return cfg


def features_only(run: D.Launch, cfg: dict, shard_size: int) -> None:
    """Every split's frozen features, each rank extracting its shards; rank 0 assembles each whole input."""
    from utils import data as data_module
    from utils import experiments as X
    from utils import paths

    if cfg["experiment"] == "emotic":
        root = paths.require_artefacts("emotic", [f for s in X.SPLITS for f in data_module.emotic_files(s)])
        splits = {s: data_module.load_emotic(s, root) for s in X.SPLITS}
        inputs = [(s, kind, items) for s, d in splits.items() for kind, items in
                  (("image", d.body), ("image", d.context), ("text", d.descriptions))]
    else:
        root = paths.require_artefacts("flickr8k", [f"{s}_{f}" for s in X.SPLITS
                                                    for f in ("images.npy", "captions.csv")])
        splits = {s: data_module.load_flickr(s, root) for s in X.SPLITS}
        inputs = [(s, kind, items) for s, d in splits.items() for kind, items in
                  (("image", d.images), ("text", d.caption_texts))]
    image_encoder, text_encoder = X.frozen_encoders(cfg)
    for split, kind, items in inputs:
        t = time.perf_counter()
        D.sharded_features(run, image_encoder if kind == "image" else text_encoder, items, shard_size, kind)
        if run.main:
            run.log(f"{split} {kind}: {len(items)} items in the feature cache ({time.perf_counter() - t:.0f} s)")


def attack(run: D.Launch, cfg: dict, args) -> Path | None:
    with D.rank_zero_first(run):  # rank 0 fills the feature cache and trains missing models; the others read them
        job = P.attack_job(cfg, rows=args.rows, limit=args.limit)
    key = job.key
    args.shard_size = args.shard_size or R.attack_chunk(cfg)
    D.same_on_every_rank(run, key, "the attack's configuration fingerprint")
    folder = P.attack_shard_dir(cfg, key, args.shard_size)
    if run.main:
        run.log(f"{cfg['experiment']} ({cfg['profile']}): {len(job.rows)} items x {len(job.pipelines)} models, "
                f"key {key}, shards of {args.shard_size} in {folder}, {run.world} process(es) on {run.device}")
    if not args.merge_only:
        t = time.perf_counter()
        done = P.attack_shards(job, run, args.shard_size, key)
        run.log(f"computed shards {done['computed']}, skipped (already written) {done['skipped']} "
                f"in {time.perf_counter() - t:.1f} s")
    D.barrier(run)
    if not run.main:
        return None
    path = P.merge_attack_shards(job, args.shard_size, key)
    run.log(f"merged into {path}")
    return path


@record  # torchrun's summary then shows the failing rank's exception (which names its shard)
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise SystemExit("--limit must be at least 1")
    run = D.launch(args.timeout_hours)
    try:
        cfg = _threads(config.load(args.experiment))
        if args.features_only:
            features_only(run, cfg, args.feature_shard_size)
        else:
            attack(run, cfg, args)
    finally:
        D.finish(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
