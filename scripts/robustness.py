"""The few-pixel attacks of notebooks 05 (Emotic) and 06 (Flickr8k), on one process or many via ``torchrun``.

    python scripts/robustness.py emotic                                   # one process
    torchrun --nproc_per_node 4 scripts/robustness.py emotic              # 4 GPUs (or 4 CPU processes)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29400 --rdzv_id mmer \\
        scripts/robustness.py flickr8k --rows correct                     # 2 machines, 8 GPUs each
    python scripts/robustness.py emotic --features-only                   # only the frozen features, sharded

Settings come from ``utils.config`` for the active profile (``MMER_PROFILE``) with ``MMER_<KNOB>`` overrides, as in
the notebooks. Each rank loads the data and the models (rank 0 first, so a missing feature cache or checkpoint is
made once), attacks its shards of the rows (shard i goes to rank i % world) and writes each shard atomically;
rank 0 then checks and merges them into ``<output>/attacks/<experiment>_<key>.npz`` (``robustness.attack_key``),
which the notebook loads instead of attacking (``utils.robustness.pixels_needed``). A rerun skips the shards
already written; any number of processes gives the same result. See docs/distributed.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.distributed.elastic.multiprocessing.errors import record

from utils import config, emotic, flickr8k, store
from utils import experiments as X
from utils import distributed as D
from utils import robustness as R

#: the models each robustness notebook attacks, in its order (05: a baseline and a joint family, each image-only
#: then with the clean text; 06: the closed-form baseline and the two-tower model)
EMOTIC_ATTACKED = ("image (body+context)", "fusion (all)", "joint image only", "joint (image+text)")
FLICKR_ATTACKED = ("both maps", "joint (both towers)")


@dataclass
class AttackJob:
    """What one robustness notebook attacks: its settings, one pipeline per model, the test photos, the rows."""
    cfg: dict
    pipelines: dict
    images: np.ndarray
    rows: np.ndarray

    @property
    def key(self) -> str:
        return R.attack_key(self.pipelines, self.images, self.rows, self.cfg)


def _emotic_job(cfg: dict):
    data = emotic.data(cfg)
    models = {label: emotic.train(data, cfg, label, progress=False).model for label in EMOTIC_ATTACKED}
    return (data, models, emotic.right(emotic.predictions(models, data), data), np.asarray(data.splits["test"].context),
            emotic.pipelines, cfg["attack_persons"])


def _flickr_job(cfg: dict):
    data = flickr8k.data(cfg)
    baseline, joint = FLICKR_ATTACKED
    models = {baseline: flickr8k.baselines(data, cfg)[0][baseline],
              joint: flickr8k.train(data, cfg, joint, progress=False).model}
    return (data, models, flickr8k.right(flickr8k.similarities(models, data), data),
            np.asarray(data.splits["test"].images), flickr8k.pipelines, cfg["attack_images"])


#: experiment -> (its module, the inputs of a split whose features it extracts, its attack job)
JOBS = {"emotic": (emotic, lambda d: (("image", d.body), ("image", d.context), ("text", d.descriptions)), _emotic_job),
        "flickr8k": (flickr8k, lambda d: (("image", d.images), ("text", d.caption_texts)), _flickr_job)}


def rows_from_spec(spec: str, right: dict, n_test: int, count: int, seed: int) -> np.ndarray:
    """``notebook`` (the notebook's seeded draw of ``count``), ``correct``, ``all``, ``"3,17,42"`` or ``@file``."""
    if spec == "notebook":
        return R.attacked_rows(right, count, seed)
    if spec == "correct":
        return np.flatnonzero(np.logical_and.reduce(list(right.values()))).astype(np.int64)
    if spec == "all":
        return np.arange(n_test, dtype=np.int64)
    text = Path(spec[1:]).read_text().replace("\n", ",") if spec.startswith("@") else spec
    try:
        rows = np.array([int(t) for t in text.replace(" ", ",").split(",") if t.strip()], np.int64)
    except ValueError:
        raise ValueError(f"rows {spec!r}: expected notebook, correct, all, a comma-separated list of test rows or "
                         f"@file with one row per line") from None
    bad = rows[(rows < 0) | (rows >= n_test)]
    if len(bad):
        raise ValueError(f"rows {spec!r}: {bad[:5].tolist()} outside the {n_test} test rows")
    if len(np.unique(rows)) != len(rows):
        raise ValueError(f"rows {spec!r}: a row is listed twice")
    return rows


def attack_arrays(needed: dict, key: str, rows) -> dict:
    """``R.attack_payload`` plus what identifies it (``R.needed_from_arrays`` reads it): key, labels and rows."""
    return {"attack_key": np.array(key), "attack_labels": np.array(list(needed)),
            "attack_rows": np.asarray(rows, np.int64), **R.attack_payload(needed)}


def attack_job(cfg: dict, rows: str = "notebook", limit: int | None = None) -> AttackJob:
    """The attack of notebook 05 or 06: the same data, trained (or loaded) models and pipelines; ``rows`` as
    :func:`rows_from_spec` reads it (items a model gets wrong are recorded as not attacked); ``limit`` keeps the
    first."""
    data, models, right, images, pipelines, count = JOBS[cfg["experiment"]][2](cfg)
    device = data.image_encoder.device
    models = {label: m.to(device) if isinstance(m, torch.nn.Module) else m for label, m in models.items()}
    chosen = rows_from_spec(rows, right, len(images), count, cfg["seed"])
    return AttackJob(cfg, pipelines(data, models), images, chosen if limit is None else chosen[:limit])


def attack_shard_dir(cfg: dict, key: str, shard_size: int) -> Path:
    """The per-shard files of attack ``key`` cut in shards of ``shard_size`` items."""
    path = R.attack_results_path(cfg, key)
    return path.with_name(f"{path.stem}.shards-{shard_size}")


def _shard_path(folder: Path, index: int, count: int) -> Path:
    return folder / f"shard-{index:05d}-of-{count:05d}.npz"


def attack_shards(job: AttackJob, run, shard_size: int, key: str | None = None) -> dict:
    """Attack this rank's shards of ``job.rows`` (``run``: a ``utils.distributed.Launch``), skipping those already
    written; each shard appears whole under its final name or not at all. Returns the computed and skipped
    indices; a failure names its shard and rows."""
    key = key or job.key
    folder = attack_shard_dir(job.cfg, key, shard_size)
    bounds = D.shard_bounds(len(job.rows), shard_size)
    done = {"computed": [], "skipped": []}
    for i in D.shards_of(run, len(bounds)):
        path = _shard_path(folder, i, len(bounds))
        if path.is_file():  # complete: only a finished shard is ever renamed to this name
            done["skipped"].append(i)
            continue
        a, b = bounds[i]
        rows = job.rows[a:b]
        try:
            needed = R.attack_items(job.pipelines, job.images, rows, job.cfg, chunk=shard_size)
            store.write_npz(path, {**attack_arrays(needed, key, rows), "shard": np.array([i, len(bounds)])})
        except Exception as e:
            raise D.ShardError(f"rank {run.rank}: shard {i} of {len(bounds)} (test rows {rows.tolist()}) failed, "
                               f"nothing written to {path}: {type(e).__name__}: {e}") from e
        done["computed"].append(i)
        run.log(f"shard {i + 1}/{len(bounds)} written ({len(rows)} items)")
    return done


def _check_shard(arrays: dict, key: str, rows: np.ndarray, a: int, b: int, searches: list) -> str | None:
    if str(arrays.get("attack_key", "")) != key:
        return f"its key is {arrays.get('attack_key')!s}, not {key}"
    if not np.array_equal(arrays.get("attack_rows"), rows[a:b]):
        return f"its rows are not rows {a}..{b - 1} of the job"
    if arrays["attack_labels"].tolist() != searches:
        return f"its searches {arrays['attack_labels'].tolist()} are not {searches}"
    return None


def merge_attack_shards(job: AttackJob, shard_size: int, key: str | None = None) -> Path:
    """Check every shard of ``job`` (present, readable, same key, its rows and models) and write the merged result
    where ``R.pixels_needed`` looks for it; a missing or corrupt shard stops the merge, named."""
    key = key or job.key
    folder = attack_shard_dir(job.cfg, key, shard_size)
    bounds = D.shard_bounds(len(job.rows), shard_size)
    paths = [_shard_path(folder, i, len(bounds)) for i in range(len(bounds))]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise D.ShardError(f"cannot merge: {len(missing)} of {len(bounds)} shard(s) missing: {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''} (a rank did not finish, or the output folder is not "
                           f"shared by every machine; rerun to compute them)")
    searches = [R.run_label(label, m) for label in job.pipelines for m in R.members(job.cfg)]
    parts = []
    for i, ((a, b), path) in enumerate(zip(bounds, paths)):
        arrays = D.read_npz(path, f"shard {i} of {len(bounds)}")
        problem = _check_shard(arrays, key, job.rows, a, b, searches)
        if problem:
            raise D.ShardError(f"shard {i} of {len(bounds)} {path}: {problem}; delete it and rerun")
        try:
            parts.append(R.needed_from_arrays(arrays, where=str(path)))
        except ValueError as e:
            raise D.ShardError(f"shard {i} of {len(bounds)} {path} is corrupt: {e}; delete it and rerun") from e
    return store.write_npz(R.attack_results_path(job.cfg, key),
                           attack_arrays(R.merge_needed(parts), key, job.rows))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/robustness.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", choices=config.EXPERIMENTS)
    ap.add_argument("--rows", default="notebook",
                    help="notebook (default: the notebook's seeded draw), correct (every row all models get right), "
                         "all (every test row), a comma-separated list of test rows, or @file (one row per line)")
    ap.add_argument("--limit", type=int, default=None, help="attack only the first N of those rows")
    ap.add_argument("--shard-size", type=int, default=None,
                    help="items per shard, the unit of resumption (default: the items the notebook attacks "
                         "together, utils.robustness.attack_chunk, so its in-process result is the same)")
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
    _, splits = JOBS[cfg["experiment"]][0].load_splits()
    inputs = [(s, kind, items) for s, d in splits.items() for kind, items in JOBS[cfg["experiment"]][1](d)]
    image_encoder, text_encoder = X.frozen_encoders(cfg)
    for split, kind, items in inputs:
        t = time.perf_counter()
        D.sharded_features(run, image_encoder if kind == "image" else text_encoder, items, shard_size, kind)
        if run.main:
            run.log(f"{split} {kind}: {len(items)} items in the feature cache ({time.perf_counter() - t:.0f} s)")


def attack(run: D.Launch, cfg: dict, args) -> Path | None:
    with D.rank_zero_first(run):  # rank 0 fills the feature cache and trains missing models; the others read them
        job = attack_job(cfg, rows=args.rows, limit=args.limit)
    key = job.key
    args.shard_size = args.shard_size or R.attack_chunk(cfg)
    D.same_on_every_rank(run, key, "the attack's configuration fingerprint")
    folder = attack_shard_dir(cfg, key, args.shard_size)
    if run.main:
        run.log(f"{cfg['experiment']} ({cfg['profile']}): {len(job.rows)} items x {len(job.pipelines)} models, "
                f"key {key}, shards of {args.shard_size} in {folder}, {run.world} process(es) on {run.device}")
    if not args.merge_only:
        t = time.perf_counter()
        done = attack_shards(job, run, args.shard_size, key)
        run.log(f"computed shards {done['computed']}, skipped (already written) {done['skipped']} "
                f"in {time.perf_counter() - t:.1f} s")
    D.barrier(run)
    if not run.main:
        return None
    path = merge_attack_shards(job, args.shard_size, key)
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
