"""The experiments of parts 1 and 2: data with frozen features, one training recipe per model, evaluation with
intervals and paired comparisons. The notebooks call these; they hold no training or evaluation code themselves.

Models are named once here (``EMOTIC_MODELS``, ``FLICKR_JOINT_MODELS``, ``FLICKR_BASELINES``) and trained by one
recipe from the settings of ``utils.config``. Every trained model is saved under ``<output>/checkpoints`` with a
name that carries a fingerprint of everything that shapes it (its settings, seed, encoders and the training
data's content), so the robustness notebooks load the very models that notebooks 01-04 trained and retrain only
when something differs.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import data as D
from . import encoders, paths, stats, store
from .metrics import emotic_metrics, retrieval_chance, retrieval_metrics
from .models import EmoticBaseline, EmoticJoint, EmoticLoss, FlickrBaseline, FlickrJoint, WithEncoders
from .store import read_npz, write_json, write_npz
from .labels import CATEGORIES
from .person import top_emotions
from .training import emotic_eval, fit, flickr_eval, flickr_pairs, predict, seed_everything

SPLITS = ("train", "val", "test")
#: part of every checkpoint's fingerprint: bump it when a recipe changes in a way its settings do not show
RECIPE_VERSION = 2
#: how a model whose image encoder's final blocks were trained with it is named (beside its frozen twin)
FINETUNED = "last blocks fine-tuned"

#: Emotic models: row label -> (family, inputs). Baselines keep one embedding and head per input (late fusion);
#: joint models project image (body + scene) and text into one shared space.
EMOTIC_MODELS = {
    "body only": ("baseline", ("body",)),
    "context only": ("baseline", ("context",)),
    "text only": ("baseline", ("text",)),
    "image (body+context)": ("baseline", ("body", "context")),
    "fusion (all)": ("baseline", ("body", "context", "text")),
    "joint (image+text)": ("joint", ("image", "text")),
    "joint image only": ("joint", ("image",)),
    "joint text only": ("joint", ("text",)),
}
#: Flickr8k joint models: row label -> FlickrJoint arguments beyond the settings
FLICKR_JOINT_MODELS = {
    "joint (both towers)": dict(towers=("image", "text")),
    "image tower only": dict(towers=("image",)),
    "text tower only": dict(towers=("text",)),
    "joint + hard negatives": dict(towers=("image", "text"), hard_negative_weight=None),  # weight from settings
}
#: Flickr8k closed-form baselines: row label -> FlickrBaseline method
FLICKR_BASELINES = {"image->text map": "image_to_text", "text->image map": "text_to_image", "both maps": "both",
                    "CCA": "cca"}

_EMOTIC_RECIPE = ("loss", "vad_weight", "dropout", "weight_decay", "batch_size", "epochs", "patience",
                  "init_temperature", "train_threads")
_FLICKR_RECIPE = ("joint_space", "joint_hidden", "joint_dropout", "init_temperature", "margin", "epochs",
                  "batch_size", "lr", "weight_decay", "patience", "train_threads")


def slug(label: str) -> str:
    """A file-name-safe key for a row label, e.g. 'fusion (all)' -> 'fusion_all'."""
    out = "".join(c if c.isalnum() else "_" for c in label.lower())
    return "_".join(p for p in out.split("_") if p)


def fingerprint(*parts) -> str:
    """A short content hash of JSON-able parts and numpy arrays (what a checkpoint name carries)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.dtype, p.shape)).encode())
            h.update(np.ascontiguousarray(p).data)
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def threads(n: int | None):
    """Run with ``n`` torch threads (None: leave as is); small heads train fastest on one thread on a CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ data
@dataclass
class Data:
    """A prepared dataset with its frozen-encoder features, per split."""
    name: str
    splits: dict
    features: dict                     # split -> {input: (N, D) float32, plus labels}
    image_encoder: nn.Module
    text_encoder: nn.Module
    root: Path
    digest: dict = field(default_factory=dict)  # split -> content hash of its features and labels

    def sizes(self) -> pd.DataFrame:
        if self.name == "emotic":
            rows = {s: {"persons": len(d), "images": len(d.table.drop_duplicates(["folder", "filename"])),
                        "categories per person": float(np.asarray(d.cat).sum(1).mean()),
                        "categories present": int((np.asarray(d.cat).sum(0) > 0).sum())}
                    for s, d in self.splits.items()}
        else:
            rows = {s: {"images": len(d), "captions": len(d.captions)} for s, d in self.splits.items()}
        return pd.DataFrame(rows).T

    @property
    def encoders(self) -> dict:
        return {"image": self.image_encoder.fingerprint, "text": self.text_encoder.fingerprint}

    @property
    def clip(self) -> bool:
        """True when both encoders are the towers of one CLIP model (their similarity is CLIP's zero-shot score)."""
        return getattr(self.text_encoder, "pooling", None) == "clip" and self.image_encoder.name == self.text_encoder.name

    @property
    def dims(self) -> dict:
        return {k: v.shape[1] for k, v in self.features["train"].items() if k in ("body", "context", "text", "image")}


def frozen_encoders(cfg):
    """The frozen encoders of ``cfg``: the two towers of one CLIP model when ``encoders`` names one, else the image
    and text encoders by name."""
    torch.manual_seed(cfg["seed"])
    if cfg.get("encoders"):
        return encoders.load_encoders(cfg["encoders"])
    return encoders.load_image_encoder(cfg["image_encoder"]), encoders.load_text_encoder(cfg["text_encoder"])


def emotic_data(cfg: dict) -> Data:
    """Emotic artefacts (a missing file stops with the prep command) and their cached frozen features."""
    root = paths.require_artefacts("emotic", [f for s in SPLITS for f in D.emotic_files(s)])
    splits = {s: D.load_emotic(s, root) for s in SPLITS}
    image_encoder, text_encoder = frozen_encoders(cfg)
    features = {s: {"body": encoders.image_features(image_encoder, d.body, desc=f"{s} body"),
                    "context": encoders.image_features(image_encoder, d.context, desc=f"{s} context"),
                    "text": encoders.text_features(text_encoder, d.descriptions, desc=f"{s} text"),
                    "cat": np.asarray(d.cat, np.float32), "cont": np.asarray(d.cont, np.float32)}
                for s, d in splits.items()}
    digest = {s: fingerprint(*(f[k] for k in sorted(f))) for s, f in features.items()}
    return Data("emotic", splits, features, image_encoder, text_encoder, root, digest)


def flickr_data(cfg: dict) -> Data:
    """Flickr8k artefacts and their cached frozen features (one image row per image, one text row per caption)."""
    root = paths.require_artefacts("flickr8k", [f"{s}_{f}" for s in SPLITS for f in ("images.npy", "captions.csv")])
    splits = {s: D.load_flickr(s, root) for s in SPLITS}
    image_encoder, text_encoder = frozen_encoders(cfg)
    features = {s: {"image": encoders.image_features(image_encoder, d.images, desc=f"{s} images"),
                    "text": encoders.text_features(text_encoder, d.caption_texts, desc=f"{s} captions"),
                    "caption_image": np.asarray(d.caption_image, np.int64)}
                for s, d in splits.items()}
    digest = {s: fingerprint(*(f[k] for k in sorted(f))) for s, f in features.items()}
    return Data("flickr8k", splits, features, image_encoder, text_encoder, root, digest)


# ------------------------------------------------------------------------------------- train or load
@dataclass
class Trained:
    """A trained model with its training history; ``reused`` when it was loaded from an identical earlier run."""
    label: str
    model: nn.Module
    history: list
    best_epoch: int
    checkpoint: Path
    reused: bool


def _train_or_load(model: nn.Module, label: str, key: dict, train, val, fit_kwargs: dict, progress: bool) -> Trained:
    """Load the checkpoint whose fingerprint matches ``key``, or train with ``fit`` and save it.

    The record (``.json`` beside the ``.pt``) is written last, so a run killed mid-training is never reused.
    """
    ckpt = paths.output_dir() / "checkpoints" / f"{key['experiment']}_{slug(label)}_{fingerprint(key)}.pt"
    record = ckpt.with_suffix(".json")
    if ckpt.is_file() and record.is_file():
        info = json.loads(record.read_text())
        store.load_state(ckpt, model)
        return Trained(label, model.eval(), info["history"], info["best_epoch"], ckpt, True)
    seed_everything(key["seed"])
    result = fit(model, train, val, checkpoint_path=ckpt, progress=progress, desc=label, seed=key["seed"],
                 **fit_kwargs)
    write_json(record, {"label": label, "key": key, "history": result.history, "best_epoch": result.best_epoch})
    return Trained(label, model.eval(), result.history, result.best_epoch, ckpt, False)


def emotic_model(label: str, cfg: dict, dims: dict, align_weight: float | None = None) -> nn.Module:
    """A fresh, untrained Emotic model of row ``label`` (sizes from the features, so any encoder works)."""
    family, inputs = EMOTIC_MODELS[label]
    criterion = EmoticLoss(cfg["loss"], vad_weight=cfg["vad_weight"])
    if family == "joint":
        weight = cfg["align_weight"] if align_weight is None else align_weight
        return EmoticJoint(inputs, dims=dims, shared_dim=cfg["joint_shared_dim"], hidden=cfg["joint_hidden"],
                           dropout=cfg["dropout"], fusion=cfg["joint_fusion"],
                           align_weight=weight if len(inputs) == 2 else 0.0,
                           init_temperature=cfg["init_temperature"], criterion=criterion)
    return EmoticBaseline(inputs, dims=dims, hidden=cfg["baseline_hidden"], dropout=cfg["dropout"],
                          fusion=cfg["baseline_fusion"], criterion=criterion)


def train_emotic(data: Data, cfg: dict, label: str, *, seed: int | None = None, align_weight: float | None = None,
                 train: dict | None = None, tag: str = "clean", progress: bool = True,
                 finetune: nn.Module | None = None, val: dict | None = None) -> Trained:
    """Train (or load) the Emotic model ``label``; best epoch by validation mAP on clean data.

    ``train`` replaces the training features (e.g. poisoned ones, with ``tag`` naming them); heads start at the
    training base rates. ``finetune``: the trainable end of the image encoder (``ImageEncoder.split()[1]``);
    ``train`` and ``val`` then hold the encoder's prefix maps under ``body``/``context`` instead of features,
    and the blocks train with the heads (``finetune_lr``, ``finetune_epochs``).
    """
    family = EMOTIC_MODELS[label][0]
    train = data.features["train"] if train is None else train
    seed = cfg["seed"] if seed is None else seed
    seed_everything(seed)  # the initial weights depend on the seed only, not on what ran before
    model = emotic_model(label, cfg, data.dims, align_weight).init_prior(train["cat"], train["cont"])
    lr, prefix = cfg[f"{family}_lr"], f"{family}_"
    key = {"experiment": "emotic", "recipe": RECIPE_VERSION, "label": label, "seed": seed, "tag": tag, "encoders": data.encoders,
           "train": data.digest["train"] if tag == "clean" else fingerprint(*(train[k] for k in sorted(train))),
           "val": data.digest["val"], "align_weight": align_weight,
           **{k: cfg[k] for k in _EMOTIC_RECIPE}, **{k: v for k, v in cfg.items() if k.startswith(prefix)}}
    if family == "joint":
        key["align"] = cfg["align_weight"] if align_weight is None else align_weight
    fit_kwargs = dict(metric_fn=emotic_eval, monitor="mAP", epochs=cfg["epochs"], patience=cfg["patience"], lr=lr,
                      weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"])
    n_threads = cfg["train_threads"]
    if finetune is not None:
        finetune = copy.deepcopy(finetune)  # every run starts from the pretrained blocks
        model = WithEncoders(model, {"body": finetune, "context": finetune}, finetune=True,
                             encoder_lr=cfg["finetune_lr"])
        key["finetune"] = {"blocks": str(finetune), "lr": cfg["finetune_lr"], "epochs": cfg["finetune_epochs"]}
        fit_kwargs["epochs"], n_threads = cfg["finetune_epochs"], None  # convolutions: every core helps
        label = f"{label}, {FINETUNED}"
    with threads(n_threads):
        return _train_or_load(model, label if align_weight is None else f"{label}, lambda={align_weight:g}", key,
                              train, data.features["val"] if val is None else val, fit_kwargs, progress)


def train_flickr_joint(data: Data, cfg: dict, label: str, *, seed: int | None = None, train: dict | None = None,
                       tag: str = "clean", progress: bool = True) -> Trained:
    """Train (or load) the Flickr8k two-tower model ``label``; best epoch by validation mean R@1."""
    kwargs = dict(FLICKR_JOINT_MODELS[label])
    if "hard_negative_weight" in kwargs:
        kwargs["hard_negative_weight"] = cfg["hard_negative_weight"]
    train = data.features["train"] if train is None else train
    seed = cfg["seed"] if seed is None else seed
    seed_everything(seed)  # the initial weights depend on the seed only, not on what ran before
    model = FlickrJoint(dims=data.dims, space=cfg["joint_space"], hidden=cfg["joint_hidden"],
                        dropout=cfg["joint_dropout"], init_temperature=cfg["init_temperature"], margin=cfg["margin"],
                        **kwargs)
    key = {"experiment": "flickr8k", "recipe": RECIPE_VERSION, "label": label, "seed": seed, "tag": tag, "encoders": data.encoders,
           "train": data.digest["train"] if tag == "clean" else fingerprint(*(train[k] for k in sorted(train))),
           "val": data.digest["val"], "model": {k: str(v) for k, v in kwargs.items()},
           **{k: cfg[k] for k in _FLICKR_RECIPE}}
    pairs = flickr_pairs(train["image"], train["text"], train["caption_image"])
    with threads(cfg["train_threads"]):
        return _train_or_load(model, label, key, pairs, data.features["val"],
                              dict(metric_fn=flickr_eval, monitor="mean_R@1", epochs=cfg["epochs"],
                                   patience=cfg["patience"], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                                   batch_size=cfg["batch_size"]), progress)


def fit_flickr_baselines(data: Data, cfg: dict, train: dict | None = None) -> tuple[dict, dict]:
    """The closed-form baselines, each penalty chosen on validation mean R@1; returns (models, validation grid)."""
    train = data.features["train"] if train is None else train
    val = data.features["val"]
    models, grid = {}, {}
    with threads(cfg["train_threads"]):
        for label in ("image->text map", "text->image map"):
            models[label], grid[label] = FlickrBaseline.select(train, val, FLICKR_BASELINES[label],
                                                               grid=cfg["ridge_alphas"])
        models["both maps"] = FlickrBaseline("both", alpha=models["image->text map"].alpha,
                                             alpha_t2i=models["text->image map"].alpha).fit(
            train["image"], train["text"], train["caption_image"])
        models["CCA"], grid["CCA"] = FlickrBaseline.select(train, val, "cca", grid=cfg["cca_regs"],
                                                           n_components=cfg["cca_components"])
    return models, grid


def chosen_penalties(models: dict) -> dict:
    """The penalty each closed-form baseline ended with (ridge alpha per direction, CCA shrinkage)."""
    return {label: ([m.alpha, m.alpha_t2i] if m.method == "both" else m.reg if m.method == "cca" else m.alpha)
            for label, m in models.items()}


def validation_table(grid: dict) -> pd.DataFrame:
    """Validation mean R@1 of each closed-form baseline (rows) per penalty it tried (columns)."""
    return pd.DataFrame(grid).T


# ------------------------------------------------------------------------------------------ evaluation
def flickr_similarities(models: dict, data: Data, split: str = "test") -> dict:
    """label -> (images x captions) similarity on ``split``, for any model with a ``similarity`` method."""
    f = data.features[split]
    return {label: np.asarray(m.similarity(f["image"], f["text"]), np.float64) for label, m in models.items()}


def clip_zero_shot(data: Data, split: str = "test") -> dict:
    """``{"CLIP zero-shot": similarity}`` when the encoders are one CLIP model's towers (retrieval by their own
    cosine similarity, no training: the field's standard anchor), else ``{}``."""
    if not data.clip:
        return {}
    f = data.features[split]
    return {"CLIP zero-shot": np.asarray(encoders.clip_zero_shot_similarity(f["image"], f["text"]), np.float64)}


def retrieval_queries(data: Data, cfg: dict) -> dict:
    """Seeded test queries for the example figures: images, captions, and image-caption pairs to link."""
    rng = np.random.default_rng(cfg["seed"])
    split = data.splits["test"]
    n = min(cfg["n_examples"], len(split))
    return {"images": sorted(rng.choice(len(split), n, replace=False).tolist()),
            "captions": sorted(rng.choice(len(split.captions), cfg["n_examples"], replace=False).tolist()),
            "linked": rng.choice(len(split), min(cfg["n_linked"], len(split)), replace=False)}


def retrieval_figures(name: str, data: Data, sims: dict, table: pd.DataFrame, model, cfg: dict, main: str,
                      title: str) -> None:
    """The retrieval figures of notebooks 02 and 04: seeded example queries both ways, the main model's mapped space,
    the rank histograms, and every model's mean R@1 with its interval (``title``)."""
    from . import plots
    from .metrics import retrieval_ranks

    split, test = data.splits["test"], data.features["test"]
    queries = retrieval_queries(data, cfg)
    plots.retrieval_examples(split.images, split.caption_texts, sims[main], test["caption_image"], queries["images"],
                             k=cfg["top_k"], title=f"image -> text, {main}", path=figure(name, "i2t_examples"))
    plots.text_to_image_examples(split.images, split.caption_texts, sims[main], test["caption_image"],
                                 queries["captions"], k=min(cfg["top_k"], len(split)), title=f"text -> image, {main}",
                                 path=figure(name, "t2i_examples"))
    z_image, z_text = model.embed(test["image"], test["text"])
    plots.paired_projection(z_image, z_text, test["caption_image"], linked=queries["linked"],
                            title=f"{main}: images and captions (PCA, each modality centred)",
                            path=figure(name, "projection"))
    ranks = {label: retrieval_ranks(s, test["caption_image"]) for label, s in sims.items()}
    plots.rank_histogram({k: r[0] for k, r in ranks.items()}, {k: r[1] for k, r in ranks.items()},
                         title="rank of the first right answer (test)", path=figure(name, "ranks"))
    plots.comparison_bars(table.drop(index="chance"), "mean R@1", chance=table.loc["chance", "mean R@1"],
                          title=title, path=figure(name, "comparison"))


def emotic_chance(data: Data) -> dict:
    """A model that ignores its input: training prevalence as scores (AP = prevalence, a random scorer's expected
    AP), the most frequent training category on top, the training-mean VAD."""
    train, test = data.features["train"], data.features["test"]
    n = len(test["cat"])
    return {"scores": np.tile(train["cat"].mean(0), (n, 1)), "vad": np.tile(train["cont"].mean(0), (n, 1))}


def emotic_predictions(models: dict, data: Data, split: str = "test") -> dict:
    """label -> the model's outputs on ``split`` (scores, vad, embeddings)."""
    return {label: predict(m.model if isinstance(m, Trained) else m, data.features[split]) for label, m in models.items()}


EMOTIC_COLUMNS = {"mAP": "mAP", "VAD MAE": "vad_mae", "dominant acc": "dominant_accuracy"}  # column -> stats key
FLICKR_COLUMNS = ("i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "mean R@1",
                  "i2t median rank", "t2i median rank")


def with_intervals(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """A table for reading: each metric as ``"41.6 [39.2, 44.0]"`` (estimate and 95 % interval) in one cell."""
    metrics = [c for c in table.columns if not c.endswith((" low", " high"))]
    out = pd.DataFrame(index=table.index)
    for c in metrics:
        if f"{c} low" in table.columns:
            out[c] = [stats.format_interval({"estimate": e, "low": lo, "high": hi}, digits) if np.isfinite(lo)
                      else f"{e:.{digits}f}" for e, lo, hi in zip(table[c], table[f"{c} low"], table[f"{c} high"])]
        else:
            out[c] = table[c].map(lambda v: f"{v:.{digits}f}")
    return out


def _with_interval(row: dict, name: str, interval: dict) -> None:
    row[name], row[f"{name} low"], row[f"{name} high"] = interval["estimate"], interval["low"], interval["high"]


def emotic_table(preds: dict, data: Data, cfg: dict) -> pd.DataFrame:
    """mAP (bias-corrected, see ``stats.emotic_intervals``), VAD MAE and dominant accuracy per model with 95 %
    bootstrap intervals over test persons, plus chance. ``attrs["test_items"]``: the number of test persons."""
    test = data.features["test"]
    rows = {}
    for label, p in {**preds, "chance": emotic_chance(data)}.items():
        ci = stats.emotic_intervals(p["scores"], test["cat"], p["vad"], test["cont"], n_resamples=cfg["bootstrap"],
                                    seed=cfg["seed"])
        rows[label] = {}
        for column, key in EMOTIC_COLUMNS.items():
            _with_interval(rows[label], column, ci[key])
    table = pd.DataFrame(rows).T
    table.attrs["test_items"] = len(test["cat"])
    return table


def flickr_table(sims: dict, data: Data, cfg: dict) -> pd.DataFrame:
    """Recall@1/5/10 both ways, mean R@1 and median ranks per model with 95 % bootstrap intervals over test images
    (each with its captions), plus chance."""
    test = data.features["test"]
    rows = {}
    for label, sim in sims.items():
        ci = stats.retrieval_intervals(sim, test["caption_image"], n_resamples=cfg["bootstrap"], seed=cfg["seed"])
        rows[label] = {}
        for column in FLICKR_COLUMNS:
            _with_interval(rows[label], column, ci[column.replace(" ", "_")])
    chance = retrieval_chance(test["caption_image"])
    rows["chance"] = {c: chance.get(c.replace(" ", "_"), np.nan) for c in FLICKR_COLUMNS}
    table = pd.DataFrame(rows).T
    table.attrs["test_items"] = len(np.unique(test["caption_image"]))
    return table


def compare(kind: str, preds: dict, data: Data, cfg: dict, pairs: list[tuple[str, str]], metric: str) -> pd.DataFrame:
    """Paired comparisons on the same test items: difference a - b with its 95 % paired-bootstrap interval, the
    permutation-test p-value, and the sentence a notebook prints (decided by whether the interval covers zero)."""
    test = data.features["test"]
    rows = {}
    for a, b in pairs:
        if kind == "emotic":
            r = stats.compare_emotic(preds[a]["scores"], preds[b]["scores"], test["cat"], metric=metric,
                                     n_resamples=cfg["bootstrap"], seed=cfg["seed"])
        else:
            r = stats.compare_retrieval(preds[a], preds[b], test["caption_image"], metric=metric,
                                        n_resamples=cfg["bootstrap"], seed=cfg["seed"])
        rows[f"{a} vs {b}"] = {"a": a, "b": b, "metric": metric, **{k: r[k] for k in ("difference", "low", "high",
                                                                                    "p_value")},
                               "finding": stats.difference_wording(r, a, b, metric)}
    return pd.DataFrame(rows).T


def seed_table(kind: str, data: Data, cfg: dict, labels: list[str], metric: str) -> pd.DataFrame:
    """The headline models trained with ``cfg['seeds']`` seeds: per-seed test metric, mean and sd."""
    test = data.features["test"]
    rows = {}
    for label in labels:
        values = []
        for seed in range(cfg["seed"], cfg["seed"] + cfg["seeds"]):
            if kind == "emotic":
                m = train_emotic(data, cfg, label, seed=seed, progress=False).model  # mAP as in emotic_table
                values.append(stats.bias_corrected_map(predict(m, test)["scores"], test["cat"],
                                                       n_subsamples=cfg["bootstrap"], seed=cfg["seed"])["estimate"])
            else:
                m = train_flickr_joint(data, cfg, label, seed=seed, progress=False).model
                values.append(retrieval_metrics(m.similarity(test["image"], test["text"]),
                                                test["caption_image"])[metric.replace(" ", "_")])
        rows[label] = {**{f"seed {cfg['seed'] + i}": v for i, v in enumerate(values)},
                       **{f"{metric} {k}": v for k, v in stats.seed_summary(values).items()}}
    return pd.DataFrame(rows).T


def training_summary(trained: dict) -> pd.DataFrame:
    return pd.DataFrame({label: {"epochs run": len(t.history), "best epoch": t.best_epoch,
                                 "reused checkpoint": t.reused} for label, t in trained.items()}).T


def emotic_alignment(preds: dict, trained: dict, cfg: dict) -> pd.DataFrame:
    """How well the joint models' shared spaces align: person retrieval among the test persons (image embedding
    against text embeddings and back; chance R@1 = 100/N), the learned temperature, and lambda."""
    rows = {}
    for label, p in preds.items():
        if "z_image" not in p or "z_text" not in p:
            continue
        n = len(p["z_image"])
        r = retrieval_metrics(p["z_image"] @ p["z_text"].T, np.arange(n))
        model = trained[label].model
        rows[label] = {"lambda": float(model.align_weight), "temperature": model.logit_scale.temperature,
                       "i2t R@1": r["i2t_R@1"], "t2i R@1": r["t2i_R@1"], "mean R@1": r["mean_R@1"],
                       "chance R@1": 100 / n}
    return pd.DataFrame(rows).T.sort_values("lambda")


def emotic_branches(pred: dict, data: Data) -> pd.DataFrame:
    """Each branch of a late-fusion model scored on its own, beside the fused output (point estimates)."""
    test = data.features["test"]
    branches = sorted(k.split("/", 1)[1] for k in pred if k.startswith("logits/"))
    rows = {f"{m} branch": emotic_metrics(pred[f"logits/{m}"], test["cat"], pred[f"vad/{m}"], test["cont"])
            for m in branches}
    rows["fused"] = emotic_metrics(pred["scores"], test["cat"], pred["vad"], test["cont"])
    return pd.DataFrame({k: {"mAP": m["mAP"], "VAD MAE": m["vad_mae"]["mean"], "dominant acc": m["dominant_accuracy"]}
                         for k, m in rows.items()}).T


def emotic_per_category(preds: dict, data: Data) -> pd.DataFrame:
    """AP per category (rows) and model (columns), with each category's test prevalence (its chance AP)."""
    test = data.features["test"]
    table = pd.DataFrame({label: emotic_metrics(p["scores"], test["cat"])["ap_per_category"] for label, p in preds.items()})
    table.insert(0, "prevalence %", 100 * test["cat"].mean(0))
    return table


def emotic_examples(data: Data, models: dict, n: int, seed: int) -> list[dict]:
    """``n`` seeded test persons through ``top_emotions`` (the single-image helper), from the original photo when
    the manifest's image folder is on this machine, else from the prepared 224 x 224 scene."""
    split = data.splits["test"]
    manifest = json.loads((data.root / "manifest.json").read_text())
    images = Path(manifest.get("source", {}).get("images") or "")
    rows = np.sort(np.random.default_rng(seed).choice(len(split), size=min(n, len(split)), replace=False))
    out = []
    for i in rows:
        row = split.table.iloc[i]
        photo = images / row["folder"] / row["filename"]
        if photo.is_file():
            image, box = photo, tuple(row[["x1", "y1", "x2", "y2"]].astype(float))
        else:
            image, box = np.asarray(split.context[i]), tuple(split.boxes_224[i])
        top = {label: top_emotions(image, split.descriptions[i], model=m, image_encoder=data.image_encoder,
                                   text_encoder=data.text_encoder, box=box, k=3) for label, m in models.items()}
        out.append({"row": int(i), "from_photo": photo.is_file(), "top": top})
    return out


def example_panels(data: Data, examples: list[dict], label: str) -> tuple:
    """The arguments ``plots.person_examples`` takes, for the examples of model ``label``."""
    split, rows = data.splits["test"], [e["row"] for e in examples]
    return (split.context[rows], split.boxes_224[rows], [split.descriptions[i] for i in rows],
            [split.table["categories"].iloc[i] for i in rows], [e["top"][label] for e in examples])


# --------------------------------------------------------------------------------------------- findings
@dataclass
class Findings:
    """What a notebook concludes, as sentences computed from its results, and the targets they rest on."""
    lines: list
    targets: dict


def _split_size_lines(kind: str, table: pd.DataFrame) -> list:
    """The warning line of ``stats.split_size_note`` when the table's test split is too small for its intervals."""
    note = stats.split_size_note(kind, table.attrs["test_items"]) if "test_items" in table.attrs else None
    return [f"**caution**: {note}"] if note else []

    def _repr_markdown_(self) -> str:
        return "\n".join(f"- {line}" for line in self.lines)


CLEAR_FACTOR = 1.5  # "clearly above chance": at least 1.5 x the chance mAP


def emotic_findings(table: pd.DataFrame, comparisons: pd.DataFrame, seeds: pd.DataFrame, singles: list[str],
                    main: str) -> Findings:
    chance = table.loc["chance"]
    above = {s: bool(table.loc[s, "mAP"] >= CLEAR_FACTOR * chance["mAP"]) for s in singles}
    best_vad = table.drop(index="chance")["VAD MAE"].idxmin()
    first = comparisons.iloc[0]
    targets = {"chance_mAP": chance["mAP"], "singles_clearly_above_chance": above,
               "every_single_clearly_above_chance": all(above.values()), "best_single": first["b"],
               "fusion_minus_best_single": first["difference"], "fusion_vs_best_single_p": first["p_value"],
               "fusion_beats_best_single": bool(first["low"] > 0),
               "best_VAD_MAE": table.loc[best_vad, "VAD MAE"], "VAD_MAE_constant": chance["VAD MAE"],
               "vad_beats_constant": bool(table.loc[best_vad, "VAD MAE high"] < chance["VAD MAE"])}
    lines = [f"chance mAP {chance['mAP']:.1f}; "
             + ", ".join(f"{s} {table.loc[s, 'mAP']:.1f}" for s in singles)
             + f"; every single input clearly (>= {CLEAR_FACTOR} x) above chance: **{targets['every_single_clearly_above_chance']}**",
             f"{main} against the best single input: {first['finding']}"]
    lines += [f"{row['a']} against {row['b']}: {row['finding']}" for _, row in comparisons.iloc[1:].iterrows()]
    lines += [f"over {len([c for c in seeds.columns if c.startswith('seed ')])} training seed(s), {label}: mAP "
              f"{row.get('mAP mean', float('nan')):.1f} +/- {row.get('mAP sd', float('nan')):.1f} (mean +/- sd)"
              for label, row in seeds.iterrows()]
    lines.append(f"VAD: best MAE {targets['best_VAD_MAE']:.3f} ({best_vad}; 95 % interval up to "
                 f"{table.loc[best_vad, 'VAD MAE high']:.3f}) against {chance['VAD MAE']:.3f} for the training-mean "
                 f"constant: better than the constant beyond noise: **{targets['vad_beats_constant']}**")
    return Findings(lines + _split_size_lines("emotic", table), targets)


def joint_findings(table: pd.DataFrame, comparisons: pd.DataFrame, seeds: pd.DataFrame, alignment: pd.DataFrame,
                   main: str, baseline: str) -> Findings:
    by_pair = {(row["a"], row["b"]): row for _, row in comparisons.iterrows()}
    vs_baseline, vs_image = by_pair[(main, baseline)], by_pair[(main, "joint image only")]
    chance = table.loc["chance", "mAP"]
    targets = {"chance_mAP": chance, "joint_minus_baseline_mAP": vs_baseline["difference"],
               "joint_vs_baseline_p": vs_baseline["p_value"], "joint_beats_baseline": bool(vs_baseline["low"] > 0),
               "text_adds_to_image": bool(vs_image["low"] > 0),
               "alignment_mean_R@1": alignment.loc[main, "mean R@1"], "alignment_chance_R@1": alignment.loc[main, "chance R@1"]}
    lines = [f"{main} {table.loc[main, 'mAP']:.1f} mAP [{table.loc[main, 'mAP low']:.1f}, "
             f"{table.loc[main, 'mAP high']:.1f}] (chance {chance:.1f})",
             f"against the part-1 baseline ({baseline}): {vs_baseline['finding']}",
             f"adding the text tower to the image tower: {vs_image['finding']}"]
    lines += [f"{row['a']} against {row['b']}: {row['finding']}" for key, row in by_pair.items()
              if key not in ((main, baseline), (main, "joint image only"))]
    lines += [f"over {len([c for c in seeds.columns if c.startswith('seed ')])} training seed(s), {label}: mAP "
              f"{row['mAP mean']:.1f} +/- {row['mAP sd']:.1f} (mean +/- sd)" for label, row in seeds.iterrows()]
    lines.append(f"alignment (lambda = {alignment.loc[main, 'lambda']:g}): person retrieval mean R@1 "
                 f"{alignment.loc[main, 'mean R@1']:.1f} % against chance {alignment.loc[main, 'chance R@1']:.1f} %, "
                 f"learned temperature {alignment.loc[main, 'temperature']:.3f}")
    return Findings(lines + _split_size_lines("emotic", table), targets)


def retrieval_findings(table: pd.DataFrame, comparisons: pd.DataFrame, main: str,
                       seeds: pd.DataFrame | None = None) -> Findings:
    """Findings of a Flickr8k notebook: each stated comparison worded from its paired interval (``seeds``: None for
    models without a training seed, e.g. the closed-form maps)."""
    seeds = pd.DataFrame() if seeds is None else seeds
    chance = table.loc["chance", "mean R@1"]
    lines = [f"{main}: mean R@1 {table.loc[main, 'mean R@1']:.1f} [{table.loc[main, 'mean R@1 low']:.1f}, "
             f"{table.loc[main, 'mean R@1 high']:.1f}], i2t R@5 {table.loc[main, 'i2t R@5']:.1f}, t2i R@5 "
             f"{table.loc[main, 't2i R@5']:.1f} (chance mean R@1 {chance:.1f})"]
    targets = {"chance_mean_R@1": chance, "main_mean_R@1": table.loc[main, "mean R@1"],
               "above_chance": {label: bool(table.loc[label, "mean R@1 low"] > chance)
                                for label in table.index if label != "chance"}}
    for _, row in comparisons.iterrows():
        lines.append(f"{row['a']} against {row['b']}: {row['finding']}")
        targets[f"{row['a']} beats {row['b']}"] = bool(row["low"] > 0)
    lines += [f"over {len([c for c in seeds.columns if c.startswith('seed ')])} training seed(s), {label}: mean R@1 "
              f"{row['mean R@1 mean']:.1f} +/- {row['mean R@1 sd']:.1f} (mean +/- sd)" for label, row in seeds.iterrows()]
    return Findings(lines + _split_size_lines("flickr8k", table), targets)


# -------------------------------------------------------------------------------------------------- saving
def figure(name: str, what: str) -> Path:
    """Where a notebook's figure goes: ``<output>/figures/<notebook>_<what>.png``."""
    return paths.output_dir() / "figures" / f"{name}_{what}.png"


def emotic_payload(preds: dict, data: Data, main: str) -> dict:
    """The predictions file of an Emotic notebook: ground truth plus every model's test scores and VAD.

    Keys: ``labels`` (N, 26) uint8, ``vad_true`` (N, 3), ``index`` (row of ``test.csv``), ``categories``,
    ``models`` (slugs) and ``model_labels``; per model ``<slug>_scores`` (N, 26) and ``<slug>_vad_pred`` (N, 3);
    ``main`` names the headline model's slug.
    """
    test = data.features["test"]
    payload = {"labels": test["cat"].astype(np.uint8), "vad_true": test["cont"].astype(np.float32),
               "index": data.splits["test"].table["index"].to_numpy(np.int64), "categories": np.array(CATEGORIES),
               "models": np.array([slug(k) for k in preds]), "model_labels": np.array(list(preds)),
               "main": np.array(slug(main))}
    for label, p in preds.items():
        payload[f"{slug(label)}_scores"] = p["scores"].astype(np.float32)
        payload[f"{slug(label)}_vad_pred"] = p["vad"].astype(np.float32)
    return payload


def flickr_payload(sims: dict, data: Data, main: str) -> dict:
    """The predictions file of a Flickr8k notebook: ``caption_image`` (C,), ``captions`` (C,), ``models`` /
    ``model_labels``, ``main``, and per model ``<slug>_similarity`` (M images, C captions) float32."""
    split = data.splits["test"]
    payload = {"caption_image": data.features["test"]["caption_image"], "captions": np.array(split.caption_texts),
               "models": np.array([slug(k) for k in sims]), "model_labels": np.array(list(sims)),
               "main": np.array(slug(main))}
    for label, sim in sims.items():
        payload[f"{slug(label)}_similarity"] = np.asarray(sim, np.float32)
    return payload


def _jsonable_table(table: pd.DataFrame) -> dict | list:
    """Rows keyed by their label, or a list of rows when the index is just a row number."""
    if isinstance(table.index, pd.RangeIndex):
        return [{str(c): v for c, v in row.items()} for row in table.to_dict("records")]
    return {str(k): {str(c): v for c, v in row.items()} for k, row in table.to_dict("index").items()}


def save(name: str, cfg: dict, data: Data, summary: pd.DataFrame, payload: dict, **sections) -> dict:
    """Write ``<output>/metrics/<name>.json`` (``summary`` = the headline table, then every section: tables become
    ``{row: {column: value}}``, ``Findings`` their sentences and targets) and ``<output>/predictions/<name>.npz``."""
    out = paths.output_dir()
    doc = {"notebook": name, "profile": cfg["profile"], "config": cfg, "encoders": data.encoders,
           "summary": _jsonable_table(summary)}
    for key, value in sections.items():
        if isinstance(value, pd.DataFrame):
            value = _jsonable_table(value)
        elif isinstance(value, Findings):
            value = {"lines": value.lines, "targets": value.targets}
        doc[key] = value
    predictions = write_npz(out / "predictions" / f"{name}.npz", payload)
    doc["predictions"] = predictions.name
    return {"metrics": write_json(out / "metrics" / f"{name}.json", doc), "predictions": predictions}


def check_saved(name: str) -> None:
    """Re-read a notebook's saved files and recompute its headline point estimates from the predictions (the full,
    independent checks are in ``tests/test_notebook_results.py``)."""
    out = paths.output_dir()
    doc = json.loads((out / "metrics" / f"{name}.json").read_text())
    p = read_npz(out / "predictions" / doc["predictions"])
    for s, label in zip(p["models"], p["model_labels"]):
        row = doc["summary"][str(label)]
        if "labels" in p:
            m = emotic_metrics(p[f"{s}_scores"], p["labels"], p[f"{s}_vad_pred"], p["vad_true"])
            corrected = stats.bias_corrected_map(p[f"{s}_scores"], p["labels"], seed=doc["config"]["seed"],
                                                 n_subsamples=doc["config"]["bootstrap"])["estimate"]
            got = {"mAP": corrected, "VAD MAE": m["vad_mae"]["mean"], "dominant acc": m["dominant_accuracy"]}
        else:
            m = retrieval_metrics(p[f"{s}_similarity"], p["caption_image"])
            got = {c: m[c.replace(" ", "_")] for c in FLICKR_COLUMNS}
        for key, value in got.items():
            if not np.isclose(value, row[key], rtol=0, atol=1e-6):
                raise AssertionError(f"{name}: {label} {key} saved {row[key]} but the predictions give {value}")
    print(f"{name}: {len(p['models'])} models' saved numbers match their predictions")
