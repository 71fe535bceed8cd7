"""The one training loop every notebook uses, plus batch prediction and a single-image inference helper.

Data are plain dicts of equal-length arrays (features and targets), e.g. for Emotic
``{"body": (N,1280), "context": (N,1280), "text": (N,384), "cat": (N,26), "cont": (N,3)}`` and for Flickr8k
training pairs ``flickr_pairs(image_features, caption_features, caption_image)``, or any torch ``Dataset`` whose
``__getitem__(i)`` returns one sample as a dict (``utils.data.EmoticImageDataset``, for end-to-end fine-tuning
with ``models.WithEncoders``). Models say which keys they read (``model.inputs``) and compute their own loss
(``model.loss(batch)``), so ``fit`` knows nothing about datasets.

Devices: the default is ``utils.device.device()`` (``$MMER_DEVICE``, else CUDA when present). Batches move with
non-blocking copies from pinned memory on a GPU, the forward pass runs under bf16 autocast there (``amp``), and
results come back through ``utils.device.to_numpy``.

Reproducibility: ``fit`` seeds Python, NumPy and torch, shuffles with its own seeded generator, and on CPU turns
on ``torch.use_deterministic_algorithms`` for its duration; build the model after ``seed_everything(seed)`` so the
initial weights are seeded too. Two runs with the same seed give identical weights and metrics.
"""
from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

from . import device as devices
from .labels import CATEGORIES
from .metrics import emotic_metrics, retrieval_metrics

__all__ = [
    "seed_everything", "FeatureDataset", "batches", "flickr_pairs", "FitResult", "fit",
    "evaluate_loss", "predict", "emotic_eval", "flickr_eval", "load_checkpoint", "top_emotions",
]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) in one call."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ------------------------------------------------------------------------------------------------------ data
class FeatureDataset(Dataset):
    """A dict of equal-length arrays as a torch Dataset; indexing with a list of rows returns a dict batch.

    Whole batches are sliced at once (one indexing op per key instead of one per row and a collate), which is
    what makes feature-level training fast on a CPU. Floats become float32, integers int64.
    """

    def __init__(self, arrays: Mapping[str, object]):
        if isinstance(arrays, FeatureDataset):
            arrays = arrays.tensors
        if not arrays:
            raise ValueError("FeatureDataset: no arrays given")
        self.tensors: dict[str, torch.Tensor] = {}
        for k, v in arrays.items():
            if not isinstance(v, torch.Tensor):
                v = np.ascontiguousarray(np.asarray(v))
                v = v if v.flags.writeable else v.copy()  # read-only memmaps: torch wants writable memory
            t = v if isinstance(v, torch.Tensor) else torch.from_numpy(v)
            self.tensors[k] = t.float() if t.is_floating_point() else (t.long() if t.dtype != torch.bool else t)
        lengths = {k: len(t) for k, t in self.tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"FeatureDataset: arrays differ in length: {lengths}")
        self.n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        return {k: t[idx] for k, t in self.tensors.items()}


def batches(data, batch_size: int, shuffle: bool = False, seed: int = 0, device=None,
            num_workers: int = 0) -> DataLoader:
    """A DataLoader over ``data`` yielding dict batches; shuffled with a seeded generator, so the order depends on
    ``seed`` only.

    A dict of arrays or a ``FeatureDataset`` is sliced a whole batch at a time (a ``BatchSampler`` hands it lists
    of rows); any other Dataset is read one item at a time and collated by torch's default collate (tensors
    stacked, strings listed), optionally in ``num_workers`` processes. Batches are pinned when ``device`` is a GPU.
    """
    ds = data if isinstance(data, Dataset) else FeatureDataset(data)
    generator = torch.Generator().manual_seed(seed)
    pin = device is not None and torch.device(device).type == "cuda"
    if isinstance(ds, FeatureDataset):
        sampler = RandomSampler(ds, generator=generator) if shuffle else SequentialSampler(ds)
        return DataLoader(ds, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None,
                          pin_memory=pin)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator if shuffle else None,
                      num_workers=num_workers, pin_memory=pin, persistent_workers=False)


def flickr_pairs(image_features, text_features, caption_image) -> dict[str, np.ndarray]:
    """Training pairs for ``FlickrJoint``: one row per caption with its image's features and the image id."""
    cap = np.asarray(caption_image, dtype=np.int64)
    if len(cap) != len(text_features):
        raise ValueError(f"flickr_pairs: {len(text_features)} caption features but {len(cap)} caption_image entries")
    return {"image": np.asarray(image_features)[cap], "text": np.asarray(text_features), "image_id": cap}


