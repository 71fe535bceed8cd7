"""What the attack attacks: raw uint8 pixels to the scores (logits) that decide success, the median-filter defence
inside it, the batched scoring all searches share and the report they return, as flat arrays (docs/attacks.md)."""

import json
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F_nn
from torchvision.ops import roi_align

from .. import batching
from ..poisoning import MedianFilter

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
GRAPHS = ("traced", "eager")  # how a search runs the image encoders (``utils.batching.traced``)


class PixelPipeline:
    """Maps float images (B,3,H,W) in [0,1] and their rows to scores (B,S) (docs/attacks.md, "Pipelines")."""
    labels: np.ndarray | None = None  # (rows, S) bool: the true score entries of each row, when known

    def __init__(self, *modules: torch.nn.Module, channels_last: bool = True):
        self.modules = tuple(m.eval() for m in modules if isinstance(m, torch.nn.Module))
        self.encoder, self.channels_last = modules[0] if modules else None, channels_last
        if channels_last and modules and isinstance(modules[0], torch.nn.Module):
            modules[0].to(memory_format=torch.channels_last)

    @property
    def device(self) -> torch.device:
        return next((p.device for m in self.modules for p in m.parameters()), torch.device("cpu"))

    def prepare(self, clean: torch.Tensor, rows: torch.Tensor) -> None:
        """Called once with the clean images before a search; cache what does not depend on the perturbation."""

    def truth(self, rows: np.ndarray) -> np.ndarray:
        """Boolean (len(rows), S): which score entries count as correct for each row."""
        if self.labels is None:
            raise ValueError(f"utils/attack/pipelines.py: {type(self).__name__} needs labels= (or pass truth=)")
        return self.labels[np.asarray(rows)]


class ClassifierPixelPipeline(PixelPipeline):
    """A single-label classifier ``model(x) -> logits``; scores are the logits, truth is the label."""

    def __init__(self, model: torch.nn.Module, labels: Sequence[int], n_classes: int, channels_last: bool = True):
        super().__init__(model, channels_last=channels_last)
        self.labels = np.eye(int(n_classes), dtype=bool)[np.asarray(labels, dtype=np.int64)]

    def scores(self, x, rows, changed_xy=None):
        return self.encoder(x).float()


