"""Few-pixel attack by differential evolution (Su, Vargas & Sakurai 2019), batched across images.

The attack changes ``k`` pixels of a uint8 photo. A candidate is ``k x (x, y, r, g, b)``; the search is DE/rand/1
without crossover, as in the paper: ``child = a + F (b - c)`` from three other members of the image's population,
and a child replaces its parent when it scores at least as well. Untargeted, with early stop per image on success.

Why batched: ``torchattacks.OnePixel`` and ART's ``PixelAttack`` run one DE loop per image, so the model sees one
population (a few hundred images) at a time. Here every still-active image contributes its children to one queue and
the queue goes through the model in large batches, so the cost per query approaches the model's own batched
inference rate. Wasted queries are avoided: a solved image stops at once, and a child whose decoded (integer)
pixels equal a candidate already scored in its population reuses that score.

What is attacked is a :class:`PixelPipeline`: the **whole** path from raw pixels to the scores that decide success
(image encoder included), with the text features held clean:

- :class:`EmoticPixelPipeline`: scores = the 26 category probabilities. The body input is **re-derived at attack time
  from the 224x224 scene** by cropping the person's box (in 224 coordinates) and resizing it to 128 with
  ``torchvision.ops.roi_align``, so a changed pixel inside the box shows in the body crop too (DESIGN section 8).
  This differs slightly from the prepared ``body_arr`` (cropped from the full-resolution photo), so clean scores
  are computed with the same derivation and "correct before the attack" is judged on them.
- :class:`FlickrPixelPipeline`: scores = cosine similarities of the image to every test caption.
- :class:`ClassifierPixelPipeline`: any single-label classifier (used by the tests and the benchmark).

Success (DESIGN section 8) is the same rule for all of them: the top-scored entry stops being a "true" one (Emotic: a
true category; Flickr8k: one of the image's own captions; a classifier: its label). The search minimises the margin
``max(true scores) - max(other scores)``, which is negative exactly on success. The search may run in a cheaper
precision; every success is confirmed by an fp32 forward pass of the final uint8 image before it is reported.

Entry points: :func:`few_pixel_attack` (one budget) and :func:`success_vs_pixels` / :func:`compare_pipelines`
(the notebooks' curves: success rate against the number of pixels, queries per success, image-only vs image+text).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F_nn
from torchvision.ops import roi_align
from tqdm.auto import tqdm

__all__ = [
    "PixelPipeline",
    "ClassifierPixelPipeline",
    "EmoticPixelPipeline",
    "FlickrPixelPipeline",
    "AttackResult",
    "AttackReport",
    "few_pixel_attack",
    "apply_pixels",
    "score_images",
    "correct_top1",
    "success_vs_pixels",
    "compare_pipelines",
]

_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------------------------------------------
# Pipelines: raw uint8 pixels -> scores
# --------------------------------------------------------------------------------------------------------------
class PixelPipeline:
    """Base class: maps float images (B,3,H,W) in [0,1] plus their row ids to scores (B,S).

    ``rows`` index the pipeline's per-image side data (boxes, text features, ...). ``changed_xy`` (B,k,2), when
    given, lists the (x, y) pixels in which each image differs from its clean version; a pipeline may use it to
    reuse cached work (the Emotic body crop). Subclasses implement :meth:`scores` and :meth:`truth`.
    The modules given are put in eval mode, and the first one (the image encoder) in channels_last layout, which
    is several times faster for CNNs on CPU; both are in place and leave the outputs unchanged.
    """

    #: attributes holding the expensive modules, the ones ``compiled()`` swaps for compiled versions
    heavy: tuple[str, ...] = ("encoder",)

    def __init__(self, *modules: torch.nn.Module, channels_last: bool = True):
        self.modules = tuple(m for m in modules if isinstance(m, torch.nn.Module))
        self.channels_last = channels_last
        for m in self.modules:
            m.eval()
        if channels_last and modules and isinstance(modules[0], torch.nn.Module):
            # nn.Module.to is in place; the image encoder's convolutions are what benefit (DESIGN section 6)
            modules[0].to(memory_format=torch.channels_last)

    @property
    def device(self) -> torch.device:
        for m in self.modules:
            for p in m.parameters():
                return p.device
        return torch.device("cpu")

    @contextlib.contextmanager
    def compiled(self, batch_size: int):
        """Within the block, the heavy modules run through ``torch.compile`` (inductor, weights frozen, static
        shapes: batches are padded to ``batch_size``). Compiled once per pipeline and batch size, then reused."""
        cache = self.__dict__.setdefault("_compiled", {})
        saved = {name: getattr(self, name) for name in self.heavy}
        try:
            for name, module in saved.items():
                if (name, batch_size) not in cache:
                    cache[(name, batch_size)] = _FixedBatch(module, batch_size, self.channels_last)
                setattr(self, name, cache[(name, batch_size)])
            yield self
        finally:
            for name, module in saved.items():
                setattr(self, name, module)

    def prepare(self, clean: torch.Tensor, rows: torch.Tensor) -> None:
        """Called once with the clean images before a search; cache what does not depend on the perturbation."""

    def scores(self, x: torch.Tensor, rows: torch.Tensor, changed_xy: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def truth(self, rows: np.ndarray) -> np.ndarray:
        """Boolean (len(rows), S): which score entries count as correct for each row."""
        raise NotImplementedError


class _FixedBatch(torch.nn.Module):
    """A module compiled for one static batch shape, callable on any batch: pads to whole chunks, trims the output.

    Static shapes because dynamic-shape compilation of a CNN takes minutes on a 2-core CPU; freezing lets inductor
    fold batch norm and pre-pack the convolution weights, which is where the CPU speed-up comes from.
    """

    def __init__(self, module: torch.nn.Module, batch: int, channels_last: bool):
        super().__init__()
        self.batch, self.channels_last = batch, channels_last
        self.run = torch.compile(module, dynamic=False, options={"freezing": True})

    def forward(self, x):
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        outs = []
        for s in range(0, len(x), self.batch):
            part = x[s:s + self.batch]
            m = len(part)
            if m < self.batch:
                part = torch.cat([part, part[-1:].expand(self.batch - m, *part.shape[1:])])
            outs.append(self.run(part.contiguous(memory_format=fmt))[:m])
        return torch.cat(outs)


class ClassifierPixelPipeline(PixelPipeline):
    """A single-label classifier ``model(x) -> logits``; scores are softmax probabilities, truth is the label."""

    heavy = ("model",)

    def __init__(self, model: torch.nn.Module, labels: Sequence[int], n_classes: int, channels_last: bool = True):
        super().__init__(model, channels_last=channels_last)
        self.model, self.n_classes = model, int(n_classes)
        self.labels = np.asarray(labels, dtype=np.int64)

    def scores(self, x, rows, changed_xy=None):
        return torch.softmax(self.model(x).float(), dim=1)

    def truth(self, rows):
        rows = np.asarray(rows)
        out = np.zeros((len(rows), self.n_classes), dtype=bool)
        out[np.arange(len(rows)), self.labels[rows]] = True
        return out


def _category_logits(out) -> torch.Tensor:
    """Accept the usual head outputs: logits tensor, (logits, vad) tuple, or a dict with a category key."""
    if isinstance(out, Mapping):
        for key in ("cat", "categories", "logits", "cat_logits"):
            if key in out:
                return out[key]
        raise TypeError(f"utils/attacks.py: head returned a dict without a category key: {sorted(out)}")
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out[..., :26]


class EmoticPixelPipeline(PixelPipeline):
    """Photo (224x224) -> scene and body features -> Emotic head -> 26 category probabilities.

    ``head_model(body=, context=, text=)`` (the ``utils.models`` Emotic models) may return logits, ``(logits, vad)``
    or a dict with ``logits``; only the 26 category logits are used. Inputs the head does not read (its ``inputs``
    attribute, e.g. ``("context", "text")``) are not computed, so a scene-only model costs one encoder pass.
    ``text_features`` (rows x D) are held clean; pass ``None`` for an image-only head. ``boxes_224`` (rows x 4, x1 y1 x2 y2 in 224 coordinates) is
    ``EmoticSplit.boxes_224``. The body crop is re-derived from the (perturbed) 224 scene at attack time, see the
    module docstring. ``labels`` (rows x 26 multi-hot), if given, supplies :meth:`truth`.
    """

    def __init__(self, image_encoder, head_model, text_features, boxes_224, labels=None, body_size: int = 128,
                 channels_last: bool = True):
        super().__init__(image_encoder, head_model, channels_last=channels_last)
        self.encoder, self.head, self.body_size = image_encoder, head_model, body_size
        boxes = np.asarray(boxes_224, dtype=np.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"utils/attacks.py: boxes_224 must be (N, 4), got {boxes.shape}")
        if np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(boxes[:, 3] <= boxes[:, 1]):
            raise ValueError("utils/attacks.py: boxes_224 has a box with x2 <= x1 or y2 <= y1")
        self.boxes = torch.from_numpy(boxes)
        self.text = None if text_features is None else torch.as_tensor(np.asarray(text_features, np.float32))
        if self.text is not None and len(self.text) != len(boxes):
            raise ValueError(f"utils/attacks.py: {len(self.text)} text feature rows but {len(boxes)} boxes")
        self.labels = None if labels is None else np.asarray(labels) > 0.5
        # A changed pixel can reach the body crop only inside the box plus roi_align's one-pixel bilinear support
        self._reach = torch.stack([self.boxes[:, 0].floor() - 1, self.boxes[:, 1].floor() - 1,
                                   self.boxes[:, 2].ceil(), self.boxes[:, 3].ceil()], 1)
        self._clean_body: dict[int, torch.Tensor] = {}
        self.reads = tuple(getattr(head_model, "inputs", ("body", "context", "text")))

    def body_crops(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Crop each image's box and resize to ``body_size`` (bilinear, averaging when shrinking)."""
        boxes = self.boxes[rows.cpu()].to(x.device, x.dtype)
        idx = torch.arange(len(x), device=x.device, dtype=x.dtype)[:, None]
        crops = roi_align(x, torch.cat([idx, boxes], 1), output_size=self.body_size, aligned=True)
        return crops.contiguous(memory_format=torch.channels_last) if self.channels_last else crops

    def prepare(self, clean, rows):
        if "body" not in self.reads:
            return
        feats = self.encoder(self.body_crops(clean, rows)).float()
        self._clean_body.update({int(r): f for r, f in zip(rows.tolist(), feats)})

    def _touches_body(self, rows, changed_xy):
        reach = self._reach[rows.cpu()][:, None, :].to(changed_xy.device)  # (B,1,4)
        xs, ys = changed_xy[..., 0], changed_xy[..., 1]
        inside = (xs >= reach[..., 0]) & (ys >= reach[..., 1]) & (xs <= reach[..., 2]) & (ys <= reach[..., 3])
        return inside.any(1)

    def scores(self, x, rows, changed_xy=None):
        feats = {}
        if "context" in self.reads:
            feats["context"] = self.encoder(x).float()
        if "body" in self.reads:
            cached = [self._clean_body.get(int(r)) for r in rows.tolist()]
            if changed_xy is None or any(c is None for c in cached):
                feats["body"] = self.encoder(self.body_crops(x, rows)).float()
            else:  # only candidates with a pixel inside the box need a new body crop
                body = torch.stack(cached)
                need = self._touches_body(rows, changed_xy)
                if need.any():
                    body[need] = self.encoder(self.body_crops(x[need], rows[need])).float()
                feats["body"] = body
        if "text" in self.reads and self.text is not None:
            feats["text"] = self.text[rows.cpu()].to(x.device)
        return torch.sigmoid(_category_logits(self.head(**feats)).float())

    def truth(self, rows):
        if self.labels is None:
            raise ValueError("utils/attacks.py: EmoticPixelPipeline needs labels= (or pass truth= to the attack)")
        return self.labels[np.asarray(rows)]


