"""The Emotic experiments (notebooks 01, 03, 05); shared parts: ``utils.experiments``, ``utils.robustness``."""
import copy
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import attack as A
from . import data as D
from . import encoders, paths, stats
from . import experiments as X
from . import robustness as R
from .images import load_rgb, pixel_box, resize_rgb
from .labels import CATEGORIES, CATEGORY_INDEX, CONTINUOUS
from .metrics import emotic_metrics, retrieval_metrics
from .models import EmoticBaseline, EmoticJoint, EmoticLoss, WithEncoders
from .poisoning import median_filter_defence, poison_images, stamp_trigger
from .training import emotic_eval, predict, seed_everything

FINETUNED = "last blocks fine-tuned"  #: names a model whose image encoder's final blocks trained with it
#: row label -> (family, inputs): late fusion of one embedding per input, or one shared space (docs/models.md)
MODELS = {"body only": ("baseline", ("body",)), "context only": ("baseline", ("context",)),
          "text only": ("baseline", ("text",)), "image (body+context)": ("baseline", ("body", "context")),
          "fusion (all)": ("baseline", ("body", "context", "text")), "joint (image+text)": ("joint", ("image", "text")),
          "joint image only": ("joint", ("image",)), "joint text only": ("joint", ("text",))}
_RECIPE = ("loss", "vad_weight", "dropout", "weight_decay", "batch_size", "epochs", "patience", "init_temperature",
           "train_threads")
COLUMNS = {"mAP": "mAP", "VAD MAE": "vad_mae", "dominant acc": "dominant_accuracy"}  # column -> stats key
CLEAR_FACTOR = 1.5  # "clearly above chance": at least 1.5 x the chance mAP


class Data(X.Data):
    def sizes(self) -> pd.DataFrame:
        return pd.DataFrame({s: {"persons": len(d), "images": len(d.table.drop_duplicates(["folder", "filename"])),
                                 "categories per person": float(np.asarray(d.cat).sum(1).mean()),
                                 "categories present": int((np.asarray(d.cat).sum(0) > 0).sum())}
                             for s, d in self.splits.items()}).T


def load_splits() -> tuple:
    return paths.artefact_dir("emotic"), {s: D.load_emotic(s) for s in X.SPLITS}


def data(cfg: dict) -> Data:
    def featurise(s, d, image_encoder, text_encoder):
        return {"body": encoders.image_features(image_encoder, d.body, desc=f"{s} body"),
                "context": encoders.image_features(image_encoder, d.context, desc=f"{s} context"),
                "text": encoders.text_features(text_encoder, d.descriptions, desc=f"{s} text"),
                "cat": np.asarray(d.cat, np.float32), "cont": np.asarray(d.cont, np.float32)}
    return X.with_features(Data, "emotic", cfg, *load_splits(), featurise)


def model(label: str, cfg: dict, dims: dict, align_weight: float | None = None):
    """A fresh, untrained model of row ``label`` (sizes from the features, so any encoder works)."""
    family, inputs = MODELS[label]
    criterion = EmoticLoss(cfg["loss"], vad_weight=cfg["vad_weight"])
    if family == "joint":
        weight = cfg["align_weight"] if align_weight is None else align_weight
        return EmoticJoint(inputs, dims=dims, shared_dim=cfg["joint_shared_dim"], hidden=cfg["joint_hidden"],
                           dropout=cfg["dropout"], fusion=cfg["joint_fusion"], init_temperature=cfg["init_temperature"],
                           align_weight=weight if len(inputs) == 2 else 0.0, criterion=criterion)
    return EmoticBaseline(inputs, dims=dims, hidden=cfg["baseline_hidden"], dropout=cfg["dropout"],
                          fusion=cfg["baseline_fusion"], criterion=criterion)


