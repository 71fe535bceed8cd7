"""The one training loop (AdamW, early stopping, best weights kept) and batch prediction (docs/training.md)."""

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

from . import batching
from . import device as devices
from .metrics import emotic_metrics, retrieval_metrics


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device) in one call."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class FeatureDataset(Dataset):
    """Equal-length arrays, indexed a whole batch at a time (one slice per key, no collate: fast on a CPU)."""

    def __init__(self, arrays: Mapping[str, object]):
        self.tensors: dict[str, torch.Tensor] = {}
        for k, v in arrays.items():
            if not isinstance(v, torch.Tensor):
                v = np.ascontiguousarray(np.asarray(v))
                v = torch.from_numpy(v if v.flags.writeable else v.copy())  # read-only memmaps: torch wants a copy
            self.tensors[k] = v.float() if v.is_floating_point() else (v.long() if v.dtype != torch.bool else v)
        lengths = {k: len(t) for k, t in self.tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"FeatureDataset: arrays differ in length: {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, idx) -> dict[str, torch.Tensor]:
        return {k: t[idx] for k, t in self.tensors.items()}


def batches(data, batch_size: int, shuffle: bool = False, seed: int = 0, device=None) -> DataLoader:
    """Dict batches over ``data``, shuffled by a generator seeded with ``seed`` only (docs/training.md)."""
    ds = data if isinstance(data, FeatureDataset) else FeatureDataset(data)
    sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(ds)
    return DataLoader(ds, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None,
                      pin_memory=device is not None and torch.device(device).type == "cuda")


def flickr_pairs(image_features, text_features, caption_image) -> dict[str, np.ndarray]:
    """Training pairs for ``FlickrJoint``: one row per caption with its image's features and the image id."""
    cap = np.asarray(caption_image, dtype=np.int64)  # FeatureDataset says so when the lengths differ
    return {"image": np.asarray(image_features)[cap], "text": np.asarray(text_features), "image_id": cap}


@dataclass
class FitResult:
    """What ``fit`` returns: one history row per epoch (for curves) and where the best model came from."""
    history: list[dict] = field(default_factory=list)
    monitor: str = "loss"
    mode: str = "min"
    best_epoch: int = 0
    best_score: float = float("nan")
    stopped_early: bool = False
    best_state: dict | None = field(default=None, repr=False)  # the best epoch's weights, on the host
    bad_epochs: int = 0

    def update(self, value: float, epoch: int, model: nn.Module, patience: int | None) -> bool:
        """Keep the weights if ``value`` is the best so far; True when ``patience`` epochs passed without."""
        if self.best_state is None or (value > self.best_score if self.mode == "max" else value < self.best_score):
            self.best_epoch, self.best_score, self.bad_epochs = epoch, value, 0
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            self.bad_epochs += 1
        self.stopped_early = patience is not None and self.bad_epochs >= patience
        return self.stopped_early


def _mean_loss(model: nn.Module, loader, device: torch.device, opt=None) -> dict[str, float]:
    """Mean of each loss part over the batches (one host copy at the end); with ``opt``, a step per batch."""
    sums, n = {}, 0
    for batch in loader:
        with devices.autocast(device):
            parts = model.loss({k: v.to(device, non_blocking=True) for k, v in batch.items()})
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            opt.step()
        size = len(next(iter(batch.values())))
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() * size
        n += size
    return {k: float(devices.to_numpy(v)) / n for k, v in sums.items()}


FEATURE_BATCH = 512  #: the eval batch of heads on features: a few MB at any size, so only the number of calls matters


def eval_batch(model: nn.Module, data, at_least: int = 1) -> int:
    """The eval batch: the device's fastest for image encoders in front (probed on a copy), else FEATURE_BATCH."""
    encs = getattr(model, "encoders", None)
    arrays = data.tensors if isinstance(data, FeatureDataset) else data
    shapes = {k: tuple(np.shape(arrays[k])[1:]) for k in (encs or {}) if k in arrays and np.ndim(arrays[k]) == 4}
    if not shapes:
        return max(at_least, FEATURE_BATCH)
    return min(batching.for_module(copy.deepcopy(encs[k]), shape).batch for k, shape in shapes.items())


@torch.no_grad()
def evaluate_loss(model: nn.Module, data, batch_size: int | None = None) -> dict[str, float]:
    """Mean of each loss part over ``data`` in eval mode (batches weighted by size)."""
    device = next(model.parameters()).device
    model.eval()
    return _mean_loss(model, batches(data, batch_size or eval_batch(model, data), device=device), device)


def fit(model: nn.Module, train_data, val_data=None, *, metric_fn: Callable | None = None, monitor: str | None = None,
        epochs: int = 30, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 64, patience: int | None = 5,
        seed: int = 0, device=None, progress: bool = True, desc: str | None = None) -> FitResult:
    """AdamW, early stopping on ``monitor``, the best weights restored; deterministic on a CPU (docs/training.md)."""
    device = devices.device(device)
    if val_data is None and metric_fn is not None:
        raise ValueError("fit: metric_fn given without val_data")
    # the metric picking the best epoch (the train loss without val_data); lower is better: losses, errors, ranks
    monitor = "train_loss" if val_data is None else (monitor or ("loss" if metric_fn is None else None))
    if monitor is None:
        raise ValueError("fit: say which metric selects the best epoch, e.g. monitor='mAP'")
    lower = any(s in monitor.lower() for s in ("loss", "mae", "rank", "error"))
    result = FitResult(monitor=monitor, mode="min" if lower else "max")
    seed_everything(seed)
    train_ds = train_data if isinstance(train_data, FeatureDataset) else FeatureDataset(train_data)
    model.to(device)
    params = model.param_groups(lr) if hasattr(model, "param_groups") else [p for p in model.parameters()
                                                                            if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    bar = tqdm(range(1, epochs + 1), desc=desc or type(model).__name__, disable=not progress, unit="epoch")
    val_batch = None if val_data is None else eval_batch(model, val_data, batch_size)  # once, not every epoch
    try:
        for epoch in bar:
            start = time.perf_counter()
            model.train()
            loader = batches(train_ds, batch_size, shuffle=True, seed=seed + epoch, device=device)
            row = {"epoch": epoch, **{f"train_{k}": v for k, v in _mean_loss(model, loader, device, opt).items()}}
            if not all(math.isfinite(v) for v in row.values()):
                raise FloatingPointError(f"fit: non-finite training loss at epoch {epoch}: {row}")
            if val_data is not None:
                model.eval()
                with torch.no_grad():
                    metrics = (metric_fn(model, val_data) if metric_fn is not None
                               else evaluate_loss(model, val_data, batch_size=val_batch))
                # scalars only: nested dicts (per-category APs) and counts (n, n_*) stay out of the history
                row.update({f"val_{k}": float(v) for k, v in metrics.items() if isinstance(
                    v, (int, float, np.floating, np.integer)) and k != "n" and not k.startswith("n_")})
                if monitor not in metrics:
                    raise KeyError(f"fit: monitor {monitor!r} not among the validation metrics {sorted(metrics)}")
            row.update(lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - start)
            result.history.append(row)
            shown = {k: f"{v:.4g}" for k, v in row.items() if k in ("train_loss", f"val_{monitor}")}
            bar.set_postfix(shown, refresh=False)
            if result.update(float((row if val_data is None else metrics)[monitor]), epoch, model, patience):
                break
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        bar.close()
    if result.best_state is not None:
        model.load_state_dict(result.best_state)
    model.eval()
    return result


@torch.no_grad()
def predict(model: nn.Module, data, batch_size: int | None = None, keys: Sequence[str] | None = None,
            carry: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Outputs over ``data`` in eval mode as numpy (floats as float32); ``carry`` copies batch entries along."""
    device, inputs = next(model.parameters()).device, getattr(model, "inputs", None)
    model.eval()
    chunks: dict[str, list] = {}
    for batch in batches(data, batch_size or eval_batch(model, data), device=device):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with devices.autocast(device):
            out = model(**{k: v for k, v in batch.items() if inputs is None or k in inputs})
        for k, v in out.items():
            if keys is None or k in keys:
                chunks.setdefault(k, []).append(devices.to_numpy(v.float() if v.is_floating_point() else v))
        for k in carry:
            chunks.setdefault(k, []).append(devices.to_numpy(batch[k]))
    return {k: np.concatenate(v) for k, v in chunks.items()}


def emotic_eval(model: nn.Module, data, batch_size: int | None = None) -> dict:
    """``emotic_metrics``, a flat ``vad_mae_mean`` and the loss, on features with ``cat`` and ``cont``."""
    batch_size = batch_size or eval_batch(model, data)  # one choice for both passes
    out = predict(model, data, batch_size, keys=("scores", "vad"), carry=("cat", "cont"))
    m = emotic_metrics(out["scores"], out["cat"], out["vad"], out["cont"])
    return {**m, "vad_mae_mean": m["vad_mae"]["mean"], "loss": evaluate_loss(model, data, batch_size)["loss"]}


def flickr_eval(model, data) -> dict:
    """Retrieval metrics on ``{"image": (M, Di), "text": (C, Dt), "caption_image": (C,)}``."""
    return retrieval_metrics(model.similarity(data["image"], data["text"]), data["caption_image"])