class FlickrPixelPipeline(PixelPipeline):
    """Photo -> image features -> shared space; scores = similarities to every (clean) test caption.

    ``head_model`` is one of: an object with ``encode_image``/``encode_text`` (``utils.models.FlickrJoint``), scored
    by cosine similarity; an object with ``similarity(image_features, text_features) -> (M, C)``
    (``utils.models.FlickrBaseline``); or a pair ``(image_fn, text_fn)`` of callables, ``text_fn=None`` meaning the
    captions are already in the shared space. ``caption_image`` (C,) gives the image row of each caption, which
    defines :meth:`truth`. Caption-side work is done once, here.
    """

    def __init__(self, image_encoder, head_model, caption_features, caption_image, channels_last: bool = True):
        super().__init__(image_encoder, *(m for m in (head_model,) if isinstance(m, torch.nn.Module)),
                         channels_last=channels_last)
        self.encoder = image_encoder
        captions = np.asarray(caption_features, np.float32)
        self.caption_image = np.asarray(caption_image, dtype=np.int64)
        if len(self.caption_image) != len(captions):
            raise ValueError(f"utils/attacks.py: {len(captions)} caption features but "
                             f"{len(self.caption_image)} caption_image entries")
        if isinstance(head_model, (tuple, list)):
            image_fn, text_fn = head_model
        elif hasattr(head_model, "encode_image"):
            image_fn, text_fn = head_model.encode_image, head_model.encode_text
        elif hasattr(head_model, "similarity"):
            self._similarity = lambda f: torch.as_tensor(
                head_model.similarity(f.cpu().numpy(), captions), dtype=torch.float32, device=f.device)
            return
        else:
            raise TypeError("utils/attacks.py: head_model needs encode_image/encode_text, similarity(), "
                            "or must be a pair (image_fn, text_fn)")
        with torch.inference_mode():
            cap = torch.from_numpy(captions).to(self.device)
            cap = F_nn.normalize((cap if text_fn is None else text_fn(cap)).float(), dim=1)
        self._similarity = lambda f: F_nn.normalize(image_fn(f).float(), dim=1) @ cap.T

    def scores(self, x, rows, changed_xy=None):
        return self._similarity(self.encoder(x).float())

    def truth(self, rows):
        return self.caption_image[None, :] == np.asarray(rows)[:, None]


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------
@dataclass
class AttackResult:
    """One image. ``pixels`` holds the pixels that really differ from the original, as rows (x, y, r, g, b)."""

    row: int
    attacked: bool  # False when the clean image was already misclassified (not attacked)
    success: bool  # confirmed by an fp32 pass on ``adversarial``
    queries: int  # model evaluations spent on this image (search + confirmation)
    generations: int  # DE generations run (0 = only the initial population)
    pixels: np.ndarray
    scores_before: np.ndarray
    scores_after: np.ndarray
    truth: np.ndarray
    adversarial: np.ndarray  # (H, W, 3) uint8

    @property
    def rank_before(self) -> int:
        return _best_true_rank(self.scores_before, self.truth)

    @property
    def rank_after(self) -> int:
        return _best_true_rank(self.scores_after, self.truth)

    @property
    def true_score_drop(self) -> float:
        """Mean score of the true entries, before minus after (positive = the attack lowered them)."""
        return float(self.scores_before[self.truth].mean() - self.scores_after[self.truth].mean())