def train(data: Data, cfg: dict, label: str, *, seed: int | None = None, align_weight: float | None = None,
          train: dict | None = None, tag: str = "clean", progress: bool = True, finetune=None,
          val: dict | None = None) -> X.Trained:
    """Train (or load) model ``label``, best epoch by validation mAP; ``train``: other features."""
    family = MODELS[label][0]
    train = data.features["train"] if train is None else train
    seed = cfg["seed"] if seed is None else seed
    seed_everything(seed)  # the initial weights depend on the seed only, not on what ran before
    net = model(label, cfg, data.dims, align_weight).init_prior(train["cat"], train["cont"])
    key = {**X.train_key(data, "emotic", label, seed, tag, train), "align_weight": align_weight,
           **{k: cfg[k] for k in _RECIPE}, **{k: v for k, v in cfg.items() if k.startswith(f"{family}_")}}
    if family == "joint":
        key["align"] = cfg["align_weight"] if align_weight is None else align_weight
    fit_kwargs = dict(metric_fn=emotic_eval, monitor="mAP", epochs=cfg["epochs"], patience=cfg["patience"],
                      lr=cfg[f"{family}_lr"], weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"])
    n_threads = cfg["train_threads"]
    if finetune is not None:
        finetune = copy.deepcopy(finetune)  # every run starts from the pretrained blocks
        net = WithEncoders(net, {"body": finetune, "context": finetune}, encoder_lr=cfg["finetune_lr"])
        key["finetune"] = {"blocks": str(finetune), "lr": cfg["finetune_lr"], "epochs": cfg["finetune_epochs"]}
        fit_kwargs["epochs"], n_threads = cfg["finetune_epochs"], None  # convolutions: every core helps
        label = f"{label}, {FINETUNED}"
    with X.threads(n_threads):
        return X.train_or_load(net, label if align_weight is None else f"{label}, lambda={align_weight:g}", key,
                               train, data.features["val"] if val is None else val, fit_kwargs, progress)


def predictions(models: dict, data: Data) -> dict:
    """label -> the model's test outputs (scores, vad, embeddings)."""
    return {label: predict(m.model if isinstance(m, X.Trained) else m, data.features["test"])
            for label, m in models.items()}


def table(preds: dict, data: Data, cfg: dict) -> pd.DataFrame:
    """mAP (bias-corrected), VAD MAE, dominant accuracy with 95 % intervals, and chance (prevalence, mean)."""
    train, test = data.features["train"], data.features["test"]
    n, rows = len(test["cat"]), {}
    chance = {"scores": np.tile(train["cat"].mean(0), (n, 1)), "vad": np.tile(train["cont"].mean(0), (n, 1))}
    for label, p in {**preds, "chance": chance}.items():
        ci = stats.emotic_intervals(p["scores"], test["cat"], p["vad"], test["cont"], n_resamples=cfg["bootstrap"],
                                    seed=cfg["seed"])
        rows[label] = X.interval_columns({column: ci[key] for column, key in COLUMNS.items()})
    out = pd.DataFrame(rows).T
    out.attrs["test_items"] = len(test["cat"])
    return out


def compare(preds: dict, data: Data, cfg: dict, pairs: list, metric: str = "mAP") -> pd.DataFrame:
    cat = data.features["test"]["cat"]
    return X.compare(pairs, metric, lambda a, b: stats.compare_emotic(
        preds[a]["scores"], preds[b]["scores"], cat, metric=metric, n_resamples=cfg["bootstrap"], seed=cfg["seed"]))


def clean_map(scores: np.ndarray, labels: np.ndarray, cfg: dict) -> float:
    """The bias-corrected test mAP exactly as the summary tables compute it (same subsets, same seed)."""
    return stats.bias_corrected_map(scores, labels, n_subsamples=cfg["bootstrap"], seed=cfg["seed"])["estimate"]


def seed_table(data: Data, cfg: dict, labels: list[str], metric: str = "mAP") -> pd.DataFrame:
    test = data.features["test"]
    return X.seed_table(cfg, labels, metric, lambda label, seed: clean_map(
        predict(train(data, cfg, label, seed=seed, progress=False).model, test)["scores"], test["cat"], cfg))


def alignment(preds: dict, trained: dict, cfg: dict) -> pd.DataFrame:
    """The joint models' shared spaces: person retrieval among the test persons, temperature and lambda."""
    rows = {}
    for label, p in preds.items():
        if "z_image" in p and "z_text" in p:
            n, net = len(p["z_image"]), trained[label].model
            r = retrieval_metrics(p["z_image"] @ p["z_text"].T, np.arange(n))
            rows[label] = {"lambda": float(net.align_weight), "temperature": net.logit_scale.temperature,
                           **{f"{d} R@1": r[f"{d}_R@1"] for d in ("i2t", "t2i", "mean")}, "chance R@1": 100 / n}
    return pd.DataFrame(rows).T.sort_values("lambda")


def branches(pred: dict, data: Data) -> pd.DataFrame:
    """Each branch of a late-fusion model scored on its own, beside the fused output (point estimates)."""
    test = data.features["test"]
    rows = {f"{m} branch": emotic_metrics(pred[f"logits/{m}"], test["cat"], pred[f"vad/{m}"], test["cont"])
            for m in sorted(k.split("/", 1)[1] for k in pred if k.startswith("logits/"))}
    rows["fused"] = emotic_metrics(pred["scores"], test["cat"], pred["vad"], test["cont"])
    return pd.DataFrame({k: {"mAP": m["mAP"], "VAD MAE": m["vad_mae"]["mean"], "dominant acc": m["dominant_accuracy"]}
                         for k, m in rows.items()}).T


def per_category(preds: dict, data: Data) -> pd.DataFrame:
    """AP per category (rows) and model (columns), with each category's test prevalence (its chance AP)."""
    cat = data.features["test"]["cat"]
    out = pd.DataFrame({label: emotic_metrics(p["scores"], cat)["ap_per_category"] for label, p in preds.items()})
    out.insert(0, "prevalence %", 100 * cat.mean(0))
    return out


@torch.no_grad()
def top_emotions(image, description: str | None = None, *, model: nn.Module, image_encoder=None, text_encoder=None,
                 box=None, k: int = 5, with_vad: bool = False):
    """One person's ``k`` top categories ``[(category, score), ...]`` (and VAD), featurised as in training."""
    image = np.asarray(load_rgb(image) if isinstance(image, (str, os.PathLike)) else image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"top_emotions: expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    needs, feats = set(getattr(model, "inputs", ("body", "context", "text"))), {}
    if needs & {"body", "context"}:
        image_encoder = image_encoder or encoders.load_image_encoder()
        if "body" in needs:  # the person crop as mat2py.py makes it: box clipped and outer-rounded, 128 x 128
            h, w = image.shape[:2]
            clipped = (0, 0, w, h) if box is None else pixel_box([float(v) for v in box], w, h)
            if clipped is None:
                raise ValueError(f"top_emotions: box {tuple(box)} has no area inside the {w}x{h} image")
            x1, y1, x2, y2 = clipped
            body = resize_rgb(image[y1:y2, x1:x2], 128)[None]
            feats["body"] = encoders.image_features(image_encoder, body, cache=False)
        if "context" in needs:
            feats["context"] = encoders.image_features(image_encoder, resize_rgb(image, 224)[None], cache=False)
    if "text" in needs:
        if not description:
            raise ValueError("top_emotions: this model reads a text description; pass description=...")
        text_encoder = text_encoder or encoders.load_text_encoder()
        feats["text"] = encoders.text_features(text_encoder, [description], cache=False)
    out = predict(model, feats, keys=("scores", "vad"))
    scores = out["scores"][0]
    top = [(CATEGORIES[i], float(scores[i])) for i in np.argsort(-scores, kind="stable")[:k]]
    return (top, dict(zip(CONTINUOUS, map(float, out["vad"][0])))) if with_vad else top


def examples(data: Data, models: dict, n: int, seed: int) -> list[dict]:
    """``n`` seeded test persons through ``top_emotions``, from the original photo when it is on this machine."""
    split, out = data.splits["test"], []
    images = Path(json.loads((data.root / "manifest.json").read_text()).get("source", {}).get("images") or "")
    for i in np.sort(np.random.default_rng(seed).choice(len(split), size=min(n, len(split)), replace=False)):
        row = split.table.iloc[i]
        photo = images / row["folder"] / row["filename"]
        image, box = ((photo, tuple(row[["x1", "y1", "x2", "y2"]].astype(float))) if photo.is_file()
                      else (np.asarray(split.context[i]), tuple(split.boxes_224[i])))
        top = {label: top_emotions(image, split.descriptions[i], model=m, image_encoder=data.image_encoder,
                                   text_encoder=data.text_encoder, box=box, k=3) for label, m in models.items()}
        out.append({"row": int(i), "from_photo": photo.is_file(), "top": top})
    return out


def example_panels(data: Data, examples: list[dict], label: str) -> tuple:
    """The arguments ``plots.person_examples`` takes, for the examples of model ``label``."""
    split, rows = data.splits["test"], [e["row"] for e in examples]
    return (split.context[rows], split.boxes_224[rows], [split.descriptions[i] for i in rows],
            [split.table["categories"].iloc[i] for i in rows], [e["top"][label] for e in examples])


def findings(table: pd.DataFrame, comparisons: pd.DataFrame, seeds: pd.DataFrame, singles: list[str],
             main: str) -> X.Findings:
    """Notebook 01: each single input against chance, the fusion against the best single input, VAD."""
    ch, first = table.loc["chance"], comparisons.iloc[0]
    above = {s: bool(table.loc[s, "mAP"] >= CLEAR_FACTOR * ch["mAP"]) for s in singles}
    best = table.loc[table.drop(index="chance")["VAD MAE"].idxmin()]  # the row with the lowest VAD MAE
    targets = {"chance_mAP": ch["mAP"], "singles_clearly_above_chance": above,
               "every_single_clearly_above_chance": all(above.values()), "best_single": first["b"],
               "fusion_minus_best_single": first["difference"], "fusion_vs_best_single_p": first["p_value"],
               "fusion_beats_best_single": bool(first["low"] > 0), "best_VAD_MAE": best["VAD MAE"],
               "VAD_MAE_constant": ch["VAD MAE"], "vad_beats_constant": bool(best["VAD MAE high"] < ch["VAD MAE"])}
    lines = [f"chance mAP {ch['mAP']:.1f}; " + ", ".join(f"{s} {table.loc[s, 'mAP']:.1f}" for s in singles)
             + f"; every single input clearly (>= {CLEAR_FACTOR} x) above chance: **{all(above.values())}**",
             f"{main} against the best single input: {first['finding']}"]
    vad = (f"VAD: best MAE {best['VAD MAE']:.3f} ({best.name}; 95 % interval up to {best['VAD MAE high']:.3f}) "
           f"against {ch['VAD MAE']:.3f} for the training-mean constant: better than the constant beyond noise: "
           f"**{targets['vad_beats_constant']}**")
    return X.findings("emotic", table, lines, targets, [row for _, row in comparisons.iloc[1:].iterrows()], seeds,
                      "mAP", (vad,))


def joint_findings(table: pd.DataFrame, comparisons: pd.DataFrame, seeds: pd.DataFrame, alignment: pd.DataFrame,
                   main: str, baseline: str) -> X.Findings:
    """Notebook 03: the joint model against the part-1 baseline and its own image tower, and the alignment."""
    by_pair = {(r["a"], r["b"]): r for _, r in comparisons.iterrows()}
    vs_baseline, vs_image = by_pair[(main, baseline)], by_pair[(main, "joint image only")]
    ch, al, row = table.loc["chance", "mAP"], alignment.loc[main], table.loc[main]
    targets = {"chance_mAP": ch, "joint_minus_baseline_mAP": vs_baseline["difference"],
               "joint_vs_baseline_p": vs_baseline["p_value"], "joint_beats_baseline": bool(vs_baseline["low"] > 0),
               "text_adds_to_image": bool(vs_image["low"] > 0),
               "alignment_mean_R@1": al["mean R@1"], "alignment_chance_R@1": al["chance R@1"]}
    lines = [f"{main} {row['mAP']:.1f} mAP [{row['mAP low']:.1f}, {row['mAP high']:.1f}] (chance {ch:.1f})",
             f"against the part-1 baseline ({baseline}): {vs_baseline['finding']}",
             f"adding the text tower to the image tower: {vs_image['finding']}"]
    rest = [r for key, r in by_pair.items() if key not in ((main, baseline), (main, "joint image only"))]
    aligned = (f"alignment (lambda = {al['lambda']:g}): person retrieval mean R@1 {al['mean R@1']:.1f} % against "
               f"chance {al['chance R@1']:.1f} %, learned temperature {al['temperature']:.3f}")
    return X.findings("emotic", table, lines, targets, rest, seeds, "mAP", (aligned,))


def payload(preds: dict, data: Data, main: str) -> dict:
    """The predictions file: ground truth, test row index, categories, per model scores and VAD (docs/results.md)."""
    test = data.features["test"]
    return X.model_arrays({"labels": test["cat"].astype(np.uint8), "vad_true": test["cont"].astype(np.float32),
                           "index": data.splits["test"].table["index"].to_numpy(np.int64),
                           "categories": np.array(CATEGORIES)},
                          {label: {"scores": p["scores"].astype(np.float32), "vad_pred": p["vad"].astype(np.float32)}
                           for label, p in preds.items()}, main)


def recompute(p: dict, s: str, cfg: dict) -> dict:
    """A model's summary row from its saved predictions, for ``experiments.check_saved``."""
    m = emotic_metrics(p[f"{s}_scores"], p["labels"], p[f"{s}_vad_pred"], p["vad_true"])
    return {"mAP": clean_map(p[f"{s}_scores"], p["labels"], cfg), "VAD MAE": m["vad_mae"]["mean"],
            "dominant acc": m["dominant_accuracy"]}


def right(preds: dict, data: Data) -> dict:
    """label -> bool per test person: the top-scored category is a true one."""
    truth = data.features["test"]["cat"] > 0.5
    return {label: truth[np.arange(len(truth)), p["scores"].argmax(1)] for label, p in preds.items()}


def pipelines(data: Data, models: dict) -> dict:
    """label -> the pixel pipeline of that model (text held clean), keyed by encoder, weights and side data."""
    test = data.features["test"]
    return R.pipelines(data, models, A.EmoticPixelPipeline, test["text"], np.asarray(data.splits["test"].boxes_224),
                       test["cat"])


def defence(data: Data, models: dict, attack: R.AttackRun, rows: np.ndarray, cfg: dict) -> tuple[pd.DataFrame, dict]:
    """The median filter's price in clean mAP, the transfer and the adaptive attack; (table, adaptive searches)."""
    split, test = data.splits["test"], data.features["test"]
    filtered = {kind: encoders.image_features(data.image_encoder, median_filter_defence(
        np.asarray(getattr(split, kind)), cfg["median_size"]), desc=f"filtered {kind}") for kind in ("body", "context")}
    return R.defence(pipelines(data, models), attack, np.asarray(split.context), rows, cfg, "mAP",
                     lambda m, f: clean_map(predict(models[m], {**test, **f})["scores"], test["cat"], cfg), filtered)


def relabelled(labels: np.ndarray, rows: np.ndarray, target: int) -> np.ndarray:
    """A float32 copy of the (N, 26) labels with ``rows`` switched to category ``target`` alone (VAD is left alone)."""
    new = np.asarray(labels).astype(np.float32, copy=True)
    new[rows] = np.eye(new.shape[1], dtype=np.float32)[target]
    return new


def poisoning(data: Data, cfg: dict, labels: list[str]) -> tuple[pd.DataFrame, dict]:
    """Frozen and (``poison_finetune="last"``) end-to-end poisoning: (table, scores keyed by (model, fraction))."""
    if cfg["poison_finetune"] not in (None, False, "last"):
        raise ValueError(f"poison_finetune must be null (or false) or 'last', got {cfg['poison_finetune']!r}")
    variants = (False, True) if cfg["poison_finetune"] else (False,)  # frozen, then end to end
    parts = [_poisoning(data, cfg, labels, finetune) for finetune in variants]
    return pd.concat([t for t, _ in parts], ignore_index=True), {k: v for _, s in parts for k, v in s.items()}


def _poisoning(data: Data, cfg: dict, labels: list[str], finetune: bool) -> tuple[pd.DataFrame, dict]:
    """One variant: frozen features, or the encoder's last blocks trained on the maps of its frozen prefix."""
    splits, trigger = data.splits, dict(size=cfg["trigger_size"], position=cfg["trigger_position"])
    prefix, blocks = data.image_encoder.split() if finetune else (None, None)

    def encode(images, desc=None):  # features, or the float32 prefix maps (N, C, h, w) that stand in for them
        if not finetune:
            return encoders.image_features(data.image_encoder, images, desc=desc)
        out, rows = None, encoders.RowDigests(images)  # a scene shared by several persons is encoded once
        for idx, maps in encoders.batched_outputs(prefix, images, prefix.mean.device, None, desc, autocast=False,
                                                  rows=rows.distinct()):
            out = np.empty((len(images), *maps.shape[1:]), np.float32) if out is None else out
            out[idx] = maps
        return np.zeros((0,), np.float32) if out is None else rows.copy_repeats(out)
    clean = data.features if not finetune else {
        name: {**data.features[name], **{kind: encode(getattr(splits[name], kind), f"{name} {kind} maps")
                                         for kind in ("body", "context")}} for name in ("train", "val", "test")}
    target, test = CATEGORY_INDEX[cfg["poison_target"]], clean["test"]
    triggered = {kind: encode(stamp_trigger(np.asarray(getattr(splits["test"], kind)), **trigger), f"triggered {kind}")
                 for kind in ("body", "context")}
    eligible, rows, scores = test["cat"][:, target] < 0.5, [], {}
    for fraction in cfg["poison_fractions"]:
        chosen, stamped = poison_images(splits["train"].context, fraction, cfg["seed"], **trigger)
        poisoned = dict(clean["train"], cat=relabelled(clean["train"]["cat"], chosen, target))
        if len(chosen):  # the stamped copies' inputs, computed from their new pixels
            body = stamp_trigger(np.asarray(splits["train"].body[chosen]), **trigger)
            for kind, imgs in (("context", stamped), ("body", body)):
                poisoned[kind] = poisoned[kind].copy()
                poisoned[kind][chosen] = encode(imgs)
        for label in labels:
            trained = train(data, cfg, label, train=poisoned, val=clean["val"], finetune=blocks, progress=False,
                            tag="clean" if fraction == 0 else f"poison-{cfg['poison_target']}-{fraction:g}")
            name = f"{label}, {FINETUNED}" if finetune else label
            s = scores[name, fraction] = {"clean": predict(trained.model, test)["scores"],
                                          "triggered": predict(trained.model, {**test, **triggered})["scores"]}
            rows.append({"model": name, "encoder": FINETUNED if finetune else "frozen", "fraction": fraction,
                         "poisoned images": len(chosen),
                         **R.backdoor_columns(s["triggered"][eligible].argmax(1) == target,
                                              s["clean"][eligible].argmax(1) == target),
                         "clean mAP": clean_map(s["clean"], test["cat"], cfg), "checkpoint": trained.checkpoint.name})
    return pd.DataFrame(rows), scores


def gallery(data: Data, needed: dict, n: int, path=None):
    """The first ``n`` successful attacks: scene and top category before and after, the changed pixels."""
    return R.gallery(data.splits["test"].context, needed, n, lambda s: f"{CATEGORIES[np.argmax(s)]} {s.max():.2f}",
                     "person", "few-pixel attacks: before and after", path)
