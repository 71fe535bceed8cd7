"""Emotions for one's own photos (``scripts/predict.py``): a notebook's trained Emotic model applied to a new photo.

Why a module: the script only parses arguments and prints; finding the checkpoint, the per-category thresholds and
the description of a new person live here, where tests reach them. Nothing is re-implemented: the checkpoint is
the one ``utils.emotic.train`` saved (found by its record, every setting it holds checked against the
current ones), the model is rebuilt by ``emotic.model``, and the photo goes through ``training.top_emotions``,
which crops and squashes it as ``mat2py.py`` does (scene 224, body 128).

Thresholds: for each category, the score threshold that maximises F1 on the validation split, over the model's
own validation scores (of equal F1, the highest threshold). A category
without a validation positive has none (NaN): no threshold can be chosen for it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit

from . import emotic
from . import experiments as X
from . import paths, store
from .labels import CATEGORIES
from .training import predict, top_emotions


class PredictError(RuntimeError):
    """A bad photo, box, checkpoint or description source; the message names the file and the problem."""


@dataclass
class Loaded:
    label: str
    model: object
    checkpoint: Path
    data: X.Data
    thresholds: np.ndarray  # (26,) probability thresholds, NaN where validation has no positive


def _records(label: str) -> list[tuple[Path, dict]]:
    folder = paths.output_dir() / "checkpoints"
    out = []
    for record in sorted(folder.glob(f"emotic_{X.slug(label)}_*.json")):
        ckpt = record.with_suffix(".pt")
        try:
            key = json.loads(record.read_text())["key"]
        except (OSError, ValueError, KeyError) as e:
            raise PredictError(f"{record}: unreadable checkpoint record ({e})") from e
        # the headline model of the notebook: clean data, frozen encoders, the configured alignment weight
        if ckpt.is_file() and key.get("label") == label and key.get("tag") == "clean" and "finetune" not in key \
                and key.get("align_weight") is None:
            out.append((ckpt, key))
    return out


_NOT_SETTINGS = {"experiment", "label", "tag", "encoders", "align_weight"}


def find_checkpoint(label: str, cfg: dict, data: X.Data) -> Path:
    """The checkpoint of ``label`` trained on these data with these settings; the errors say what differs."""
    if label not in emotic.MODELS:
        raise PredictError(f"unknown model {label!r}: expected one of {', '.join(map(repr, emotic.MODELS))}")
    found = _records(label)
    if not found:
        raise PredictError(f"{paths.output_dir() / 'checkpoints'}: no checkpoint of {label!r}; run notebook 01 "
                           f"(or 03 for the joint models) with the same settings first")
    same_encoders = [(c, k) for c, k in found if k.get("encoders") == data.encoders]
    if not same_encoders:
        ckpt, key = found[-1]
        raise PredictError(f"{ckpt}: trained with other encoders ({key.get('encoders')}) than the current settings "
                           f"load ({data.encoders}); set MMER_IMAGE_ENCODER / MMER_TEXT_ENCODER / MMER_ENCODERS as "
                           f"for that training")
    want = {"seed": cfg["seed"], "train": data.digest["train"], "val": data.digest["val"], "code": X.training_code()}
    fits, differ = [], {}
    for ckpt, key in same_encoders:
        # every setting the record holds (the recipe's knobs) must be the current one; align_weight None means
        # "the configured value", which the record keeps under "align"
        differ = {k: (v, want[k] if k in want else cfg[k]) for k, v in key.items()
                  if (k in want and v != want[k]) or (k not in want and k not in _NOT_SETTINGS and k in cfg
                                                      and v != cfg[k])}
        if not differ:
            fits.append(ckpt)
    if not fits:
        raise PredictError(f"{same_encoders[-1][0]}: trained with other data or settings (checkpoint, now: {differ}); "
                           f"use the settings and prepared data it was trained with, or retrain")
    return max(fits, key=lambda p: p.stat().st_mtime)


def f1_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per category, the probability threshold (predict at >=) of highest F1 on (``probabilities``, ``labels``),
    the highest such threshold on ties; NaN when the category has no positive.

    F1 is computed from counts, 2 TP / (2 TP + FP + FN), rather than from ``precision_recall_curve``'s precision
    and recall, whose rounding can split exact ties and so pick another threshold on another machine.
    """
    out = np.full(labels.shape[1], np.nan)
    for j in range(labels.shape[1]):
        y = np.asarray(labels[:, j]) > 0
        if not y.any():
            continue
        order = np.argsort(-probabilities[:, j], kind="stable")
        p, hit = probabilities[order, j], y[order]
        last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # the last row of each distinct score
        tp = np.cumsum(hit)[last]
        fp = (last + 1) - tp
        f1 = 2 * tp / (2 * tp + fp + (y.sum() - tp))
        best = np.flatnonzero(f1 == f1.max())
        out[j] = p[last[best[0]]]  # scores descend, so the first best is the highest threshold
    return out