def _best_true_rank(scores: np.ndarray, truth: np.ndarray) -> int:
    """1-based rank of the best-scored true entry (1 = correct top prediction)."""
    return int((scores[~truth] > scores[truth].max()).sum()) + 1


@dataclass
class AttackReport:
    """All images of one run, its settings and its cost."""

    results: list[AttackResult]
    settings: dict
    seconds: float
    model_queries: int  # images that went through the model during the search (all images)
    search_seconds: float = 0.0  # the whole DE loop (mutation, pixels written, model, fitness, bookkeeping)
    model_seconds: float = 0.0  # of which inside the pipeline's forward pass

    def table(self) -> pd.DataFrame:
        """One row per image (no arrays), ready for the notebooks' tables and plots."""
        return pd.DataFrame([
            dict(row=r.row, attacked=r.attacked, success=r.success, queries=r.queries, generations=r.generations,
                 n_pixels=len(r.pixels), top_before=int(np.argmax(r.scores_before)),
                 top_after=int(np.argmax(r.scores_after)), rank_before=r.rank_before, rank_after=r.rank_after,
                 true_score_drop=r.true_score_drop)
            for r in self.results])

    def summary(self) -> dict:
        t = self.table()
        att = t[t.attacked]
        won = att[att.success]
        return {
            "pixels": self.settings["pixels"],
            "images": len(t),
            "attacked": len(att),  # correct before the attack
            "successes": len(won),
            "success_rate": float(len(won) / len(att)) if len(att) else float("nan"),
            "queries_per_success": float(won.queries.mean()) if len(won) else float("nan"),
            "median_queries_per_success": float(won.queries.median()) if len(won) else float("nan"),
            "mean_true_score_drop": float(att.true_score_drop.mean()) if len(att) else float("nan"),
            "mean_rank_shift": float((att.rank_after - att.rank_before).mean()) if len(att) else float("nan"),
            "seconds": self.seconds,
            "queries_per_second": self.model_queries / self.search_seconds if self.search_seconds else float("nan"),
        }

    @property
    def adversarial(self) -> np.ndarray:
        return np.stack([r.adversarial for r in self.results])


