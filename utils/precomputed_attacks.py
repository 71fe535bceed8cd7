"""Attacks computed ahead of notebooks 05 / 06 by ``scripts/robustness.py`` (one process, or many under
``torchrun``), stored under a key of their content, so that the notebook loads them instead of searching again.

- **The key** (:func:`attack_key`): each member search's method and settings, the searches' source code, each
  attacked pipeline's content (encoder fingerprint,
  model weights, side data; :func:`pipeline_fingerprint`), the attacked rows and the attacked photos' pixels.
  Not the device, the thread count or the number of processes: none of them changes a result.
- **The file** (:func:`attack_results_path`): ``<output>/attacks/<experiment>_<key>.npz``, the arrays of
  ``robustness.attack_payload`` plus what identifies them (:func:`attack_arrays`), read back by
  :func:`load_attack_results` as the very objects the search returns.
- **The job** (:func:`attack_job`): the notebook's data, models and rows; :func:`attack_shards` attacks one
  rank's shards of the rows and :func:`merge_attack_shards` checks and merges them (``utils.distributed`` cuts the
  shards and reads the files).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import attack as A
from . import store
from .experiments import slug, train_emotic, train_flickr_joint
from .robustness import (attack_items, attack_payload, attacked_rows, emotic_pipelines, emotic_right,
                         flickr_pipelines, members, merge_needed, rank1_rows, run_label)

#: the models each robustness notebook attacks, in its order (05: a baseline and a joint family, each image-only
#: then with the clean text; 06: the closed-form baseline and the two-tower model)
EMOTIC_ATTACKED = ("image (body+context)", "fusion (all)", "joint image only", "joint (image+text)")
FLICKR_ATTACKED = ("both maps", "joint (both towers)")
ATTACK_FORMAT = "mmer-attack-results-2"  # 2: one search per member of the attack, keyed "model [member]"
#: pipeline attributes filled while attacking (clean body features, compiled modules): not what a pipeline *is*
_PIPELINE_CACHES = frozenset({"_clean_body", "_compiled"})


def _digest_into(h, obj, seen: set, depth: int = 0, in_closure: bool = False) -> None:
    """Feed the content of ``obj`` to the hash ``h``: arrays by bytes, modules by ``fingerprint`` or weights,
    functions by their closures, other objects by their attributes."""
    import inspect
    import types

    if depth > 8:
        raise ValueError("utils/precomputed_attacks.py: pipeline too deeply nested to fingerprint")
    if obj is None or isinstance(obj, (bool, int, float, str, np.generic)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
        return
    if isinstance(obj, np.ndarray):
        h.update(f"nd:{obj.dtype.str}:{obj.shape};".encode())
        h.update(np.ascontiguousarray(obj).data)
        return
    if isinstance(obj, torch.Tensor):
        if in_closure:  # derived on the device (e.g. captions mapped to the shared space): not device-independent
            return
        t = obj.detach().cpu().contiguous()
        h.update(f"t:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        if isinstance(getattr(obj, "fingerprint", None), str):  # frozen encoders carry their own content key
            h.update(f"enc:{obj.fingerprint};".encode())
            return
        h.update(f"mod:{type(obj).__qualname__}:{obj!r};".encode())
        for name, value in obj.state_dict().items():
            h.update(name.encode())
            _digest_into(h, value, seen, depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for x in obj:
            _digest_into(h, x, seen, depth + 1, in_closure)
        return
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(f"k:{k};".encode())
            _digest_into(h, obj[k], seen, depth + 1, in_closure)
        return
    if inspect.ismethod(obj):
        h.update(f"meth:{obj.__func__.__qualname__};".encode())
        _digest_into(h, obj.__self__, seen, depth + 1)
        return
    if isinstance(obj, types.FunctionType):
        h.update(f"fn:{obj.__qualname__};".encode())
        for cell in obj.__closure__ or ():
            _digest_into(h, cell.cell_contents, seen, depth + 1, in_closure=True)
        return
    h.update(f"obj:{type(obj).__module__}.{type(obj).__qualname__};".encode())
    for name in sorted(vars(obj)) if hasattr(obj, "__dict__") else ():
        if name not in _PIPELINE_CACHES:
            h.update(f"a:{name};".encode())
            _digest_into(h, getattr(obj, name), seen, depth + 1, in_closure)


def pipeline_fingerprint(pipeline) -> str:
    """A content key of what a pixel pipeline computes: its image encoder's fingerprint, the weights of its model
    (what its checkpoint holds; a closed-form baseline's fitted arrays), its side data (boxes, clean text features,
    labels, caption owners). The same on every device: weights are read back to the host, and tensors a pipeline
    derived on its device are left out (they follow from the weights and the side data).

    Why not the checkpoint names: ``pixels_needed`` receives pipelines, not checkpoints, and the closed-form
    Flickr8k baseline has none; the content says the same thing and needs no change to the callers.
    """
    import hashlib

    h = hashlib.sha256()
    _digest_into(h, pipeline, set())
    return h.hexdigest()[:16]


def _images_digest(images: np.ndarray, rows: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256(f"{images.dtype.str}:{images.shape[1:]}:{len(rows)};".encode())
    for r in rows:  # one photo at a time: no copy of the whole selection (a memmap stays on disk)
        h.update(np.ascontiguousarray(images[r]).data)
    return h.hexdigest()[:16]


def _search_code() -> str:
    """A digest of the searches' source (``utils/attack/*.py``): a result computed by other search code (another
    margin, another acceptance rule) under the same settings is never loaded."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for path in sorted(Path(A.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def attack_settings(cfg: dict) -> dict:
    """What shapes an attack's result besides the models and the items: each member's search (method) and its
    settings per k, the schedule, and the searches' code."""
    searches = {m: {k: v for k, v in kw.items() if k != "progress"} for m, kw in members(cfg).items()}
    return {"members": searches, "schedule": [int(k) for k in cfg["pixels"]], "code": _search_code()}


