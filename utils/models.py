"""The Emotic and Flickr8k models on encoder features, their losses, and ``WithEncoders``: docs/models.md."""

import math
from functools import partialmethod
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler
from torch import nn

from . import device as devices
from .labels import CATEGORIES
from .metrics import retrieval_metrics

FEATURE_DIMS = {"body": 1280, "context": 1280, "image": 1280, "text": 384}  # default encoders; else dims=Data.dims
N_CAT = len(CATEGORIES)
VAD_CENTRE, VAD_HALF = 5.5, 4.5  # heads predict VAD (1..10) in half-ranges around the centre: 0 means 5.5


def mlp(in_dim: int, hidden: int | None, out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """LayerNorm (features of any encoder on one footing, no train/eval statistics) -> [Linear -> GELU] -> Linear."""
    if not hidden:
        return nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim))


def _require(model: nn.Module, inputs: Mapping[str, torch.Tensor | None]) -> None:
    name, dims = type(model).__name__, model.dims
    if missing := [n for n, x in inputs.items() if x is None]:
        raise ValueError(f"{name}: missing input feature(s) {missing}; this model was built for {list(inputs)}")
    for n, x in inputs.items():
        if x.shape[-1] != dims[n]:
            raise ValueError(f"{name}: {n!r} features are {x.shape[-1]}-d but the model was built for {dims[n]}-d; "
                             "build it for your encoder with dims=Data.dims")


class LogitScale(nn.Module):
    """CLIP's learnable inverse temperature, clamped to [1, ``max_scale``] so the softmax never becomes a hard max."""

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        if not 0 < init_temperature <= 1 or max_scale < 1:  # a knob (init_temperature): say which, not "math domain"
            raise ValueError(f"LogitScale: need 0 < init_temperature <= 1 and max_scale >= 1, got {init_temperature}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log = math.log(max_scale)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(0.0, self.max_log).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self().detach())


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float,
             ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP loss) of L2-normalised (B, D) pairs; rows sharing an ``ids`` entry are no negatives."""
    logits = logit_scale * a @ b.T
    if ids is not None:  # True at (i, j), i != j, when rows share an id (two captions of one image)
        same = (ids[:, None] == ids[None, :]) & ~torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def max_violation(a: torch.Tensor, b: torch.Tensor, margin: float = 0.2,
                  ids: torch.Tensor | None = None) -> torch.Tensor:
    """VSE++ hinge on the hardest in-batch negative, both directions (Faghri et al., 2018), averaged over rows."""
    sim = a @ b.T
    pos = sim.diagonal()
    negatives = ~torch.eye(len(a), dtype=torch.bool, device=a.device) if ids is None else ids[:, None] != ids[None, :]
    cost_a = (margin + sim - pos[:, None]).clamp(min=0).masked_fill(~negatives, 0)  # anchor a_i vs negatives b_j
    cost_b = (margin + sim - pos[None, :]).clamp(min=0).masked_fill(~negatives, 0)  # anchor b_j vs negatives a_i
    return (cost_a.max(dim=1).values + cost_b.max(dim=0).values).mean()


def dynamic_weights(target: torch.Tensor, c: float = 1.2, absent: float = 1e-4) -> torch.Tensor:
    """Kosti et al.'s per-batch category weights ``1 / ln(c + n_i)``; ``absent`` without positives, as in their code."""
    counts = target.sum(dim=0)
    return torch.where(counts > 0, 1.0 / torch.log(c + counts), absent)


class EmoticLoss(nn.Module):
    """Category loss (``"bce"``, or Kosti et al.'s ``"dynamic"``) + ``vad_weight`` * smooth-L1 VAD loss."""

    def __init__(self, discrete: str = "bce", vad_weight: float = 1.0):
        super().__init__()
        if discrete not in ("bce", "dynamic"):
            raise ValueError(f"EmoticLoss: discrete must be 'bce' or 'dynamic', got {discrete!r}")
        self.discrete, self.vad_weight = discrete, float(vad_weight)

    def forward(self, logits, vad, cat, cont) -> dict[str, torch.Tensor]:
        cat_loss = (F.binary_cross_entropy_with_logits(logits, cat) if self.discrete == "bce"
                    else ((torch.sigmoid(logits) - cat) ** 2 * dynamic_weights(cat)).sum(dim=1).mean())
        vad_loss = F.smooth_l1_loss(vad / VAD_HALF, cont / VAD_HALF, beta=0.1)
        return {"loss": cat_loss + self.vad_weight * vad_loss, "cat_loss": cat_loss, "vad_loss": vad_loss}


