"""The notebooks' figures: ``matplotlib.figure.Figure`` objects (no pyplot state leaks), saved as PNG given ``path``."""

import textwrap
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import precision_recall_curve

from . import store
from .labels import CATEGORIES

_HIT, _MISS = "#2a7d2a", "#b03030"   # right / wrong answers


def _figure(width: float, height: float, *grid, **kw):
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(*grid, **kw)


def _finish(fig: Figure, path=None, title=None) -> Figure:
    if title:
        fig.suptitle(title)
    if path is not None:
        store.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    return fig


def _mark(hit) -> tuple[str, str]:
    return ("✓", _HIT) if hit else ("✗", _MISS)


def training_curves(history, metrics: Sequence[str], title=None, path=None) -> Figure:
    """Loss beside validation metrics per epoch (percent ones, which share one axis)."""
    df = pd.DataFrame(history)
    if df.empty:
        raise ValueError("training_curves: empty history")
    fig, (ax_loss, ax_metric) = _figure(10, 3.6, 1, 2)
    for col, style in [(c, s) for c, s in (("train_loss", "-"), ("val_loss", "--")) if c in df]:
        ax_loss.plot(df["epoch"], df[col], style, marker="o", ms=3, label=col.replace("_", " "))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    for m in [m for m in metrics if f"val_{m}" in df]:
        ax_metric.plot(df["epoch"], df[f"val_{m}"], marker="o", ms=3, label=m)
    ax_metric.set(xlabel="epoch", title="validation")
    if metrics:
        ax_metric.legend()
    return _finish(fig, path, title)


def ap_bars(ap_per_category: Mapping, prevalence=None, title="Average precision per category", path=None) -> Figure:
    """AP per category (%), best on top, NaN skipped; ``prevalence``, a random scorer's AP, as a tick mark."""
    names, ap = np.array(list(ap_per_category)), np.array(list(ap_per_category.values()), dtype=float)
    keep = np.flatnonzero(~np.isnan(ap))
    keep = keep[np.argsort(ap[keep])]                 # ascending: barh draws bottom-up, so the best lands on top
    fig, ax = _figure(7, 0.26 * len(keep) + 1.2)
    y = np.arange(len(keep))
    ax.barh(y, ap[keep], color="#4C72B0", label="AP")
    if prevalence is not None:
        ax.scatter(100 * np.asarray(prevalence, dtype=float)[keep], y, marker="|", s=150, color="#C44E52", zorder=3,
                   label="chance (prevalence)")
    ax.set_yticks(y, names[keep], fontsize=8)
    ax.set(xlabel="average precision (%)", title=title, xlim=(0, 100))
    ax.legend(loc="lower right", fontsize=8)
    return _finish(fig, path)