def load(label: str, cfg: dict, device=None) -> Loaded:
    """Data (for the encoders, the validation split and the training digests), the checkpoint and its thresholds."""
    import torch

    data = emotic.data(cfg)
    ckpt = find_checkpoint(label, cfg, data)
    torch.manual_seed(cfg["seed"])
    model = store.load_state(ckpt, emotic.model(label, cfg, data.dims)).eval()
    if device is not None:
        model.to(device)
    val = data.features["val"]
    scores = predict(model, val, keys=("scores",))["scores"]
    return Loaded(label, model, ckpt, data, f1_thresholds(expit(scores), val["cat"]))


def description_source(data: X.Data) -> dict:
    """How the training descriptions were written (``manifest.json`` of the artefacts, and for a descriptions
    file written by ``scripts/describe.py`` its ``.json`` record)."""
    manifest = data.root / "manifest.json"
    try:
        info = json.loads(manifest.read_text())["descriptions"]
    except (OSError, ValueError, KeyError) as e:
        raise PredictError(f"{manifest}: cannot tell how the descriptions were written ({e}); pass --text") from e
    if info["source"] == "file":
        record = Path(info["file"]).with_suffix(".json")
        try:
            vlm_info = json.loads(record.read_text())
        except (OSError, ValueError):
            vlm_info = {}
        if vlm_info.get("source") == "vlm":
            return vlm_info
    return info


def describe(image: np.ndarray, boxes: list, source: dict, device) -> tuple[list[str], str]:
    """(one description per person, how they were made) with the training source; a box is a clipped pixel box
    or None (the whole photo). The model, if any, loads once for all persons."""
    from PIL import Image

    from .prep import emotic

    h, w = image.shape[:2]
    boxes = [box or (0, 0, w, h) for box in boxes]
    kind = source.get("source")
    if kind == "metadata":
        record = emotic.Record("", 0, "", "", (w, h), "unknown", ())
        return [emotic.metadata_description(emotic.Person(0, 0, tuple(map(float, box)), (), (np.nan,) * 3, "", ""),
                                            record, box, w, h) for box in boxes], \
            "metadata sentence (no gender or age known)"
    if kind == "vlm":
        from .prep import vlm

        model = vlm.VLM(source["model"], device, source["prompt"], source["max_new_tokens"])
        texts = model.describe([Image.fromarray(image)] * len(boxes), boxes)
        note = f"{source['model']}, {model.settings['dtype']}"
        if model.settings["dtype"] != source.get("dtype"):
            note += f"; the training descriptions were written in {source.get('dtype')}"
        return texts, note
    if kind == "captioner":
        captioner = emotic.Captioner(source["model"])
        crops = {}
        for i, (x1, y1, x2, y2) in enumerate(boxes):  # as mat2py.py hands crops to the captioner
            crop = Image.fromarray(np.ascontiguousarray(image[y1:y2, x1:x2]))
            crop.thumbnail((captioner.crop_side, captioner.crop_side), Image.BILINEAR)
            crops[str(i)] = crop
        texts = captioner.caption(crops)
        return [texts[str(i)] for i in range(len(boxes))], f"captioner {captioner.name}"
    raise PredictError(f"the model was trained on descriptions from {source.get('file', kind)!r}, which cannot be "
                       f"written for a new photo; pass --text \"...\"")


def run(loaded: Loaded, image: np.ndarray, box, text: str, image_encoder, text_encoder) -> dict:
    """Probabilities of the 26 categories (canonical order), above-threshold flags and VAD for one person."""
    top, vad = top_emotions(image, text, model=loaded.model, image_encoder=image_encoder,
                            text_encoder=text_encoder, box=box, k=len(CATEGORIES), with_vad=True)
    logits = dict(top)
    prob = expit(np.array([logits[c] for c in CATEGORIES]))
    return {"probabilities": prob, "above": prob >= loaded.thresholds, "vad": vad}