def _to(batch: Mapping[str, object], device) -> dict[str, object]:
    """Tensors of a batch onto ``device`` (non-blocking from pinned memory); strings and lists stay as they are."""
    return {k: devices.to_device(v, device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batch_size(batch: Mapping[str, object]) -> int:
    return len(next(v for v in batch.values() if isinstance(v, torch.Tensor)))


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------------------------------------- training
@dataclass
class FitResult:
    """What ``fit`` returns: one history row per epoch (for curves) and where the best model came from."""
    history: list[dict] = field(default_factory=list)
    monitor: str = "loss"
    mode: str = "min"
    best_epoch: int = 0
    best_score: float = float("nan")
    stopped_early: bool = False
    checkpoint: Path | None = None

    def frame(self):
        """The history as a pandas DataFrame, one row per epoch."""
        import pandas as pd
        return pd.DataFrame(self.history)


def _scalars(d: Mapping, prefix: str) -> dict[str, float]:
    """The scalar metrics of a metrics dict; nested dicts (per-category APs) and counts (``n``, ``n_*``) are left out."""
    return {f"{prefix}{k}": float(v) for k, v in d.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and k != "n" and not k.startswith("n_")}


def _default_mode(monitor: str) -> str:
    return "min" if any(s in monitor.lower() for s in ("loss", "mae", "rank", "error")) else "max"


def _loss_parts(loss_fn, model, batch) -> dict[str, torch.Tensor]:
    out = loss_fn(model, batch) if loss_fn is not None else model.loss(batch)
    return out if isinstance(out, Mapping) else {"loss": out}


def _amp(amp: bool | None, device: torch.device) -> bool:
    return device.type == "cuda" if amp is None else bool(amp)


@torch.no_grad()
def evaluate_loss(model: nn.Module, data, batch_size: int = 512, loss_fn=None, device=None,
                  amp: bool | None = None) -> dict[str, float]:
    """Mean of each loss part over ``data`` in eval mode (batches weighted by size)."""
    device = torch.device(device) if device is not None else _model_device(model)
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for batch in batches(data, batch_size, device=device):
        size = _batch_size(batch)
        with devices.autocast(device, enabled=_amp(amp, device)):
            parts = _loss_parts(loss_fn, model, _to(batch, device))
        for k, v in parts.items():  # summed on the device: one transfer at the end, not one per batch
            sums[k] = sums.get(k, 0.0) + v.detach().float() * size
        n += size
    return {k: float(devices.to_numpy(v)) / n for k, v in sums.items()}


def _save_state(model: nn.Module, path: Path) -> None:
    """Plain state_dict (tensors only: loadable with ``torch.load(weights_only=True)``), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


def load_checkpoint(model: nn.Module, path, device=None) -> nn.Module:
    """Load a checkpoint written by ``fit`` into ``model`` (no pickle: ``weights_only=True``)."""
    state = torch.load(path, map_location=device or "cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def fit(model: nn.Module, train_data, val_data=None, *, loss_fn: Callable | None = None,
        metric_fn: Callable | None = None, monitor: str | None = None, mode: str | None = None,
        epochs: int = 30, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 64,
        patience: int | None = 5, min_delta: float = 0.0, grad_clip: float | None = None, seed: int = 0,
        checkpoint_path=None, device=None, amp: bool | None = None, num_workers: int = 0,
        progress: bool = True, desc: str | None = None) -> FitResult:
    """Train ``model`` with AdamW, validate every epoch, stop early, keep the best weights.

    - ``train_data``: dict of arrays, a ``FeatureDataset``, or any Dataset of dict items (e.g.
      ``EmoticImageDataset`` with a ``WithEncoders`` model); shuffled each epoch.
    - ``loss_fn(model, batch)`` -> tensor or dict with ``"loss"``; default ``model.loss(batch)``.
    - ``metric_fn(model, val_data)`` -> dict of metrics (e.g. ``emotic_eval``, ``flickr_eval``); default: the
      validation loss on ``val_data`` (a dict of arrays like ``train_data``).
    - ``monitor``: the metric key that selects the best epoch (default ``"loss"`` without ``metric_fn``);
      ``mode`` ``"max"``/``"min"`` (default: ``"min"`` for losses, errors and ranks, else ``"max"``).
    - ``patience``: stop after this many epochs without an improvement larger than ``min_delta`` (None: never).
    - ``checkpoint_path``: where the best state_dict is saved (optional). The model ends with the best weights.
    - ``device``: default ``utils.device.device()``; ``amp``: bf16 autocast (default: on CUDA where supported,
      never on CPU); ``num_workers``: loader processes for item datasets.

    Returns a ``FitResult``; its ``history`` rows hold ``epoch``, ``train_loss`` (and the other loss parts as
    ``train_<part>``), every scalar validation metric as ``val_<key>``, ``lr`` and ``seconds``.
    """
    device = devices.resolve(device)
    use_amp = _amp(amp, device)
    if val_data is None and metric_fn is not None:
        raise ValueError("fit: metric_fn given without val_data")
    if val_data is None:
        monitor, mode = "train_loss", "min"  # nothing to validate on: keep the epoch with the lowest train loss
    monitor = monitor or ("loss" if metric_fn is None else None)
    if monitor is None:
        raise ValueError("fit: say which metric selects the best epoch, e.g. monitor='mAP'")
    mode = mode or _default_mode(monitor)
    if mode not in ("min", "max"):
        raise ValueError(f"fit: mode must be 'min' or 'max', got {mode!r}")
    sign = 1.0 if mode == "max" else -1.0
    checkpoint = Path(checkpoint_path) if checkpoint_path else None

    seed_everything(seed)
    train_ds = train_data if isinstance(train_data, Dataset) else FeatureDataset(train_data)
    model.to(device)
    # a model may ask for its own learning rates per part (WithEncoders: a smaller one for pretrained blocks)
    params = model.param_groups(lr) if hasattr(model, "param_groups") else [p for p in model.parameters()
                                                                            if p.requires_grad]
    # Fused AdamW updates all parameters in one kernel instead of ~10 per tensor: on a CPU it makes the optimiser
    # step about 6x cheaper, which for the small feature-level models here is a third of the training time.
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))
    result = FitResult(monitor=monitor, mode=mode, checkpoint=checkpoint)
    best_state, best, bad_epochs = None, -math.inf, 0
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    bar = tqdm(range(1, epochs + 1), desc=desc or type(model).__name__, disable=not progress, unit="epoch")
    try:
        for epoch in bar:
            start = time.perf_counter()
            model.train()
            sums, n = {}, 0
            for batch in batches(train_ds, batch_size, shuffle=True, seed=seed + epoch, device=device,
                                 num_workers=num_workers):
                with devices.autocast(device, enabled=use_amp):
                    parts = _loss_parts(loss_fn, model, _to(batch, device))
                opt.zero_grad(set_to_none=True)
                parts["loss"].backward()
                if grad_clip:
                    nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                size = _batch_size(batch)
                for k, v in parts.items():  # kept on the device: no host sync per batch
                    sums[k] = sums.get(k, 0.0) + v.detach().float() * size
                n += size
            row = {"epoch": epoch, **{f"train_{k}": float(devices.to_numpy(v)) / n for k, v in sums.items()}}
            if not all(math.isfinite(v) for v in row.values()):
                raise FloatingPointError(f"fit: non-finite training loss at epoch {epoch}: {row}")
            if val_data is not None:
                model.eval()
                with torch.no_grad():
                    metrics = (metric_fn(model, val_data) if metric_fn is not None
                               else evaluate_loss(model, val_data, batch_size=max(batch_size, 512), loss_fn=loss_fn,
                                                  device=device, amp=use_amp))
                row.update(_scalars(metrics, "val_"))
                if monitor not in metrics:
                    raise KeyError(f"fit: monitor {monitor!r} not among the validation metrics {sorted(metrics)}")
                score = sign * float(metrics[monitor])
            else:
                score = -row["train_loss"]
            row.update(lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - start)
            result.history.append(row)
            if score > best + min_delta or best_state is None:
                best, bad_epochs = score, 0
                result.best_epoch, result.best_score = epoch, sign * score
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                if checkpoint is not None:
                    _save_state(model, checkpoint)
            else:
                bad_epochs += 1
            shown = {k: v for k, v in row.items() if k in ("train_loss", f"val_{monitor}")}
            bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
            if patience is not None and bad_epochs >= patience:
                result.stopped_early = True
                break
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


# ----------------------------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict(model: nn.Module, data, batch_size: int = 512, keys: Sequence[str] | None = None,
            device=None, amp: bool | None = None, carry: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Run ``model`` in eval mode over ``data`` (dict of arrays or a Dataset of dict items) and concatenate its
    outputs as float32 / int numpy arrays.

    Only the keys the model reads (``model.inputs``) are passed to it; ``keys`` selects which outputs to keep
    (default all), e.g. ``("scores", "vad")`` for Emotic. ``carry`` copies batch entries into the result as well
    (e.g. ``("cat", "cont")`` to get the labels of an item dataset in the same order). Flickr models score images
    against captions (different row counts): use their ``similarity`` / ``embed`` methods instead.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    inputs = getattr(model, "inputs", None)
    model.eval()
    chunks: dict[str, list] = {}
    for batch in batches(data, batch_size, device=device):
        batch = _to(batch, device)
        feed = {k: v for k, v in batch.items() if inputs is None or k in inputs}
        with devices.autocast(device, enabled=_amp(amp, device)):
            out = model(**feed)
        for k, v in out.items():
            if keys is None or k in keys:
                chunks.setdefault(k, []).append(devices.to_numpy(v.float() if v.is_floating_point() else v))
        for k in carry:
            chunks.setdefault(k, []).append(devices.to_numpy(batch[k]))
    return {k: np.concatenate(v) for k, v in chunks.items()}


def emotic_eval(model: nn.Module, data, batch_size: int = 512) -> dict:
    """Emotic validation metrics of ``model`` on ``data`` (dict with the feature keys, ``cat`` and ``cont``, or a
    Dataset of such items): everything ``emotic_metrics`` reports, plus the loss and a flat ``vad_mae_mean``."""
    labelled = isinstance(data, Mapping)
    out = predict(model, data, batch_size, keys=("scores", "vad"), carry=() if labelled else ("cat", "cont"))
    cat, cont = (data["cat"], data["cont"]) if labelled else (out["cat"], out["cont"])
    metrics = emotic_metrics(out["scores"], cat, out["vad"], cont)
    metrics["vad_mae_mean"] = metrics["vad_mae"]["mean"]
    if hasattr(model, "loss"):
        metrics["loss"] = evaluate_loss(model, data, batch_size)["loss"]
    return metrics


def flickr_eval(model, data) -> dict:
    """Retrieval metrics of a Flickr model on ``data = {"image": (M, Di), "text": (C, Dt), "caption_image": (C,)}``."""
    return retrieval_metrics(model.similarity(data["image"], data["text"]), data["caption_image"])


# ------------------------------------------------------------------------------------------ single-image use
def _crop_body(image: np.ndarray, box) -> np.ndarray:
    """The person crop exactly as ``mat2py.py`` makes it: box clipped and outer-rounded, squashed to 128 x 128."""
    from .prep.emotic import pixel_box
    from .prep.io import resize_rgb
    if box is None:
        return resize_rgb(image, 128)
    h, w = image.shape[:2]
    clipped = pixel_box([float(v) for v in box], w, h)
    if clipped is None:
        raise ValueError(f"top_emotions: box {tuple(box)} has no area inside the {w}x{h} image")
    x1, y1, x2, y2 = clipped
    return resize_rgb(image[y1:y2, x1:x2], 128)


@torch.no_grad()
def top_emotions(image, description: str | None = None, *, model: nn.Module, image_encoder=None, text_encoder=None,
                 box=None, k: int = 5, with_vad: bool = False):
    """The ``k`` highest-scored Emotic categories for one person, as ``[(category, score), ...]``.

    ``image`` is a file path or an (H, W, 3) uint8 RGB array; ``box`` (x1, y1, x2, y2, pixels) marks the person
    (default: the whole image is the person). ``description`` is needed when the model reads text. The encoders
    default to the offline ones from ``utils.encoders`` (pass them in to avoid reloading on every call); they must
    be the encoders the model was trained on. Features are computed exactly as for the training data (scene
    squashed to 224, crop to 128). With ``with_vad=True`` returns ``(top, {"Valence": v, ...})``.
    """
    from . import encoders
    from .labels import CONTINUOUS
    from .prep.io import load_rgb, resize_rgb

    if isinstance(image, (str, os.PathLike)):
        image = load_rgb(image)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"top_emotions: expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    needs = set(getattr(model, "inputs", ("body", "context", "text")))
    feats = {}
    if needs & {"body", "context"}:
        image_encoder = image_encoder or encoders.load_image_encoder()
        if "body" in needs:
            feats["body"] = encoders.image_features(image_encoder, _crop_body(image, box)[None], cache=False)
        if "context" in needs:
            feats["context"] = encoders.image_features(image_encoder, resize_rgb(image, 224)[None], cache=False)
    if "text" in needs:
        if not description:
            raise ValueError("top_emotions: this model reads a text description; pass description=...")
        text_encoder = text_encoder or encoders.load_text_encoder()
        feats["text"] = encoders.text_features(text_encoder, [description], cache=False)
    out = predict(model, feats, keys=("scores", "vad"))
    scores = out["scores"][0]
    order = np.argsort(-scores, kind="stable")[:k]
    top = [(CATEGORIES[i], float(scores[i])) for i in order]
    if with_vad:
        return top, dict(zip(CONTINUOUS, map(float, out["vad"][0])))
    return top