def pr_curves(scores, labels, which: int = 4, title="Precision-recall curves", path=None) -> Figure:
    """Precision-recall curves of the ``which`` most frequent categories (the most reliable ones), and prevalence."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    fig, ax = _figure(5.5, 4.5)
    for i in [i for i in np.argsort(-labels.sum(0), kind="stable")[:which] if labels[:, i].sum() != 0]:
        p, r, _ = precision_recall_curve(labels[:, i], scores[:, i])
        line, = ax.step(r, p, where="post", label=CATEGORIES[i])
        ax.axhline(labels[:, i].mean(), ls="--", lw=0.8, color=line.get_color())
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize=8)
    return _finish(fig, path)


def dominant_labels(labels) -> np.ndarray:
    """One emotion per person, to colour plots: their true category that is rarest in the split (most specific)."""
    labels = np.asarray(labels) > 0
    key = np.where(labels, -labels.sum(0, keepdims=True).astype(float), -np.inf)
    return np.where(labels.any(1), np.array(CATEGORIES)[key.argmax(1)], "none")


def embedding_projection(embedding, color_by, method: str = "pca", seed: int = 0, title=None, path=None) -> Figure:
    """2-D PCA or t-SNE map coloured by a label per row (8 most frequent; at most 2,000 rows: t-SNE stays quick)."""
    emb, color_by = np.asarray(embedding, dtype=np.float64), np.asarray(color_by).astype(str)
    if len(emb) != len(color_by):
        raise ValueError(f"embedding_projection: {len(emb)} rows but {len(color_by)} labels")
    if len(emb) > 2000:
        keep = np.sort(np.random.default_rng(seed).choice(len(emb), 2000, replace=False))
        emb, color_by = emb[keep], color_by[keep]
    if method not in ("pca", "tsne"):
        raise ValueError(f"embedding_projection: method must be 'pca' or 'tsne', got {method!r}")
    xy = (PCA(2, random_state=seed) if method == "pca" else TSNE(
        2, perplexity=min(30.0, max(2.0, (len(emb) - 1) / 3)), init="pca", random_state=seed)).fit_transform(emb)
    names, counts = np.unique(color_by, return_counts=True)
    shown = list(names[np.argsort(-counts, kind="stable")][:8])
    fig, ax = _figure(6.5, 5)
    if (other := ~np.isin(color_by, shown)).any():
        ax.scatter(*xy[other].T, s=6, color="0.8", label="other")
    for name, colour in zip(shown, sns.color_palette("tab10", len(shown))):
        ax.scatter(*xy[color_by == name].T, s=8, color=colour, label=name)
    ax.set(title=title or f"{method.upper()} of the embedding", xticks=[], yticks=[])
    ax.legend(fontsize=7, markerscale=2, loc="best")
    return _finish(fig, path)


def shared_space(z_image, z_text, method: str = "pca", seed: int = 0, title=None, path=None) -> Figure:
    """Image and text embeddings in one projection: a well-aligned space mixes the two colours."""
    return embedding_projection(np.concatenate([np.asarray(z_image), np.asarray(z_text)]),
                                np.repeat(["image", "text"], [len(z_image), len(z_text)]), method, seed, title, path)


def retrieval_examples(images, captions, similarity, caption_image, queries, k=5, title=None, path=None) -> Figure:
    """For each query image: the image, then its top-``k`` captions, right ones in green with a check mark."""
    sim, caption_image = np.asarray(similarity), np.asarray(caption_image)
    fig, axes = _figure(11, 2.3 * len(queries), len(queries), 2, width_ratios=[1, 3])
    for (ax_img, ax_txt), q in zip(np.atleast_2d(axes), queries):
        ax_img.imshow(np.asarray(images[q]))
        ax_img.set_axis_off()
        ax_img.set_title(f"image {q}", fontsize=9)
        ax_txt.set_axis_off()
        for rank, c in enumerate(np.argsort(-sim[q], kind="stable")[:k]):
            mark, colour = _mark(caption_image[c] == q)
            ax_txt.text(0, 1 - (rank + 0.5) / k, f"{mark} {rank + 1}. {textwrap.shorten(str(captions[c]), 95)}",
                        va="center", fontsize=9, color=colour, transform=ax_txt.transAxes)
    return _finish(fig, path, title)


def text_to_image_examples(images, captions, similarity, caption_image, queries, k=4, title=None, path=None) -> Figure:
    """For each query caption: its text, then its top-``k`` images, the caption's own image framed in green."""
    sim, caption_image = np.asarray(similarity), np.asarray(caption_image)
    fig, axes = _figure(2.2 * k + 3.2, 2.3 * len(queries), len(queries), k + 1, width_ratios=[1.5] + [1] * k)
    for row, q in zip(np.atleast_2d(axes), queries):
        row[0].set_axis_off()
        row[0].text(0, 0.5, textwrap.fill(str(captions[q]), 30), va="center", fontsize=9, transform=row[0].transAxes)
        for rank, m in enumerate(np.argsort(-sim[:, q], kind="stable")[:k]):
            ax, hit = row[rank + 1], caption_image[q] == m
            ax.imshow(np.asarray(images[m]))
            ax.set(xticks=[], yticks=[])
            ax.spines[:].set(edgecolor=_HIT if hit else "0.7", linewidth=4 if hit else 1)
            ax.set_title(f"{_mark(hit)[0]} {rank + 1}. image {m}", fontsize=9, color=_mark(hit)[1])
    return _finish(fig, path, title)