def attack_key(pipelines: dict, images: np.ndarray, rows, cfg: dict) -> str:
    """The fingerprint that names a precomputed attack: search settings, each model's pipeline content (in order,
    with its label), the attacked rows and the attacked photos' pixels. Not the device, the thread count or the
    number of processes: none of them changes a result."""
    from .experiments import fingerprint

    rows = np.asarray(rows, np.int64)
    return fingerprint(ATTACK_FORMAT, cfg["experiment"], attack_settings(cfg),
                       [[label, pipeline_fingerprint(p)] for label, p in pipelines.items()], rows,
                       _images_digest(np.asarray(images) if not isinstance(images, np.ndarray) else images, rows))


def attack_results_path(cfg: dict, key: str):
    """Where the merged result of attack ``key`` lives: ``<output>/attacks/<experiment>_<key>.npz``."""
    from . import paths

    return paths.output_dir() / "attacks" / f"{cfg['experiment']}_{key}.npz"


def attack_shard_dir(cfg: dict, key: str, shard_size: int):
    """The per-shard files of attack ``key`` cut in shards of ``shard_size`` items."""
    path = attack_results_path(cfg, key)
    return path.with_name(f"{path.stem}.shards-{shard_size}")


def attack_arrays(needed: dict, key: str, rows) -> dict:
    """``attack_payload`` plus what identifies it: format, key, model labels (in order) and rows."""
    return {"attack_format": np.array(ATTACK_FORMAT), "attack_key": np.array(key),
            "attack_labels": np.array(list(needed)), "attack_rows": np.asarray(rows, np.int64),
            **attack_payload(needed)}