# --------------------------------------------------------------------------------------------------------------
# Scoring helpers
# --------------------------------------------------------------------------------------------------------------
def apply_pixels(images: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Copy of ``images`` (B,H,W,3) with candidate pixels (B,k,5 int: x, y, r, g, b) written in; later pixels win."""
    out = np.array(images, dtype=np.uint8, copy=True)
    b = np.arange(len(out))
    for j in range(candidates.shape[1]):
        out[b, candidates[:, j, 1], candidates[:, j, 0]] = candidates[:, j, 2:5]
    return out


def _to_input(images: np.ndarray, device, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0,1]; permuting NHWC gives the channels_last layout for free."""
    if not (images.flags.writeable and images.flags.c_contiguous):  # read-only memmap rows: torch wants a copy
        images = np.array(images)
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255)
    return x if channels_last else x.contiguous()


def _precision_ctx(precision: str, device: torch.device):
    if precision not in _PRECISIONS:
        raise ValueError(f"utils/attacks.py: precision must be one of {list(_PRECISIONS)}, got {precision!r}")
    dtype = _PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _margin(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fitness to minimise (max true - max other) and success (argmax is not a true entry)."""
    true_best = np.where(truth, scores, -np.inf).max(1)
    other_best = np.where(truth, -np.inf, scores).max(1)
    success = ~truth[np.arange(len(scores)), scores.argmax(1)]
    return true_best - other_best, success


def _score_chunks(pipeline, images, rows, batch_size, precision="float32", changed_xy=None, timer=None):
    """Yield (start, scores) for uint8 images (B,H,W,3) of ``rows``, one batch at a time (bounded memory).

    Batches are balanced (200 images at batch_size 128 go as 100 + 100, not 128 + 72): no small, slow tail batch.
    """
    dev = pipeline.device
    if len(images) > batch_size:
        batch_size = -(-len(images) // -(-len(images) // batch_size))
    with torch.inference_mode(), _precision_ctx(precision, dev):
        for s in range(0, len(images), batch_size):
            x = _to_input(images[s:s + batch_size], dev, pipeline.channels_last)
            r = torch.as_tensor(rows[s:s + batch_size], device=dev)
            cxy = None if changed_xy is None else torch.as_tensor(changed_xy[s:s + batch_size], device=dev)
            t0 = time.perf_counter()
            sc = pipeline.scores(x, r, cxy).float().cpu().numpy()
            if timer is not None:
                timer["model"] += time.perf_counter() - t0
            yield s, sc


def _score(pipeline, images, rows, batch_size, precision="float32") -> np.ndarray:
    """All scores of uint8 images (B,H,W,3) for ``rows``; fp32 unless told otherwise."""
    return np.concatenate([sc for _, sc in _score_chunks(pipeline, images, rows, batch_size, precision)])


def score_images(pipeline: PixelPipeline, images: np.ndarray, rows=None, batch_size: int = 128) -> np.ndarray:
    """fp32 scores of uint8 images through the whole pipeline, e.g. adversarial images after a defence."""
    images = np.asarray(images)
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    return _score(pipeline, images, rows, batch_size)


def correct_top1(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per image: is the top-scored entry a true one (the attack's success is its negation)."""
    return ~_margin(np.asarray(scores), np.asarray(truth, bool))[1]


# --------------------------------------------------------------------------------------------------------------
# The attack
# --------------------------------------------------------------------------------------------------------------
@dataclass
class _State:
    """Search state of one image; its own RNG makes the result independent of which images run beside it."""

    i: int  # position in the attacked batch
    rng: np.random.Generator
    pop: np.ndarray  # (P, D) float
    fit: np.ndarray | None = None  # (P,)
    keys: list | None = None  # decoded population, as bytes, for duplicate detection
    queries: int = 0
    generations: int = 0
    found: np.ndarray | None = None  # (k,5) int candidate confirmed as a success
    found_scores: np.ndarray | None = None  # its fp32 scores


def _decode(vec: np.ndarray, k: int) -> np.ndarray:
    """Continuous DE vectors (..., 5k) -> integer pixels (..., k, 5), clipped to the image and [0, 255]."""
    return np.rint(vec).astype(np.int64).reshape(*vec.shape[:-1], k, 5)


def _bounds(h: int, w: int, k: int) -> np.ndarray:
    return np.tile(np.array([w - 1, h - 1, 255, 255, 255], dtype=np.float64), k)


def _mutants(rng: np.random.Generator, pop: np.ndarray, f: float, upper: np.ndarray) -> np.ndarray:
    """DE/rand/1 without crossover: x_r1 + F (x_r2 - x_r3), r1, r2, r3 distinct and different from the parent."""
    p = len(pop)
    a = rng.integers(0, p - 1, p)
    b = rng.integers(0, p - 2, p)
    c = rng.integers(0, p - 3, p)
    b = b + (b >= a)  # three distinct draws from {0..p-2} by skipping the ones already taken
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    c = c + (c >= lo)
    c = c + (c >= hi)
    me = np.arange(p)
    a, b, c = (r + (r >= me) for r in (a, b, c))  # ... then skip the parent itself
    return np.clip(pop[a] + f * (pop[b] - pop[c]), 0.0, upper)


def few_pixel_attack(pipeline: PixelPipeline, images: np.ndarray, rows: Sequence[int] | None = None,
                     truth: np.ndarray | None = None, *, pixels: int = 1, popsize: int = 400,
                     generations: int = 100, F: float = 0.5, batch_size: int = 128, seed: int = 0,
                     precision: str = "float32", compile: bool = False, progress: bool = True) -> AttackReport:
    """Attack every image that the pipeline gets right; return one :class:`AttackResult` per image.

    ``images`` (N,H,W,3) uint8 are the clean photos of pipeline rows ``rows`` (default ``0..N-1``); ``truth``
    (N,S) bool defaults to ``pipeline.truth(rows)``. Budget per image: the initial population (``popsize``) plus
    ``generations`` generations of ``popsize`` children, fewer after an early stop or duplicate reuse.
    ``precision`` ("float32", "bfloat16", "float16") applies to the search only; a success found in a lower
    precision is re-checked by an fp32 pass on its uint8 image before the image stops (an fp32 search needs no
    second pass: it already scored that exact uint8 image in fp32).
    ``compile=True`` runs the search through ``torch.compile`` (see :meth:`PixelPipeline.compiled`): about 2x
    cheaper queries on this CPU, for a one-off compilation of a minute or more, so it pays only for long runs;
    its successes are re-checked in eager fp32.
    The image's RNG is seeded by ``(seed, row)``, so a batched run and a per-image run give the same result.
    """
    t_start = time.perf_counter()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"utils/attacks.py: images must be uint8 (N,H,W,3), got {images.dtype} {images.shape}")
    if pixels < 1 or popsize < 4 or generations < 0:
        raise ValueError("utils/attacks.py: need pixels >= 1, popsize >= 4 (DE/rand/1 draws 3 others), generations >= 0")
    n, h, w, _ = images.shape
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    truth = pipeline.truth(rows) if truth is None else np.asarray(truth)
    truth = truth if truth.dtype == bool else truth > 0.5  # multi-hot float labels are accepted too
    if len(rows) != n or len(truth) != n:
        raise ValueError(f"utils/attacks.py: {n} images but {len(rows)} rows and {len(truth)} truth rows")
    if not truth.any(1).all():
        raise ValueError("utils/attacks.py: every image needs at least one true score entry")
    k, upper = pixels, _bounds(h, w, pixels)
    settings = dict(pixels=k, popsize=popsize, generations=generations, F=F, batch_size=batch_size, seed=seed,
                    precision=precision, compile=compile, strategy="DE/rand/1, no crossover, child replaces parent if <=")

    # Clean scores in fp32 decide which images are attacked.
    before = _score(pipeline, images, rows, batch_size)
    _, wrong = _margin(before, truth)
    dev = pipeline.device
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            pipeline.prepare(_to_input(images[s:s + batch_size], dev, pipeline.channels_last),
                             torch.as_tensor(rows[s:s + batch_size], device=dev))

    states = []
    for i in np.flatnonzero(~wrong):
        rng = np.random.default_rng([seed, int(rows[i])])
        pop = np.empty((popsize, 5 * k))
        pop[:, 0::5] = rng.uniform(0, w - 1, (popsize, k))  # Su et al.: uniform positions,
        pop[:, 1::5] = rng.uniform(0, h - 1, (popsize, k))
        pop[:, 2::5] = rng.normal(128, 127, (popsize, k))  # colours ~ N(128, 127)
        pop[:, 3::5] = rng.normal(128, 127, (popsize, k))
        pop[:, 4::5] = rng.normal(128, 127, (popsize, k))
        states.append(_State(i=int(i), rng=rng, pop=np.clip(pop, 0, upper)))

    counters = {"queries": 0, "model": 0.0}
    # an eager fp32 search already is the fp32 pass on the final uint8 image; anything else gets re-checked
    exact = _PRECISIONS[precision] is None and not compile
    search_ctx = (lambda: pipeline.compiled(batch_size)) if compile else contextlib.nullcontext

    def evaluate(batch: list[tuple[_State, np.ndarray]]):
        """Score many candidates of many images in shared batches; duplicates within a population are reused.

        Returns per state (fitness, success); the scores of successful candidates are kept in ``hits``.
        """
        jobs, lookups = [], []
        for st, cand in batch:
            known = {} if st.keys is None else dict(zip(st.keys, st.fit))
            keys = [c.tobytes() for c in cand]
            slot = {}
            for j, key in enumerate(keys):
                if key not in known and key not in slot:
                    slot[key] = len(jobs)
                    jobs.append((st, cand[j]))
            lookups.append((st, keys, known, slot))
        fit = np.empty(len(jobs))
        succ = np.zeros(len(jobs), bool)
        hits = {}  # job -> scores, for successful jobs only (scores of everything would not fit for Flickr)
        if jobs:
            idx = np.array([st.i for st, _ in jobs])
            cands = np.stack([c for _, c in jobs])
            adv = apply_pixels(images[idx], cands)
            with search_ctx():
                for s0, sc in _score_chunks(pipeline, adv, rows[idx], batch_size, precision, cands[..., :2],
                                            counters):
                    f, ok = _margin(sc, truth[idx[s0:s0 + len(sc)]])
                    fit[s0:s0 + len(sc)], succ[s0:s0 + len(sc)] = f, ok
                    hits.update({s0 + j: sc[j] for j in np.flatnonzero(ok)})
            counters["queries"] += len(jobs)
            for st, _ in jobs:
                st.queries += 1
        out = []
        for st, keys, known, slot in lookups:
            f = np.array([fit[slot[kk]] if kk in slot else known[kk] for kk in keys])
            s = np.array([succ[slot[kk]] if kk in slot else False for kk in keys])
            sc = {j: hits[slot[kk]] for j, kk in enumerate(keys) if kk in slot and slot[kk] in hits}
            out.append((f, s, sc))
        return out

    def settle(batch: list[tuple[_State, np.ndarray, tuple]]):
        """Stop each image whose best successful candidate holds in fp32 (re-checked when the search is not fp32);
        an unconfirmed candidate gets its fp32 fitness and the search goes on."""
        todo = []
        for st, cand, (f, s, sc) in batch:
            if s.any():
                j = int(np.flatnonzero(s)[np.argmin(f[s])])
                if exact:
                    st.found, st.found_scores = cand[j], sc[j]
                else:
                    todo.append((st, j, cand[j], f))
        if not todo:
            return
        idx = np.array([st.i for st, *_ in todo])
        cands = np.stack([c for _, _, c, _ in todo])
        sc = _score(pipeline, apply_pixels(images[idx], cands), rows[idx], batch_size)
        fit32, ok = _margin(sc, truth[idx])
        for (st, j, c, f), fj, okj, scj in zip(todo, fit32, ok, sc):
            st.queries += 1
            if okj:
                st.found, st.found_scores = c, scj
            else:
                f[j] = fj

    # Generation 0: the initial population, scored once.
    t_search = time.perf_counter()
    decoded = [_decode(st.pop, k) for st in states]
    evals = evaluate(list(zip(states, decoded)))
    settle(list(zip(states, decoded, evals)))
    for st, d, (f, _, _) in zip(states, decoded, evals):
        st.fit, st.keys = f, [c.tobytes() for c in d]

    bar = tqdm(total=generations, desc=f"{k}-pixel attack", disable=not progress, leave=False)
    for _ in range(generations):
        active = [st for st in states if st.found is None]
        if not active:
            break
        children = [_mutants(st.rng, st.pop, F, upper) for st in active]
        decoded = [_decode(c, k) for c in children]
        evals = evaluate(list(zip(active, decoded)))
        settle(list(zip(active, decoded, evals)))
        for st, child, d, (f, _, _) in zip(active, children, decoded, evals):
            better = f <= st.fit  # the paper's selection: a child replaces its parent if it is at least as good
            st.pop[better], st.fit[better] = child[better], f[better]
            st.keys = [d[j].tobytes() if better[j] else st.keys[j] for j in range(popsize)]
            st.generations += 1
        bar.update(1)
        bar.set_postfix(active=len(active), solved=sum(st.found is not None for st in states))
    bar.close()
    search_seconds = time.perf_counter() - t_search

    # Final images: the confirmed success (its fp32 scores are known), else the population's best, scored in fp32.
    final = np.zeros((n, k, 5), np.int64)
    has = np.zeros(n, bool)
    after = before.copy()
    for st in states:
        final[st.i] = st.found if st.found is not None else _decode(st.pop[np.argmin(st.fit)], k)
        has[st.i] = True
        if st.found is not None:
            after[st.i] = st.found_scores
    adv = images.copy()
    adv[has] = apply_pixels(images[has], final[has])
    rescore = np.array([st.i for st in states if st.found is None], dtype=np.int64)
    if len(rescore):
        after[rescore] = _score(pipeline, adv[rescore], rows[rescore], batch_size)
    _, success = _margin(after, truth)
    by_i = {st.i: st for st in states}
    results = []
    for i in range(n):
        st = by_i.get(i)
        diff = np.argwhere((adv[i] != images[i]).any(-1))  # (y, x) of pixels that really changed
        px = np.array([[x, y, *adv[i][y, x]] for y, x in diff], dtype=np.int64).reshape(-1, 5)
        results.append(AttackResult(
            row=int(rows[i]), attacked=st is not None, success=bool(st is not None and success[i]),
            queries=st.queries if st else 0, generations=st.generations if st else 0, pixels=px,
            scores_before=before[i], scores_after=after[i], truth=truth[i], adversarial=adv[i]))
    return AttackReport(results=results, settings=settings, seconds=time.perf_counter() - t_start,
                        model_queries=counters["queries"], search_seconds=search_seconds,
                        model_seconds=counters["model"])