def paired_projection(image_embedding, text_embedding, caption_image, linked=(), title=None, path=None) -> Figure:
    """Images and captions in one PCA map, each modality centred so the "modality gap" does not take the first axis."""
    img, txt = np.asarray(image_embedding, dtype=np.float64), np.asarray(text_embedding, dtype=np.float64)
    cap = np.asarray(caption_image)
    img, txt = (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12) for z in (img, txt))
    xy = PCA(2, random_state=0).fit_transform(np.vstack([img - img.mean(0), txt - txt.mean(0)]))
    xy_img, xy_txt, linked = xy[:len(img)], xy[len(img):], [int(i) for i in linked]
    rest = np.flatnonzero(~np.isin(cap, linked))
    if len(rest) > 3000:  # the other captions, drawn faintly
        rest = np.sort(np.random.default_rng(0).choice(rest, 3000, replace=False))
    fig, ax = _figure(6.5, 5.5)
    ax.scatter(*xy_txt[rest].T, s=6, color="0.8", label="captions")
    ax.scatter(*np.delete(xy_img, linked, axis=0).T, s=18, marker="s", color="0.55", label="images")
    for i, colour in zip(linked, sns.color_palette("tab10", len(linked))):
        own = np.flatnonzero(cap == i)
        for c in own:
            ax.plot(*np.stack([xy_img[i], xy_txt[c]]).T, color=colour, lw=0.8, alpha=0.8)
        ax.scatter(*xy_txt[own].T, s=22, color=colour)
        ax.scatter(*xy_img[i], s=80, marker="s", color=colour, edgecolor="black", zorder=3, label=f"image {i}")
    ax.set(title=title or "images and captions (PCA)", xticks=[], yticks=[])
    ax.legend(fontsize=7, loc="best", markerscale=0.8)
    return _finish(fig, path)


def rank_histogram(i2t: Mapping[str, np.ndarray], t2i: Mapping[str, np.ndarray], title=None, path=None) -> Figure:
    """Share of queries per rank bin of the first right answer (bins read on 60 images as on 1,000), per model."""
    fig, axes = _figure(11, 3.8, 1, 2)
    for ax, ranks, name in ((axes[0], i2t, "image -> text"), (axes[1], t2i, "text -> image")):
        top = max(int(np.max(r)) for r in ranks.values())
        starts = [s for s in (1, 2, 6, 11, 21, 51, 101, 201, 501, 1001, 2001) if s <= top]
        width, x = 0.8 / len(ranks), np.arange(len(starts))
        for j, ((label, r), colour) in enumerate(zip(ranks.items(), sns.color_palette("tab10", len(ranks)))):
            share = 100 * np.histogram(r, bins=np.array(starts + [top + 1]))[0] / len(r)
            ax.bar(x + (j - (len(ranks) - 1) / 2) * width, share, width, color=colour,
                   label=f"{label} (median {np.median(r):g})")
        ax.set_xticks(x, [f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in zip(starts, starts[1:] + [top + 1])])
        ax.set(xlabel="rank of the first right answer", ylabel="% of queries", title=name)
        ax.legend(fontsize=7)
    return _finish(fig, path, title)


def comparison_bars(table: pd.DataFrame, metric: str, title=None, chance: float | None = None, path=None) -> Figure:
    """``metric`` per model (rows), with error bars from ``<metric> low`` / ``high`` columns and ``chance``."""
    values, err, x = table[metric].astype(float), None, np.arange(len(table))
    if f"{metric} low" in table.columns and f"{metric} high" in table.columns:  # NaN bounds draw nothing
        err = np.abs(table[[f"{metric} low", f"{metric} high"]].astype(float).to_numpy().T - values.to_numpy()[None, :])
    fig, ax = _figure(min(14, max(5, 1.1 * len(table) + 1.5)), 3.8)
    bars = ax.bar(x, values, 0.8, label=metric, yerr=err, capsize=3, error_kw={"lw": 1})
    ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set_xticks(x, table.index, rotation=20, ha="right")
    if chance is not None:
        ax.axhline(chance, ls="--", color="0.4", lw=1, label="chance")
        ax.legend(fontsize=8)
    ax.set(ylabel=metric, title=title or "")
    ax.margins(y=0.15)
    return _finish(fig, path)