def needed_from_arrays(arrays, images: np.ndarray | None = None, where: str = "arrays") -> dict:
    """Inverse of :func:`attack_arrays`: label -> ``PixelsNeeded``; with the clean ``images`` (indexed by row) the
    reports' adversarial images are rebuilt."""
    if str(arrays.get("attack_format", "")) != ATTACK_FORMAT:
        raise ValueError(f"{where}: not an attack result of format {ATTACK_FORMAT}")
    out = {}
    for label in arrays["attack_labels"].tolist():
        s = slug(label)
        try:
            schedule = tuple(int(k) for k in arrays[f"{s}_schedule"])
            reports = {k: A.from_arrays(arrays, f"{s}_k{k}", None if images is None else
                                        np.asarray(images)[arrays[f"{s}_k{k}_rows"]])
                       for k in schedule if f"{s}_k{k}_rows" in arrays}
            out[label] = A.PixelsNeeded(rows=arrays[f"{s}_rows"], attacked=arrays[f"{s}_attacked"],
                                        k_needed=arrays[f"{s}_k_needed"], queries=arrays[f"{s}_queries"],
                                        schedule=schedule, reports=reports)
        except KeyError as e:
            raise ValueError(f"{where}: the arrays of model {label!r} are incomplete ({e})") from e
    return out


def load_attack_results(path, images: np.ndarray | None = None) -> dict:
    """A merged result file as label -> ``PixelsNeeded`` (adversarial images rebuilt when ``images`` is given)."""
    from .distributed import read_npz

    return needed_from_arrays(read_npz(path, "attack result"), images, where=str(path))


@dataclass
class AttackJob:
    """What one robustness notebook attacks: its settings, one pipeline per model, the test photos, the rows."""
    cfg: dict
    pipelines: dict
    images: np.ndarray
    rows: np.ndarray

    @property
    def key(self) -> str:
        return attack_key(self.pipelines, self.images, self.rows, self.cfg)


def _rows_from_spec(spec: str, right: dict, n_test: int, cfg: dict) -> np.ndarray:
    every = np.logical_and.reduce(list(right.values()))
    if spec == "notebook":
        count = cfg["attack_persons"] if cfg["experiment"] == "emotic" else cfg["attack_images"]
        return attacked_rows(right, count, cfg["seed"])
    if spec == "correct":
        return np.flatnonzero(every).astype(np.int64)
    if spec == "all":
        return np.arange(n_test, dtype=np.int64)
    text = spec
    if spec.startswith("@"):
        from pathlib import Path

        text = Path(spec[1:]).read_text().replace("\n", ",")
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


def attack_job(cfg: dict, rows: str = "notebook", limit: int | None = None) -> AttackJob:
    """The attack of notebook 05 (``cfg['experiment'] == 'emotic'``) or 06 (``'flickr8k'``): the same data, the
    same trained (or loaded) models and pipelines. ``rows``: ``notebook`` (the notebook's seeded draw among the
    items every model gets right), ``correct`` (all of those), ``all`` (every test row; items a model gets wrong
    are recorded as not attacked), or an explicit list (``"3,17,42"`` or ``@file``); ``limit`` keeps the first."""
    from .experiments import emotic_data, emotic_predictions, fit_flickr_baselines, flickr_data, flickr_similarities

    if cfg["experiment"] == "emotic":
        data = emotic_data(cfg)
        models = {label: train_emotic(data, cfg, label, progress=False).model for label in EMOTIC_ATTACKED}
        right = emotic_right(emotic_predictions(models, data), data)
        images = np.asarray(data.splits["test"].context)
        make = emotic_pipelines
    else:
        data = flickr_data(cfg)
        baseline, joint = FLICKR_ATTACKED
        models = {baseline: fit_flickr_baselines(data, cfg)[0][baseline],
                  joint: train_flickr_joint(data, cfg, joint, progress=False).model}
        right = rank1_rows(flickr_similarities(models, data), data.features["test"]["caption_image"])
        images = np.asarray(data.splits["test"].images)
        make = flickr_pipelines
    device = data.image_encoder.device
    models = {label: m.to(device) if isinstance(m, torch.nn.Module) else m for label, m in models.items()}
    chosen = _rows_from_spec(rows, right, len(images), cfg)
    if limit is not None:
        chosen = chosen[:limit]
    return AttackJob(cfg, make(data, models), images, chosen)


def _shard_path(folder, index: int, count: int):
    return folder / f"shard-{index:05d}-of-{count:05d}.npz"