# --------------------------------------------------------------------------------------------------------------
# Curves for the notebooks
# --------------------------------------------------------------------------------------------------------------
def success_vs_pixels(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth=None,
                      pixel_counts: Sequence[int] = (1, 3, 5, 10), **attack_kw) -> tuple[pd.DataFrame, dict]:
    """Run the attack once per pixel budget; return a table (one row per budget) and the reports by budget.

    The table has success rate, queries per success, mean true-score drop and mean rank shift, the curves the
    robustness notebooks plot.
    """
    reports = {int(p): few_pixel_attack(pipeline, images, rows, truth, pixels=int(p), **attack_kw)
               for p in pixel_counts}
    return pd.DataFrame([r.summary() for r in reports.values()]), reports


def compare_pipelines(pipelines: Mapping[str, PixelPipeline], images: np.ndarray, rows=None, truth=None,
                      pixel_counts: Sequence[int] = (1, 3, 5, 10), **attack_kw) -> pd.DataFrame:
    """Same images, same budgets, several pipelines (baseline vs joint, image-only vs image+text).

    Each pipeline attacks only the images it gets right, so the ``attacked`` column can differ between them.
    """
    frames = []
    for name, pipe in pipelines.items():
        table, _ = success_vs_pixels(pipe, images, rows, truth, pixel_counts, **attack_kw)
        frames.append(table.assign(pipeline=name))
    return pd.concat(frames, ignore_index=True)