def metric_curves(histories: Mapping[str, Sequence[Mapping]], key: str = "val_mAP", title=None, path=None) -> Figure:
    """One history column of several runs on one axis, best epochs marked: which learns faster or overfits."""
    fig, ax = _figure(6.5, 4)
    mode_max = not any(s in key.lower() for s in ("loss", "mae", "rank", "error"))
    for name, rows in histories.items():
        epochs, values = [r["epoch"] for r in rows if key in r], [r[key] for r in rows if key in r]
        if not values:
            raise KeyError(f"metric_curves: run {name!r} has no {key!r} in its history")
        line, = ax.plot(epochs, values, marker="o", ms=2.5, lw=1.2, label=name)
        best = int(np.argmax(values) if mode_max else np.argmin(values))
        ax.scatter([epochs[best]], [values[best]], s=45, facecolors="none", edgecolors=line.get_color(), zorder=3)
    ax.set(xlabel="epoch", ylabel=key.replace("_", " "), title=title or key.replace("_", " "))
    ax.legend(fontsize=8)
    return _finish(fig, path)


def person_examples(images, boxes, descriptions, truths, predictions, title=None, path=None) -> Figure:
    """Per person the scene and box, the description, true categories (list or "a;b") and checked predictions."""
    rows = max(len(descriptions), 1)
    fig, axes = _figure(11, 2.6 * rows, rows, 2, width_ratios=[1, 2.6])
    shown = zip(images, boxes, descriptions, truths, predictions, strict=True)  # a ValueError unless lengths match
    for (image, box, description, truth, predicted), (ax_img, ax_txt) in zip(shown, np.atleast_2d(axes)):
        ax_img.imshow(np.asarray(image))
        x1, y1, x2, y2 = (float(v) for v in box)
        ax_img.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2, ec="#ffd400"))
        ax_img.set_axis_off()
        truth = truth.split(";") if isinstance(truth, str) else list(truth)
        ax_txt.set_axis_off()
        lines = [(textwrap.fill(f"“{description}”", 80), "0.2"), ("true: " + ", ".join(truth), "0.2")]
        lines += [(f"{_mark(c in truth)[0]} {c} {score:.2f}", _mark(c in truth)[1]) for c, score in predicted]
        y = 0.98
        for text, colour in lines:
            ax_txt.text(0, y, text, va="top", fontsize=9, color=colour, transform=ax_txt.transAxes)
            y -= 0.13 * (text.count("\n") + 1) + 0.02
    return _finish(fig, path, title)


def attack_curves(table: pd.DataFrame, title=None, path=None) -> Figure:
    """Attack success (%, with intervals when present) against changed pixels, one line per model."""
    fig, ax_s = _figure(6, 3.6, 1, 1)
    for name, part in table.groupby("model", sort=False):
        part = part.sort_values("pixels")
        err = (np.abs(part[["success % low", "success % high"]].to_numpy(float).T - part["success %"].to_numpy(float))
               if "success % low" in part.columns else None)
        ax_s.errorbar(part["pixels"], part["success %"], yerr=err, marker="o", capsize=3, label=name)
    ax_s.set(xlabel="pixels changed (k)", ylabel="success %", ylim=(-3, 103), title="attack success")
    ax_s.set_xscale("log", base=2)
    ax_s.set_xticks(sorted(table["pixels"].unique()), [str(v) for v in sorted(table["pixels"].unique())])
    ax_s.legend(fontsize=8)
    return _finish(fig, path, title)