def _heads_out(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return raw[:, :N_CAT], VAD_CENTRE + VAD_HALF * raw[:, N_CAT:]


class _EmoticModel(nn.Module):
    """What both Emotic models share (docs/models.md); each gives ``_raw(feats)`` and ``_extra_loss``."""

    def __init__(self, modalities: Sequence[str], inputs: Sequence[str], dims: Mapping[str, int] | None, fusion: str,
                 fusions: Sequence[str], criterion: EmoticLoss | None):
        super().__init__()
        self.modalities, self.inputs, self.fusion = tuple(modalities), tuple(inputs), fusion
        if fusion not in fusions:
            raise ValueError(f"{type(self).__name__}: fusion must be one of {tuple(fusions)}, got {fusion!r}")
        self.dims = {k: int({**FEATURE_DIMS, **(dims or {})}[k]) for k in self.inputs}
        self.criterion = criterion or EmoticLoss()  # no parameters: the state_dict keys stay those of the layers

    @torch.no_grad()
    def init_prior(self, cat, cont) -> "_EmoticModel":
        """Start the (26 + 3)-output layers at the training prior (log-odds, mean VAD): no epochs on base rates."""
        p = torch.as_tensor(np.asarray(cat, dtype=np.float64).mean(0)).clamp(1e-3, 1 - 1e-3)
        mean_vad = torch.as_tensor(np.asarray(cont, dtype=np.float64).mean(0))
        for layer in self.output_layers:
            layer.bias[:N_CAT] = torch.log(p / (1 - p)).to(layer.bias)
            layer.bias[N_CAT:] = ((mean_vad - VAD_CENTRE) / VAD_HALF).to(layer.bias)
        return self

    def forward(self, body=None, context=None, text=None) -> dict[str, torch.Tensor]:
        feats = {"body": body, "context": context, "text": text}
        _require(self, {n: feats[n] for n in self.inputs})
        raw, embedding, extra = self._raw(feats)
        logits, vad = _heads_out(raw)
        return {"logits": logits, "scores": torch.sigmoid(logits), "vad": vad, "embedding": embedding, **extra}

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self(**{k: batch.get(k) for k in self.inputs})
        return self._extra_loss(out, batch, self.criterion(out["logits"], out["vad"], batch["cat"], batch["cont"]))


class EmoticBaseline(_EmoticModel):
    """Separate embeddings, late fusion (``"mean"`` or ``"learned"`` weights); the loss also trains each branch."""

    def __init__(self, modalities: Sequence[str] = ("body", "context", "text"), dims: Mapping[str, int] | None = None,
                 hidden: int = 256, dropout: float = 0.3, fusion: str = "mean", criterion: EmoticLoss | None = None):
        super().__init__(modalities, modalities, dims, fusion, ("mean", "learned"), criterion)
        self.embed = nn.ModuleDict({m: nn.Sequential(mlp(self.dims[m], hidden, hidden, dropout), nn.GELU())
                                    for m in self.modalities})
        self.heads = nn.ModuleDict({m: nn.Linear(hidden, N_CAT + 3) for m in self.modalities})
        self.output_layers = tuple(self.heads.values())
        self.fusion_logits = nn.Parameter(torch.zeros(len(modalities), N_CAT + 3), requires_grad=fusion == "learned")

    def _raw(self, feats: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        embs = {m: self.embed[m](feats[m]) for m in self.modalities}
        raws = torch.stack([self.heads[m](embs[m]) for m in self.modalities])      # (M, N, 29)
        fused = (torch.softmax(self.fusion_logits, dim=0)[:, None, :] * raws).sum(dim=0)  # uniform for "mean"
        branches = {f"{k}/{m}": v for m, raw in zip(self.modalities, raws)
                    for k, v in zip(("logits", "vad"), _heads_out(raw))}
        return fused, torch.cat([embs[m] for m in self.modalities], dim=1), branches

    def _extra_loss(self, out: dict, batch: Mapping[str, torch.Tensor], parts: dict) -> dict[str, torch.Tensor]:
        if len(self.modalities) > 1:
            parts["branch_loss"] = torch.stack([self.criterion(out[f"logits/{m}"], out[f"vad/{m}"], batch["cat"],
                                                               batch["cont"])["loss"] for m in self.modalities]).mean()
            parts["loss"] = parts["loss"] + parts["branch_loss"]
        return parts


class EmoticJoint(_EmoticModel):
    """Image (body + scene) and text towers into one L2-normalised space, fused into the heads, aligned by InfoNCE."""

    def __init__(self, modalities: Sequence[str] = ("image", "text"), dims: Mapping[str, int] | None = None,
                 shared_dim: int = 256, hidden: int = 512, dropout: float = 0.3, fusion: str = "concat",
                 align_weight: float = 0.1, init_temperature: float = 0.07, criterion: EmoticLoss | None = None):
        image_inputs = ("body", "context") if "image" in modalities else ()
        inputs = image_inputs + (("text",) if "text" in modalities else ())
        super().__init__(modalities, inputs, dims, fusion, ("concat", "mean"), criterion)
        self.image_inputs, self.align_weight = image_inputs, float(align_weight)
        in_dims = {"image": sum(self.dims[k] for k in self.image_inputs), "text": self.dims.get("text")}
        self.towers = nn.ModuleDict({m: mlp(d, hidden, shared_dim, dropout) for m, d in in_dims.items()
                                     if m in self.modalities})
        self.head = mlp(shared_dim * (len(self.modalities) if fusion == "concat" else 1), hidden, N_CAT + 3, dropout)
        self.output_layers = (self.head[-1],)
        self.logit_scale = LogitScale(init_temperature) if len(self.modalities) == 2 else None  # nothing to align

    def _raw(self, feats: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        x = {m: torch.cat([feats[k] for k in self.image_inputs], 1) if m == "image" else feats[m] for m in self.towers}
        z = {m: F.normalize(self.towers[m](x[m]), dim=1) for m in self.towers}
        zs = [z[m] for m in self.modalities]
        fused = torch.cat(zs, dim=1) if self.fusion == "concat" else torch.stack(zs).mean(dim=0)
        return self.head(fused), fused, {f"z_{m}": v for m, v in z.items()}

    def _extra_loss(self, out: dict, batch: Mapping[str, torch.Tensor], parts: dict) -> dict[str, torch.Tensor]:
        if len(self.modalities) == 2 and self.align_weight:
            parts["align_loss"] = info_nce(out["z_image"], out["z_text"], self.logit_scale())
            parts["loss"] = parts["loss"] + self.align_weight * parts["align_loss"]
        return parts


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (a, b))
    return (a @ b.T).astype(np.float32)


def _inv_sqrt(cov: np.ndarray, reg: float) -> np.ndarray:
    """(C + reg * mean eigenvalue * I)^(-1/2) of a symmetric PSD matrix; the ridge keeps it well conditioned."""
    vals, vecs = np.linalg.eigh(cov)
    return (vecs / np.sqrt(np.maximum(vals, 0) + reg * max(vals.mean(), 1e-12))) @ vecs.T


class CanonicalCorrelation:
    """Regularised CCA in closed form, one SVD of the whitened cross-covariance (docs/models.md: why not sklearn's)."""

    def __init__(self, n_components: int = 64, reg: float = 1e-3):
        self.n_components, self.reg = n_components, reg

    def fit(self, x: np.ndarray, y: np.ndarray) -> "CanonicalCorrelation":
        self.x_mean, self.y_mean = x.mean(0), y.mean(0)
        xc, yc, n = x - self.x_mean, y - self.y_mean, len(x) - 1
        wx, wy = _inv_sqrt(xc.T @ xc / n, self.reg), _inv_sqrt(yc.T @ yc / n, self.reg)
        u, corr, vt = np.linalg.svd(wx @ (xc.T @ yc / n) @ wy, full_matrices=False)
        k = min(self.n_components, len(corr))
        self.x_weights, self.y_weights, self.correlations = wx @ u[:, :k], wy @ vt[:k].T, corr[:k]
        return self

    def transform(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x - self.x_mean) @ self.x_weights, (y - self.y_mean) @ self.y_weights


class FlickrBaseline:
    """Standardised features joined by a closed-form map (ridge either way, ``"both"``, ``"cca"``); cosine retrieval."""

    METHODS = ("image_to_text", "text_to_image", "both", "cca")

    def __init__(self, method: str = "both", alpha: float = 100.0, n_components: int = 64, reg: float = 0.1,
                 alpha_t2i: float | None = None):
        self.method, self.alpha, self.n_components, self.reg = method, alpha, n_components, reg
        self.alpha_t2i = alpha if alpha_t2i is None else alpha_t2i  # each map's own penalty (docs/models.md)

    def fit(self, image_features, text_features, caption_image) -> "FlickrBaseline":
        img, txt = (np.asarray(f, dtype=np.float64) for f in (image_features, text_features))
        self.img_scaler, self.txt_scaler = StandardScaler().fit(img), StandardScaler().fit(txt)
        x, y = self.img_scaler.transform(img)[np.asarray(caption_image, dtype=np.int64)], self.txt_scaler.transform(txt)
        if self.method in ("image_to_text", "both"):
            self.i2t = Ridge(alpha=self.alpha).fit(x, y)
        if self.method in ("text_to_image", "both"):
            self.t2i = Ridge(alpha=self.alpha_t2i).fit(y, x)
        if self.method == "cca":
            self.cca = CanonicalCorrelation(self.n_components, self.reg).fit(x, y)
        return self

    @classmethod
    def select(cls, train: Mapping, val: Mapping, method: str, grid: Sequence[float],
               **kwargs) -> tuple["FlickrBaseline", dict[float, float]]:
        """The best model by validation mean R@1 over ``grid`` (``alpha``, or CCA's ``reg``), and every score."""
        key, fitted, scores = "reg" if method == "cca" else "alpha", {}, {}
        for value in grid:
            m = fitted[value] = cls(method, **{**kwargs, key: value}).fit(train["image"], train["text"],
                                                                           train["caption_image"])
            scores[value] = retrieval_metrics(m.similarity(val["image"], val["text"]), val["caption_image"])["mean_R@1"]
        return fitted[max(scores, key=scores.get)], scores

    def _standardise(self, image_features, text_features) -> tuple[np.ndarray, np.ndarray]:
        return (self.img_scaler.transform(np.asarray(image_features, dtype=np.float64)),
                self.txt_scaler.transform(np.asarray(text_features, dtype=np.float64)))

    def embed(self, image_features, text_features) -> tuple[np.ndarray, np.ndarray]:
        """Both sides in the space where they are compared (for ``both``: the image-to-text map's space)."""
        x, y = self._standardise(image_features, text_features)
        if self.method in ("image_to_text", "both"):
            return self.i2t.predict(x), y
        if self.method == "text_to_image":
            return x, self.t2i.predict(y)
        return self.cca.transform(x, y)

    def similarity(self, image_features, text_features) -> np.ndarray:
        if self.method != "both":
            return _cosine(*self.embed(image_features, text_features))
        x, y = self._standardise(image_features, text_features)
        return (_cosine(self.i2t.predict(x), y) + _cosine(x, self.t2i.predict(y))) / 2


class FlickrJoint(nn.Module):
    """Two towers into one L2-normalised space trained by InfoNCE (+ VSE++ hinge); ``space``: docs/models.md."""

    def __init__(self, dims: Mapping[str, int] | None = None, towers: Sequence[str] = ("image", "text"),
                 space: str = "cross", shared_dim: int | None = None, hidden: int | None = None, dropout: float = 0.1,
                 init_temperature: float = 0.07, hard_negative_weight: float = 0.0, margin: float = 0.2):
        super().__init__()
        self.towers_used = tuple(t for t in ("image", "text") if t in towers)
        if space not in ("cross", "shared"):
            raise ValueError(f"FlickrJoint: space must be 'cross' or 'shared', got {space!r}")
        self.space = space if len(self.towers_used) == 2 else "cross"
        self.inputs = ("image", "text")
        self.dims = dims = {k: int({**FEATURE_DIMS, **(dims or {})}[k]) for k in self.inputs}
        out = ({"image": dims["text"], "text": dims["image"]} if self.space == "cross"  # into the other's space
               else dict.fromkeys(self.towers_used, shared_dim or dims["text"]))
        self.towers = nn.ModuleDict({t: mlp(dims[t], hidden, out[t], dropout) for t in self.towers_used})
        self.residual = {t: self.space == "shared" and dims[t] == out[t] for t in self.towers_used}
        for t in (t for t, res in self.residual.items() if res):  # the adapter starts as the identity map
            nn.init.zeros_(self.towers[t][-1].weight)
            nn.init.zeros_(self.towers[t][-1].bias)
        self.logit_scale = LogitScale(init_temperature)
        self.hard_negative_weight, self.margin = float(hard_negative_weight), margin

    def _embed(self, side: str, x: torch.Tensor) -> torch.Tensor:
        _require(self, {side: x})
        if side not in self.towers:                     # frozen side of a single-tower model
            return F.normalize(x, dim=1)
        y = self.towers[side](x)
        if self.space == "shared":
            return F.normalize(x + y if self.residual[side] else y, dim=1)
        if len(self.towers_used) == 1:
            return F.normalize(y, dim=1)
        halves = (y, x) if side == "image" else (x, y)  # [text-space half, image-space half], each unit norm
        return torch.cat([F.normalize(h, dim=1) for h in halves], dim=1) / math.sqrt(2)

    encode_image, encode_text = partialmethod(_embed, "image"), partialmethod(_embed, "text")

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        zi, zt, ids = self.encode_image(batch["image"]), self.encode_text(batch["text"]), batch.get("image_id")
        parts = {"contrastive_loss": info_nce(zi, zt, self.logit_scale(), ids)}
        parts["loss"] = parts["contrastive_loss"]
        if self.hard_negative_weight:
            parts["hard_negative_loss"] = max_violation(zi, zt, self.margin, ids)
            parts["loss"] = parts["loss"] + self.hard_negative_weight * parts["hard_negative_loss"]
        return parts

    @torch.no_grad()
    def embed(self, image_features, text_features, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        was_training, dev = self.training, next(self.parameters()).device
        self.eval()

        def run(fn, arr):
            arr = torch.as_tensor(np.asarray(arr), dtype=torch.float32)
            return np.concatenate([devices.to_numpy(fn(arr[i:i + batch_size].to(dev, non_blocking=True)))
                                   for i in range(0, len(arr), batch_size)] or [np.zeros((0, 1), np.float32)])
        try:
            return run(self.encode_image, image_features), run(self.encode_text, text_features)
        finally:
            self.train(was_training)

    def similarity(self, image_features, text_features, batch_size: int = 1024) -> np.ndarray:
        a, b = self.embed(image_features, text_features, batch_size)
        return (a @ b.T).astype(np.float32)


class WithEncoders(nn.Module):
    """Image encoders in front of a feature model, trained end to end; BatchNorm keeps its ImageNet statistics."""

    def __init__(self, model: nn.Module, encoders: Mapping[str, nn.Module], encoder_lr: float | None = None):
        super().__init__()
        self.model, self.encoders, self.encoder_lr = model, nn.ModuleDict(dict(encoders)), encoder_lr
        self.inputs = getattr(model, "inputs", tuple(encoders))
        self.encoders.requires_grad_(True)
        for enc in self.encoders.values():  # an ImageNet classifier kept for checks is never part of training
            if isinstance(getattr(enc, "head", None), nn.Module):
                enc.head.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.encoders.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def param_groups(self, lr: float) -> list[dict]:
        """The model's weights at ``lr``, the encoders' at ``encoder_lr``."""
        groups = [{"params": [p for p in part.parameters() if p.requires_grad], "lr": part_lr} for part, part_lr in
                  ((self.model, lr), (self.encoders, lr if self.encoder_lr is None else self.encoder_lr))]
        return [g for g in groups if g["params"]]

    def _encode(self, batch: Mapping[str, torch.Tensor]) -> dict:
        return {**batch, **{k: enc(batch[k]) for k, enc in self.encoders.items() if batch.get(k) is not None}}

    def forward(self, **inputs):
        return self.model(**self._encode(inputs))

    def loss(self, batch):
        return self.model.loss(self._encode(batch))
