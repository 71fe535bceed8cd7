"""What both datasets' experiments share: features, train-or-load through the store, tables, findings, saving."""

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import encoders, models, paths, store, training

SPLITS = ("train", "val", "test")
#: per dataset: the smallest split whose 95 % intervals held the population value >= 90 % of the time, its items, metric
MIN_ITEMS_FOR_COVERAGE = {"emotic": (1000, "persons", "mAP"), "flickr8k": (63, "images", "mean R@1")}


def slug(label: str) -> str:
    """A file-name-safe key for a row label, e.g. 'fusion (all)' -> 'fusion_all'."""
    return "_".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


@contextlib.contextmanager
def threads(n: int | None):
    """Run with ``n`` torch threads (None: leave as is); small heads train fastest on one thread on a CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Data:
    """A prepared dataset with its frozen-encoder features, per split (``digest``: split -> content key)."""
    name: str
    splits: dict
    features: dict                     # split -> {input: (N, D) float32, plus labels}
    image_encoder: nn.Module
    text_encoder: nn.Module
    root: Path
    digest: dict = field(default_factory=dict)

    @property
    def encoders(self) -> dict:
        return {"image": self.image_encoder.fingerprint, "text": self.text_encoder.fingerprint}

    @property
    def dims(self) -> dict:
        return {k: v.shape[1] for k, v in self.features["train"].items() if k in ("body", "context", "text", "image")}


def frozen_encoders(cfg):
    """The two towers of one CLIP model when ``encoders`` names one, else the image and text encoders by name."""
    torch.manual_seed(cfg["seed"])
    return (encoders.load_encoders(cfg["encoders"]) if cfg.get("encoders")
            else (encoders.load_image_encoder(cfg["image_encoder"]), encoders.load_text_encoder(cfg["text_encoder"])))


def features_digest(features: dict) -> str:
    return store.key(*(features[k] for k in sorted(features)))


def with_features(cls, name: str, cfg: dict, root: Path, splits: dict, featurise) -> Data:
    """``cls`` over ``splits`` with the features ``featurise(split_name, split, image_encoder, text_encoder)``."""
    image_enc, text_enc = frozen_encoders(cfg)
    features = {s: featurise(s, d, image_enc, text_enc) for s, d in splits.items()}
    return cls(name, splits, features, image_enc, text_enc, root, {s: features_digest(f) for s, f in features.items()})


@dataclass
class Trained:
    """A trained model with its training history; ``reused`` when it was loaded from an identical earlier run."""
    label: str
    model: nn.Module
    history: list
    best_epoch: int
    checkpoint: Path
    reused: bool


def training_code() -> str:
    return store.code_digest(training, models)  # the code that shapes a checkpoint


def train_or_load(model: nn.Module, label: str, key: dict, train, val, fit_kwargs: dict, progress: bool) -> Trained:
    """Load the checkpoint of ``key`` and the training code, or train and save it (record last)."""
    key = {**key, "code": training_code()}
    ckpt = paths.output_dir() / "checkpoints" / f"{key['experiment']}_{slug(label)}_{store.key(key)}.pt"
    record = ckpt.with_suffix(".json")
    if ckpt.is_file() and record.is_file():
        info = json.loads(record.read_text())
        return Trained(label, store.load_state(ckpt, model).eval(), info["history"], info["best_epoch"], ckpt, True)
    result = training.fit(model, train, val, progress=progress, desc=label, seed=key["seed"], **fit_kwargs)
    store.save_state(ckpt, model)  # fit leaves the best epoch's weights in the model
    store.write_json(record, {"label": label, "key": key, "history": result.history, "best_epoch": result.best_epoch})
    return Trained(label, model.eval(), result.history, result.best_epoch, ckpt, False)


def train_key(data: Data, experiment: str, label: str, seed: int, tag: str, train: dict) -> dict:
    """The part of a checkpoint's key every recipe shares: what is trained, on which features, from which seed."""
    return {"experiment": experiment, "label": label, "seed": seed, "tag": tag, "encoders": data.encoders,
            "train": data.digest["train"] if tag == "clean" else features_digest(train), "val": data.digest["val"]}