def poisoning_curves(table: pd.DataFrame, clean: str = "clean mean R@1", title=None, path=None) -> Figure:
    """Backdoor success (solid, filtered dashed, clean images dotted) and ``clean`` against the poisoned fraction."""
    success = ("backdoor success %", "backdoor success % (filtered)", "target top-1 on clean images %")
    fig, (ax_s, ax_c) = _figure(11, 3.8, 1, 2)
    groups = list(table.groupby("model", sort=False))
    for (name, part), colour in zip(groups, sns.color_palette("tab10", len(groups))):
        part = part.sort_values("fraction")
        for col, style in zip([c for c in success if c in part], ("-", "--", ":", "-.")):
            bars = (np.vstack([part[col] - part[f"{col} low"], part[f"{col} high"] - part[col]])
                    if f"{col} low" in part and f"{col} high" in part else None)
            ax_s.errorbar(100 * part["fraction"], part[col], yerr=bars, fmt=style, marker="o", ms=4, capsize=3,
                          color=colour, label=f"{name}: {col}")
        ax_c.plot(100 * part["fraction"], part[clean], marker="o", ms=4, color=colour, label=name)
    ax_s.set(xlabel="poisoned training images (%)", ylabel="%", ylim=(-3, 103), title="attack success")
    ax_c.set(xlabel="poisoned training images (%)", ylabel=clean, title=f"{clean} (clean test data)")
    ax_s.legend(fontsize=7)
    ax_c.legend(fontsize=8)
    return _finish(fig, path, title)


def attack_gallery(clean, adversarial, pixels, before, after, own_before=None, own_after=None, labels=None, title=None,
                   path=None) -> Figure:
    """Per attacked image: clean and attacked photo (changed pixels circled), predictions, a zoom."""
    rows = max(len(clean), 1)
    fig, axes = _figure(11, 3.4 * rows, rows, 3, width_ratios=[1, 1, 0.8])
    shown = enumerate(zip(clean, adversarial, pixels, before, after, strict=True))  # a ValueError unless lengths match
    for (i, (img, adv, pix, *said)), (ax_c, ax_a, ax_z) in zip(shown, np.atleast_2d(axes)):
        img, adv, pix = np.asarray(img), np.asarray(adv), np.asarray(pix).reshape(-1, 5)
        ax_c.imshow(img)
        ax_a.imshow(adv)
        radius = max(img.shape[:2]) / 28
        for x, y in pix[:, :2]:
            ax_a.add_patch(Circle((x, y), radius, fill=False, lw=1.8, ec="#ffd400"))
            ax_a.add_patch(Circle((x, y), radius * 1.25, fill=False, lw=0.8, ec="black"))
        head = "" if labels is None else textwrap.fill(str(labels[i]), 60) + "\n"
        for ax, text, own, when in zip((ax_c, ax_a), said, (own_before, own_after), ("before", "after")):
            ax.set_title((head if ax is ax_c else "\n" * head.count("\n")) + textwrap.fill(f"{when}: {text}", 40),
                         fontsize=8, color="0.2" if own is None else _mark(own[i])[1])
            ax.set_axis_off()
        ax_z.set_axis_off()
        if not len(pix):
            ax_z.text(0.5, 0.5, "no pixel changed", ha="center", va="center", transform=ax_z.transAxes)
            continue
        (x0, y0), (h, w) = pix[0, :2].astype(int), adv.shape[:2]  # 25 x 25 pixels around the first changed one
        left, top = min(max(x0 - 12, 0), max(w - 25, 0)), min(max(y0 - 12, 0), max(h - 25, 0))
        ax_z.imshow(adv[top:top + 25, left:left + 25], interpolation="nearest")
        ax_z.add_patch(Rectangle((x0 - left - 0.5, y0 - top - 0.5), 1, 1, fill=False, lw=1.5, ec="#ffd400"))
        ax_z.set_title(f"zoom: ({x0}, {y0}) -> rgb{tuple(int(v) for v in pix[0, 2:])}", fontsize=8)
    return _finish(fig, path, title)