class EmoticPixelPipeline(PixelPipeline):
    """Scene -> scene and body features -> Emotic head -> 26 category logits, text held clean. The body crop is
    re-derived from the perturbed scene (``boxes_224``), so a changed pixel inside the box reaches it."""

    def __init__(self, image_encoder, head_model, text_features, boxes_224, labels=None, body_size: int = 128,
                 channels_last: bool = True):
        super().__init__(image_encoder, head_model, channels_last=channels_last)
        self.head, self.body_size = head_model, body_size
        boxes = np.asarray(boxes_224, dtype=np.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or np.any(boxes[:, 2:] <= boxes[:, :2]):
            raise ValueError(f"utils/attack/pipelines.py: boxes_224 must be (N, 4) boxes with x1 < x2 and y1 < y2, "
                             f"got {boxes.tolist() if boxes.size < 20 else boxes.shape}")
        self.boxes = torch.from_numpy(boxes)
        self.text = None if text_features is None else torch.as_tensor(np.asarray(text_features, np.float32))
        self.labels = None if labels is None else np.asarray(labels) > 0.5
        # a changed pixel reaches the body crop only inside the box plus roi_align's one-pixel bilinear support
        self._reach = torch.cat([self.boxes[:, :2].floor() - 1, self.boxes[:, 2:].ceil()], 1)
        self._clean_body: dict[int, torch.Tensor] = {}
        self.reads = tuple(getattr(head_model, "inputs", ("body", "context", "text")))  # inputs worth computing

    def body_crops(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        boxes = self.boxes[rows.cpu()].to(x.device, x.dtype)
        idx = torch.arange(len(x), device=x.device, dtype=x.dtype)[:, None]
        crops = roi_align(x, torch.cat([idx, boxes], 1), output_size=self.body_size, aligned=True)
        return crops.contiguous(memory_format=torch.channels_last) if self.channels_last else crops

    def prepare(self, clean, rows):
        if "body" in self.reads:
            feats = self.encoder(self.body_crops(clean, rows)).float()
            self._clean_body.update({int(r): f for r, f in zip(rows.tolist(), feats)})

    def _body(self, x, rows, changed_xy):
        cached = [self._clean_body.get(int(r)) for r in rows.tolist()]
        if changed_xy is None or any(c is None for c in cached):
            return self.encoder(self.body_crops(x, rows)).float()
        body = torch.stack(cached)  # only candidates with a pixel inside the box need a new body crop
        reach = self._reach[rows.cpu()][:, None, :].to(changed_xy.device)  # (B,1,4)
        need = ((changed_xy >= reach[..., :2]) & (changed_xy <= reach[..., 2:])).all(-1).any(1)
        if need.any():
            body[need] = self.encoder(self.body_crops(x[need], rows[need])).float()
        return body

    def scores(self, x, rows, changed_xy=None):
        feats = {}
        if "context" in self.reads:
            feats["context"] = self.encoder(x).float()
        if "body" in self.reads:
            feats["body"] = self._body(x, rows, changed_xy)
        if "text" in self.reads and self.text is not None:
            feats["text"] = self.text[rows.cpu()].to(x.device)
        out = self.head(**feats)  # the project's heads return a dict, others logits or (logits, vad)
        out = out["logits"] if isinstance(out, Mapping) else out[0] if isinstance(out, (tuple, list)) else out
        return out[..., :26].float()


class FlickrPixelPipeline(PixelPipeline):
    """Photo -> image features -> similarities to every clean test caption (``caption_image``: each one's image)."""

    def __init__(self, image_encoder, head_model, caption_features, caption_image, channels_last: bool = True):
        super().__init__(image_encoder, head_model, channels_last=channels_last)
        captions = np.asarray(caption_features, np.float32)
        self.caption_image = np.asarray(caption_image, dtype=np.int64)
        if len(self.caption_image) != len(captions):
            raise ValueError(f"utils/attack/pipelines.py: {len(captions)} captions, {len(caption_image)} images")
        if not hasattr(head_model, "encode_image"):  # FlickrBaseline
            self._similarity = _baseline_similarity(head_model, captions, self.device)
            return
        with torch.no_grad():  # not inference_mode: the captions take part in the image side's backward pass
            cap = F_nn.normalize(head_model.encode_text(torch.from_numpy(captions).to(self.device)).float(), dim=1)
        self._similarity = lambda f: F_nn.normalize(head_model.encode_image(f).float(), dim=1) @ cap.T

    def scores(self, x, rows, changed_xy=None):
        return self._similarity(self.encoder(x).float())

    def truth(self, rows):
        return self.caption_image[None, :] == np.asarray(rows)[:, None]


def _baseline_similarity(model, captions: np.ndarray, device):
    """``FlickrBaseline.similarity`` in float64 torch, so gradients reach the pixels (docs/attacks.md)."""
    dim = len(model.img_scaler.mean_)
    probe = np.vstack([np.zeros(dim), np.eye(dim)])
    sides = [(lambda f: model.embed(f, captions[:1])[0], model.embed(probe[:1], captions)[1])]
    if model.method == "both":
        sides.append((model.img_scaler.transform, model.t2i.predict(model.txt_scaler.transform(captions))))
    terms = []
    for image_side, caption_side in sides:
        out = image_side(probe)  # row 0: the offset; row 1 + i: offset + the map of unit vector i
        cap = caption_side / np.maximum(np.linalg.norm(caption_side, axis=1, keepdims=True), 1e-12)
        terms.append([torch.as_tensor(a, dtype=torch.float64, device=device) for a in (out[1:] - out[0], out[0], cap)])

    def similarity(f: torch.Tensor) -> torch.Tensor:
        f = f.double()
        return torch.stack([F_nn.normalize(f @ w + c, dim=1, eps=1e-12) @ cap.T for w, c, cap in terms]).mean(0).float()
    return similarity


def apply_pixels(images: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Copy of ``images`` (B,H,W,3) with pixels (B,k,5: x, y, r, g, b) written in; later pixels win, x < 0 skipped."""
    out = np.array(images, dtype=np.uint8, copy=True)
    for c in np.asarray(candidates).swapaxes(0, 1):  # the j-th pixel of every image at once
        b = np.flatnonzero(c[:, 0] >= 0)
        out[b, c[b, 1], c[b, 0]] = c[b, 2:5]
    return out


def to_input(images: np.ndarray, device, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0,1]; permuting NHWC gives the channels_last layout for free."""
    if not (images.flags.writeable and images.flags.c_contiguous):  # read-only memmap rows: torch wants a copy
        images = np.array(images)
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255)
    return x if channels_last else x.contiguous()


def margin_and_success(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Margin to minimise (max true - max other) and success (the argmax is not a true entry)."""
    margin = np.where(truth, scores, -np.inf).max(1) - np.where(truth, -np.inf, scores).max(1)
    return margin, ~truth[np.arange(len(scores)), scores.argmax(1)]


def score_chunks(pipeline, images, rows, batch_size, precision="float32", changed_xy=None, graph="eager"):
    """(start, float32 scores, model seconds) per balanced batch of uint8 ``images`` or ``images(start, stop)``."""
    dev, dtype, n = pipeline.device, PRECISIONS[precision], len(rows)
    if n > batch_size:
        batch_size = -(-n // -(-n // batch_size))
    with (torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None),
          batching.traced(*pipeline.modules, enabled=graph == "traced")):
        for s in range(0, n, batch_size):
            x = (images(s, min(s + batch_size, n)) if callable(images)
                 else to_input(images[s:s + batch_size], dev, pipeline.channels_last))
            r = torch.as_tensor(rows[s:s + batch_size], device=dev)
            cxy = None if changed_xy is None else torch.as_tensor(changed_xy[s:s + batch_size], device=dev)
            t0 = time.perf_counter()
            yield s, pipeline.scores(x, r, cxy).float().cpu().numpy(), time.perf_counter() - t0


def score_images(pipeline: PixelPipeline, images: np.ndarray, rows=None, batch_size: int | None = None) -> np.ndarray:
    """fp32 scores of uint8 images through the whole pipeline (``batch_size=None``: the device's fastest)."""
    images = np.asarray(images)
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(images) == 0:
        return np.zeros((0, 0), np.float32)
    if batch_size is None:  # the device's fastest (``utils.batching``, cached; sets the layout)
        batch_size = batching.for_pipeline(pipeline, (3, *images.shape[1:3]), rows).batch
    return np.concatenate([sc for _, sc, _ in score_chunks(pipeline, images, rows, batch_size or 1)])


def prepare_attack(pipeline: PixelPipeline, images, rows, truth, pixels: int, batch_size: int | None, where: str,
                   precision: str = "float32", graph: str = "eager") -> "Scorer":
    """Validate the inputs (errors name ``where``), score the clean images in fp32 and let the pipeline cache."""
    started = time.perf_counter()
    if precision not in PRECISIONS or graph not in GRAPHS:
        raise ValueError(f"{where}: precision must be one of {list(PRECISIONS)} and graph one of {list(GRAPHS)}, "
                         f"got {precision!r} and {graph!r}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{where}: images must be uint8 (N,H,W,3), got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    if pixels < 1 or pixels > h * w:
        raise ValueError(f"{where}: pixels must be between 1 and {h * w} (the image's size), got {pixels}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"{where}: batch_size must be >= 1, got {batch_size}")
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if batch_size is None:
        batch_size = batching.for_pipeline(pipeline, (3, *images.shape[1:3]), rows if len(rows) else [0],
                                           PRECISIONS[precision], graph == "traced").batch
    truth = pipeline.truth(rows) if truth is None else np.asarray(truth)
    truth = truth if truth.dtype == bool else truth > 0.5  # multi-hot float labels are accepted too
    if len(rows) != n or len(truth) != n:
        raise ValueError(f"{where}: {n} images but {len(rows)} rows and {len(truth)} truth rows")
    if n and not truth.any(1).all():
        raise ValueError(f"{where}: every image needs at least one true score entry")
    before = score_images(pipeline, images, rows, batch_size) if n else np.zeros((0, truth.shape[1]), np.float32)
    attacked = ~margin_and_success(before, truth)[1] if n else np.zeros(0, bool)
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            pipeline.prepare(to_input(images[s:s + batch_size], pipeline.device, pipeline.channels_last),
                             torch.as_tensor(rows[s:s + batch_size], device=pipeline.device))
    return Scorer(pipeline, images, rows, truth, before, attacked, batch_size, precision, graph, started)


@dataclass
class Scorer:
    """One run's checked inputs and clean fp32 scores; batches in the search's precision, eager fp32 ``confirm``."""
    pipeline: PixelPipeline
    images: np.ndarray  # (N,H,W,3) uint8
    rows: np.ndarray  # (N,) pipeline rows
    truth: np.ndarray  # (N,S) bool
    before: np.ndarray  # (N,S) fp32 clean scores
    attacked: np.ndarray  # (N,) bool: correct before the attack
    batch_size: int  # as given, else the device's fastest
    precision: str = "float32"
    graph: str = "eager"  # "traced": the search's scores differ from eager fp32 by rounding, so successes are confirmed
    started: float = 0.0  # perf_counter at the start of the run
    ready: float = field(default_factory=time.perf_counter)  # ... and at the start of the search
    queries: int = 0  # images sent through the model by the search (confirmations not included)
    model_seconds: float = 0.0  # time inside the pipeline's forward pass during the search

    def search(self, idx: np.ndarray, cands: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """Margins and successes of candidates (M,k,5) on images ``idx`` (M,), and the successful ones' scores."""
        margin, success, hits = np.empty(len(idx)), np.zeros(len(idx), bool), {}
        dev, cl = self.pipeline.device, self.pipeline.channels_last
        build = lambda s, e: to_input(apply_pixels(self.images[idx[s:e]], cands[s:e]), dev, cl)  # noqa: E731
        for s0, sc, secs in score_chunks(self.pipeline, build, self.rows[idx], self.batch_size, self.precision,
                                         cands[..., :2], self.graph):
            f, ok = margin_and_success(sc, self.truth[idx[s0:s0 + len(sc)]])
            margin[s0:s0 + len(sc)], success[s0:s0 + len(sc)] = f, ok
            hits.update({s0 + j: sc[j] for j in np.flatnonzero(ok)})
            self.model_seconds += secs
        self.queries += len(idx)
        return margin, success, hits

    @property
    def exact(self) -> bool:
        """Whether ``search`` already scores as ``confirm`` does (eager fp32)."""
        return self.precision == "float32" and self.graph == "eager"

    def confirm(self, idx: np.ndarray, cands: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eager fp32 margins, successes and scores of candidates on their uint8 images."""
        sc = score_images(self.pipeline, apply_pixels(self.images[idx], cands), self.rows[idx], self.batch_size)
        return (*margin_and_success(sc, self.truth[idx]), sc)


class _StraightThrough(torch.autograd.Function):
    """Forward: ``fn(x)``; backward: the incoming gradient unchanged (as if ``fn`` were the identity)."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class MedianDefended(PixelPipeline):
    """``pipeline`` with a ``size`` x ``size`` median filter (:mod:`utils.poisoning`'s) on the photo inside
    :meth:`scores`. ``changed_xy`` is not passed on: the filter spreads a changed pixel to its neighbours."""

    def __init__(self, pipeline: PixelPipeline, size: int = 3):
        # no super().__init__: the wrapped pipeline has already set its modules' mode and layout
        self.inner, self.filter = pipeline, MedianFilter(int(size))  # which checks the size
        self.modules, self.truth = pipeline.modules, pipeline.truth  # the wrapped pipeline's truth

    @property
    def channels_last(self) -> bool:  # the wrapped pipeline's, also when a batch-size probe switches the layout
        return self.inner.channels_last

    @channels_last.setter
    def channels_last(self, value: bool) -> None:
        self.inner.channels_last = value

    def filtered(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return _StraightThrough.apply(x, lambda v: self.filter(v).contiguous(memory_format=fmt))

    def prepare(self, clean, rows):
        self.inner.prepare(self.filtered(clean), rows)

    def scores(self, x, rows, changed_xy=None):
        return self.inner.scores(self.filtered(x), rows)


COLUMNS = ("row", "attacked", "success", "queries", "generations", "n_pixels", "top_before", "top_after",
           "rank_before", "rank_after", "true_score_drop", "margin_before", "margin_after")
_PER_RESULT = {"rows": ("row", np.int64), "attacked": ("attacked", bool), "success": ("success", bool),
               "queries": ("queries", np.int64), "generations": ("generations", np.int64)}
FIELDS = (*_PER_RESULT, "pixels", "scores_before", "scores_after", "truth", "settings", "cost")


@dataclass
class AttackResult:
    """One image. ``pixels`` holds the pixels that really differ from the original, as rows (x, y, r, g, b)."""
    row: int
    attacked: bool  # False when the clean image was already misclassified (not attacked)
    success: bool  # confirmed by an fp32 pass on ``adversarial``
    queries: int  # model evaluations spent (search + confirmation); a success: the query that fooled it
    generations: int  # search iterations: DE generations, accepted sparse proposals or Sparse-PGD steps
    pixels: np.ndarray  # (<=k, 5) int64
    scores_before: np.ndarray
    scores_after: np.ndarray
    truth: np.ndarray
    adversarial: np.ndarray | None  # (H, W, 3) uint8; None when read back without the clean images

    @property
    def true_score_drop(self) -> float:
        return float(self.scores_before[self.truth].mean() - self.scores_after[self.truth].mean())

    def row_of_table(self) -> list:
        ranks = [int((s[~self.truth] > s[self.truth].max()).sum()) + 1 for s in (self.scores_before, self.scores_after)]
        margins = margin_and_success(np.stack([self.scores_before, self.scores_after]), np.stack([self.truth] * 2))[0]
        return [self.row, self.attacked, self.success, self.queries, self.generations, len(self.pixels),
                int(np.argmax(self.scores_before)), int(np.argmax(self.scores_after)), *ranks, self.true_score_drop,
                *map(float, margins)]


@dataclass
class AttackReport:
    """All images of one run, its settings (``method``, ``pixels`` and the search's budget) and its cost."""
    results: list[AttackResult]
    settings: dict
    seconds: float
    model_queries: int  # images that went through the model during the search (all images)
    search_seconds: float = 0.0  # the whole search loop
    model_seconds: float = 0.0  # of which inside the pipeline's forward pass
    members: dict = field(default_factory=dict)  # an ensemble's members' own reports (not saved)

    def table(self) -> pd.DataFrame:
        """One row per image (no arrays), plus a fresh ensemble's verdicts per member (kept in its settings)."""
        t = pd.DataFrame([r.row_of_table() for r in self.results], columns=list(COLUMNS))
        for col in ("member", "white_box_success", "black_box_ran", "black_box_success") if self.members else ():
            t[col] = self.settings[col]
        return t

    def summary(self) -> dict:
        t = self.table()
        att = t[t.attacked.astype(bool)]
        won, nan = att[att.success.astype(bool)], float("nan")
        return {"method": self.settings.get("method", "de"), "pixels": self.settings["pixels"], "images": len(t),
                "attacked": len(att), "successes": len(won),  # attacked: correct before the attack
                "success_rate": float(len(won) / len(att)) if len(att) else nan,
                "queries_per_success": float(won.queries.mean()) if len(won) else nan,
                "median_queries_per_success": float(won.queries.median()) if len(won) else nan,
                "mean_true_score_drop": float(att.true_score_drop.mean()) if len(att) else nan,
                "mean_rank_shift": float((att.rank_after - att.rank_before).mean()) if len(att) else nan,
                "seconds": self.seconds,
                "queries_per_second": self.model_queries / self.search_seconds if self.search_seconds else nan}

    @property
    def adversarial(self) -> np.ndarray:
        if any(r.adversarial is None for r in self.results):
            raise ValueError("utils/attack/pipelines.py: this report was read back without the clean images; "
                             "pass images= to from_arrays to rebuild the adversarial images")
        return np.stack([r.adversarial for r in self.results])


def assemble_report(scorer: Scorer, final: dict[int, np.ndarray], found: dict[int, np.ndarray],
                    queries: dict[int, int], iterations: dict[int, int], settings: dict) -> AttackReport:
    """The report from the attacked images' ``final`` pixels; those not ``found`` (confirmed) are rescored in fp32."""
    end, n, adv = time.perf_counter(), len(scorer.images), scorer.images.copy()
    idx = np.array(sorted(final), dtype=np.int64)
    if len(idx):  # one call for all attacked images
        adv[idx] = apply_pixels(scorer.images[idx], np.stack([final[i] for i in idx]))
    after = scorer.before.copy()
    for i, sc in found.items():
        after[i] = sc
    if len(rescore := np.array([i for i in idx if i not in found], dtype=np.int64)):
        after[rescore] = score_images(scorer.pipeline, adv[rescore], scorer.rows[rescore], scorer.batch_size)
    success = margin_and_success(after, scorer.truth)[1] if n else np.zeros(0, bool)
    results = []
    for i in range(n):
        diff = np.argwhere((adv[i] != scorer.images[i]).any(-1))  # (y, x) of pixels that really changed
        px = np.array([[x, y, *adv[i][y, x]] for y, x in diff], dtype=np.int64).reshape(-1, 5)
        results.append(AttackResult(
            row=int(scorer.rows[i]), attacked=i in final, success=bool(i in final and success[i]),
            queries=queries.get(i, 0), generations=iterations.get(i, 0), pixels=px, scores_before=scorer.before[i],
            scores_after=after[i], truth=scorer.truth[i], adversarial=adv[i]))
    return AttackReport(results=results, settings=settings, seconds=end - scorer.started, model_queries=scorer.queries,
                        search_seconds=end - scorer.ready, model_seconds=scorer.model_seconds)


def to_arrays(report: AttackReport, prefix: str) -> dict[str, np.ndarray]:
    """A report as plain arrays ``{prefix}_{field}`` (layout in docs/attacks.md); no pickle, no images."""
    res = report.results
    out = {name: np.array([getattr(r, attr) for r in res], dtype) for name, (attr, dtype) in _PER_RESULT.items()}
    out["pixels"] = np.full((len(res), int(report.settings["pixels"]), 5), -1, np.int64)
    for i, r in enumerate(res):
        out["pixels"][i, :len(r.pixels)] = r.pixels
    for name, empty in (("scores_before", np.float32), ("scores_after", np.float32), ("truth", bool)):
        out[name] = np.stack([getattr(r, name) for r in res]) if res else np.zeros((0, 0), empty)
    out["settings"] = np.array(json.dumps(report.settings, sort_keys=True))
    out["cost"] = np.array([report.seconds, report.model_queries, report.search_seconds, report.model_seconds], float)
    return {f"{prefix}_{name}": value for name, value in out.items()}


def from_arrays(arrays, prefix: str, images: np.ndarray | None = None) -> AttackReport:
    """Inverse of :func:`to_arrays` (a dict or an open ``np.load``); the clean ``images`` rebuild the adversarial."""
    if missing := [f"{prefix}_{f}" for f in FIELDS if f"{prefix}_{f}" not in arrays]:
        raise KeyError(f"utils/attack/pipelines.py: arrays lack {', '.join(missing)}")
    a = {f: np.asarray(arrays[f"{prefix}_{f}"]) for f in FIELDS}
    n = len(a["rows"])
    if images is not None:
        if len(images) != n:
            raise ValueError(f"utils/attack/pipelines.py: {len(images)} images for {n} results of {prefix!r}")
        adv = apply_pixels(images, a["pixels"])
    results = [AttackResult(**{attr: a[name][i].item() for name, (attr, _) in _PER_RESULT.items()},
                            **{name: a[name][i] for name in ("scores_before", "scores_after", "truth")},
                            pixels=px[px[:, 0] >= 0], adversarial=None if images is None else adv[i])
               for i, px in enumerate(a["pixels"])]
    seconds, model_queries, search_seconds, model_seconds = a["cost"].tolist()
    return AttackReport(results=results, settings=json.loads(str(a["settings"])), seconds=seconds,
                        model_queries=int(model_queries), search_seconds=search_seconds, model_seconds=model_seconds)