def attack_shards(job: AttackJob, run, shard_size: int, key: str | None = None) -> dict:
    """Attack this rank's shards of ``job.rows`` (``run``: a ``utils.distributed.Launch``), skipping those already
    written; each shard is written whole under its final name or not at all. Returns ``{"computed": [...],
    "skipped": [...]}`` (shard indices). A failure names its shard and rows."""
    from .distributed import ShardError, shard_bounds, shards_of

    key = key or job.key
    folder = attack_shard_dir(job.cfg, key, shard_size)
    bounds = shard_bounds(len(job.rows), shard_size)
    done = {"computed": [], "skipped": []}
    for i in shards_of(run, len(bounds)):
        path = _shard_path(folder, i, len(bounds))
        if path.is_file():  # complete: only a finished shard is ever renamed to this name
            done["skipped"].append(i)
            continue
        a, b = bounds[i]
        rows = job.rows[a:b]
        try:
            needed = attack_items(job.pipelines, job.images, rows, job.cfg, chunk=shard_size)
            store.write_npz(path, {**attack_arrays(needed, key, rows), "shard": np.array([i, len(bounds)])})
        except Exception as e:
            raise ShardError(f"rank {run.rank}: shard {i} of {len(bounds)} (test rows {rows.tolist()}) failed, "
                             f"nothing written to {path}: {type(e).__name__}: {e}") from e
        done["computed"].append(i)
        run.log(f"shard {i + 1}/{len(bounds)} written ({len(rows)} items)")
    return done


def merge_attack_shards(job: AttackJob, shard_size: int, key: str | None = None):
    """Check every shard of ``job`` (present, readable, same key, its rows and models) and write the merged result
    where :func:`pixels_needed` looks for it. A missing or corrupt shard stops the merge, named; the merged file
    appears only complete."""
    from .distributed import ShardError, read_npz, shard_bounds

    key = key or job.key
    folder = attack_shard_dir(job.cfg, key, shard_size)
    bounds = shard_bounds(len(job.rows), shard_size)
    missing = [str(_shard_path(folder, i, len(bounds))) for i in range(len(bounds))
               if not _shard_path(folder, i, len(bounds)).is_file()]
    if missing:
        raise ShardError(f"cannot merge: {len(missing)} of {len(bounds)} shard(s) missing: {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''} (a rank did not finish, or the output folder is not "
                         f"shared by every machine; rerun to compute them)")
    searches = [run_label(label, m) for label in job.pipelines for m in members(job.cfg)]
    parts = []
    for i, (a, b) in enumerate(bounds):
        path = _shard_path(folder, i, len(bounds))
        arrays = read_npz(path, f"shard {i} of {len(bounds)}")
        problem = None
        if str(arrays.get("attack_key", "")) != key:
            problem = f"its key is {arrays.get('attack_key')!s}, not {key}"
        elif not np.array_equal(arrays.get("attack_rows"), job.rows[a:b]):
            problem = f"its rows are not rows {a}..{b - 1} of the job"
        elif arrays["attack_labels"].tolist() != searches:
            problem = f"its searches {arrays['attack_labels'].tolist()} are not {searches}"
        if problem:
            raise ShardError(f"shard {i} of {len(bounds)} {path}: {problem}; delete it and rerun")
        try:
            parts.append(needed_from_arrays(arrays, where=str(path)))
        except ValueError as e:
            raise ShardError(f"shard {i} of {len(bounds)} {path} is corrupt: {e}; delete it and rerun") from e
    return store.write_npz(attack_results_path(job.cfg, key), attack_arrays(merge_needed(parts), key, job.rows))




__all__ = ["EMOTIC_ATTACKED", "FLICKR_ATTACKED", "pipeline_fingerprint", "attack_settings", "attack_key",
           "attack_results_path", "attack_shard_dir", "attack_arrays", "needed_from_arrays", "load_attack_results",
           "AttackJob", "attack_job", "attack_shards", "merge_attack_shards"]