def training_summary(trained: dict) -> pd.DataFrame:
    return pd.DataFrame({label: {"epochs run": len(t.history), "best epoch": t.best_epoch,
                                 "reused checkpoint": t.reused} for label, t in trained.items()}).T


def with_intervals(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """A table for reading: each metric as ``"41.6 [39.2, 44.0]"`` (estimate and 95 % interval) in one cell."""
    out = pd.DataFrame(index=table.index)
    for c in [c for c in table.columns if not c.endswith((" low", " high"))]:
        if f"{c} low" in table.columns:
            out[c] = [f"{e:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if np.isfinite(lo) else f"{e:.{digits}f}"
                      for e, lo, hi in zip(table[c], table[f"{c} low"], table[f"{c} high"])]
        else:
            out[c] = table[c].map(lambda v: f"{v:.{digits}f}")
    return out


def interval_columns(columns: dict) -> dict:
    """column -> interval dict (estimate, low, high) as the columns ``c``, ``c low``, ``c high`` of a table row."""
    return {f"{c}{end}": ci[part] for c, ci in columns.items()
            for end, part in (("", "estimate"), (" low", "low"), (" high", "high"))}


def difference_wording(result: Mapping, name_a: str, name_b: str, metric: str) -> str:
    """The sentence for a paired comparison; the interval decides ("higher" is literal: worse for an error)."""
    d, lo, hi = float(result["difference"]), float(result["low"]), float(result["high"])
    ci, p = f"{100 * float(result.get('confidence', 0.95)):g} % CI", result.get("p_value")
    tail = "" if p is None else (", p < 0.001" if float(p) < 0.001 else f", p = {float(p):.2g}")
    if not (lo > 0 or hi < 0):  # covers zero (or undefined): nothing to claim
        return (f"no detectable difference in {metric} between {name_a} and {name_b} "
                f"({name_a} - {name_b} = {d:+.1f} points, {ci} {lo:.1f} to {hi:.1f}{tail})")
    a, b, d, lo, hi = (name_a, name_b, d, lo, hi) if lo > 0 else (name_b, name_a, -d, -hi, -lo)
    return f"{a} is higher than {b} in {metric} by {d:.1f} points ({ci} {lo:.1f} to {hi:.1f}{tail})"


def compare(pairs: list[tuple[str, str]], metric: str, paired) -> pd.DataFrame:
    """Paired comparisons (``paired(a, b)``: a ``stats.compare_*`` result) with the sentence a notebook prints."""
    results = [(a, b, paired(a, b)) for a, b in pairs]
    return pd.DataFrame({f"{a} vs {b}": {"a": a, "b": b, "metric": metric,
                                         **{k: r[k] for k in ("difference", "low", "high", "p_value")},
                                         "finding": difference_wording(r, a, b, metric)} for a, b, r in results}).T


def seed_table(cfg: dict, labels: list[str], metric: str, score) -> pd.DataFrame:
    """The headline models over ``cfg['seeds']`` seeds (``score(label, seed)``), mean and sample sd."""
    rows = {}
    for label in labels:
        values = [score(label, seed) for seed in range(cfg["seed"], cfg["seed"] + cfg["seeds"])]
        sample = np.asarray(values, dtype=np.float64).ravel()
        if sample.size == 0 or not np.isfinite(sample).all():
            raise ValueError(f"seed_table: no values, or NaN or infinity among them: {sample}")
        sd = float(sample.std(ddof=1)) if sample.size > 1 else float("nan")
        rows[label] = {**{f"seed {cfg['seed'] + i}": v for i, v in enumerate(values)},
                       f"{metric} mean": float(sample.mean()), f"{metric} sd": sd, f"{metric} n": int(sample.size)}
    return pd.DataFrame(rows).T


@dataclass
class Findings:
    """What a notebook concludes, as sentences computed from its results, and the targets they rest on."""
    lines: list
    targets: dict

    def _repr_markdown_(self) -> str:
        return "\n".join(f"- {line}" for line in self.lines)


def findings(name: str, table: pd.DataFrame, lines: list, targets: dict, compared, seeds: pd.DataFrame,
             metric: str, after: tuple = ()) -> Findings:
    """``lines``, the compared rows, seed rows, ``after``, and a caution when the test split is too small."""
    lines = lines + [f"{row['a']} against {row['b']}: {row['finding']}" for row in compared]
    n = len([c for c in seeds.columns if c.startswith("seed ")])
    lines += [f"over {n} training seed(s), {label}: {metric} {row[f'{metric} mean']:.1f} +/- "
              f"{row[f'{metric} sd']:.1f} (mean +/- sd)" for label, row in seeds.iterrows()] + list(after)
    need, unit, covered = MIN_ITEMS_FOR_COVERAGE[name]
    if (n_items := int(table.attrs.get("test_items", need))) < need:
        lines.append(f"**caution**: this test split ({n_items} {unit}) is too small for its intervals to hold: "
                     f"simulated splits smaller than {need} {unit} held the population {covered} in fewer than 90 % "
                     f"of their 95 % intervals (benchmarks/bench_coverage.py), so read the intervals here as rough")
    return Findings(lines, targets)


def figure(name: str, what: str) -> Path:
    """Where a notebook's figure goes: ``<output>/figures/<notebook>_<what>.png``."""
    return paths.output_dir() / "figures" / f"{name}_{what}.png"


def model_arrays(payload: dict, arrays: dict, main: str) -> dict:
    """``payload`` with the model index (slugs, labels, main) and ``<slug>_<what>`` arrays per model."""
    per_model = {f"{slug(label)}_{what}": a for label, named in arrays.items() for what, a in named.items()}
    return {**payload, "models": np.array([slug(k) for k in arrays]), "model_labels": np.array(list(arrays)),
            "main": np.array(slug(main)), **per_model}


def _jsonable(value):
    """A table as rows by label (a list of rows when the index is a row number), findings as lines and targets."""
    if isinstance(value, Findings):
        return {"lines": value.lines, "targets": value.targets}
    if isinstance(value, pd.DataFrame):  # ``store.jsonable`` makes the keys strings
        return value.to_dict("records") if isinstance(value.index, pd.RangeIndex) else value.to_dict("index")
    return value


def save(name: str, cfg: dict, data: Data, summary: pd.DataFrame, payload: dict, **sections) -> dict:
    """Write ``<output>/metrics/<name>.json`` (the summary table, then every section) and the predictions ``.npz``."""
    out = paths.output_dir()
    doc = {"notebook": name, "profile": cfg["profile"], "config": cfg, "encoders": data.encoders,
           "summary": _jsonable(summary), **{key: _jsonable(value) for key, value in sections.items()}}
    predictions = store.write_npz(out / "predictions" / f"{name}.npz", payload)
    doc["predictions"] = predictions.name
    return {"metrics": store.write_json(out / "metrics" / f"{name}.json", doc), "predictions": predictions}


def check_saved(name: str, recompute) -> None:
    """Recompute a notebook's headline point estimates from its saved predictions (``recompute``)."""
    out = paths.output_dir()
    doc = json.loads((out / "metrics" / f"{name}.json").read_text())
    p = store.read_npz(out / "predictions" / doc["predictions"])
    for s, label in zip(p["models"], p["model_labels"]):
        row = doc["summary"][str(label)]
        for key, value in recompute(p, s, doc["config"]).items():
            if not np.isclose(value, row[key], rtol=0, atol=1e-6):
                raise AssertionError(f"{name}: {label} {key} saved {row[key]} but the predictions give {value}")
    print(f"{name}: {len(p['models'])} models' saved numbers match their predictions")
