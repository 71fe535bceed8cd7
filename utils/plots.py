"""The figures the notebooks show. Each helper returns a matplotlib ``Figure`` and, given ``path``, saves a PNG.

Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``: no global state, nothing leaks in
loops, it works under any backend (Agg in CI), and a notebook shows the figure once when it is the cell's
last expression (or through ``display(fig)``).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

from .labels import CATEGORIES

__all__ = [
    "save_figure", "training_curves", "ap_bars", "pr_curves", "dominant_labels", "embedding_projection",
    "retrieval_examples", "comparison_bars",
]


def save_figure(fig: Figure, path) -> Path:
    """Save ``fig`` as PNG (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _finish(fig: Figure, path) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


def training_curves(history, metrics: Sequence[str] | None = None, title: str | None = None, path=None) -> Figure:
    """Loss curves (train, and validation when recorded) beside validation metric curves, per epoch.

    ``history`` is ``FitResult.history`` (list of dicts) or its DataFrame; ``metrics`` are validation keys
    without the ``val_`` prefix (default: the percent-scale ones, i.e. mAP, accuracies and recalls, so they share
    one axis).
    """
    import pandas as pd
    df = history.frame() if hasattr(history, "frame") else pd.DataFrame(history)
    if df.empty:
        raise ValueError("training_curves: empty history")
    if metrics is None:
        metrics = [c[4:] for c in df.columns if c.startswith("val_") and any(s in c for s in ("mAP", "accuracy", "R@"))]
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax_loss, ax_metric = fig.subplots(1, 2)
    for col, style in (("train_loss", "-"), ("val_loss", "--")):
        if col in df:
            ax_loss.plot(df["epoch"], df[col], style, marker="o", ms=3, label=col.replace("_", " "))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    for m in metrics:
        if f"val_{m}" in df:
            ax_metric.plot(df["epoch"], df[f"val_{m}"], marker="o", ms=3, label=m)
    ax_metric.set(xlabel="epoch", title="validation")
    if metrics:
        ax_metric.legend()
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def ap_bars(ap_per_category: Mapping[str, float], prevalence=None, title: str = "Average precision per category",
            path=None) -> Figure:
    """Horizontal bars of AP (percent) per category, best on top; chance level (= prevalence) as a tick mark.

    ``prevalence`` is the fraction of positives per category in the evaluated split (e.g. ``labels.mean(0)``), in
    the order of ``ap_per_category``; a random scorer's expected AP equals it. NaN APs (no positive) are skipped.
    """
    names = list(ap_per_category)
    ap = np.array([ap_per_category[n] for n in names], dtype=float)
    prev = None if prevalence is None else 100 * np.asarray(prevalence, dtype=float)
    keep = ~np.isnan(ap)
    order = np.argsort(ap[keep])                      # ascending: barh draws bottom-up, so the best lands on top
    names_k = [n for n, k in zip(names, keep) if k]
    fig = Figure(figsize=(7, 0.26 * keep.sum() + 1.2), layout="constrained")
    ax = fig.subplots()
    y = np.arange(keep.sum())
    ax.barh(y, ap[keep][order], color="#4C72B0", label="AP")
    if prev is not None:
        ax.scatter(prev[keep][order], y, marker="|", s=150, color="#C44E52", zorder=3, label="chance (prevalence)")
    ax.set_yticks(y, [names_k[i] for i in order], fontsize=8)
    ax.set(xlabel="average precision (%)", title=title, xlim=(0, 100))
    ax.legend(loc="lower right", fontsize=8)
    return _finish(fig, path)


def pr_curves(scores, labels, categories: Sequence[str] | None = None, which: Sequence[str] | int = 4,
              title: str = "Precision-recall curves", path=None) -> Figure:
    """Precision-recall curves for a few categories: ``which`` names them, or an int picks that many of the most
    frequent categories (the curves are then the most reliable). The dashed line marks each one's prevalence."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    categories = list(categories or CATEGORIES)
    if isinstance(which, int):
        idx = [int(i) for i in np.argsort(-labels.sum(0), kind="stable")[:which]]
    else:
        unknown = [w for w in which if w not in categories]
        if unknown:
            raise ValueError(f"pr_curves: unknown categories {unknown}")
        idx = [categories.index(w) for w in which]
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for i in idx:
        if labels[:, i].sum() == 0:
            continue
        p, r, _ = precision_recall_curve(labels[:, i], scores[:, i])
        line, = ax.step(r, p, where="post", label=categories[i])
        ax.axhline(labels[:, i].mean(), ls="--", lw=0.8, color=line.get_color())
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize=8)
    return _finish(fig, path)


def dominant_labels(labels, scores=None, categories: Sequence[str] | None = None) -> np.ndarray:
    """One emotion name per person, to colour plots: the highest-scored of their true categories when ``scores``
    are given, else their true category that is rarest in the split (the most specific one)."""
    labels = np.asarray(labels) > 0
    categories = np.array(categories or CATEGORIES)
    if scores is not None:
        key = np.where(labels, np.asarray(scores, dtype=float), -np.inf)
    else:
        key = np.where(labels, -labels.sum(0, keepdims=True).astype(float), -np.inf)
    out = categories[key.argmax(1)].astype(object)
    out[~labels.any(1)] = "none"
    return out.astype(str)


def embedding_projection(embedding, color_by, method: str = "pca", top: int = 8, max_points: int = 2000,
                         seed: int = 0, title: str | None = None, path=None) -> Figure:
    """2-D projection (PCA or t-SNE) of an embedding, points coloured by a label per row (e.g. dominant emotion).

    The ``top`` most frequent labels get their own colour, the rest are grey; at most ``max_points`` rows are
    drawn (a seeded random subset) so t-SNE stays quick.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    import seaborn as sns

    emb, color_by = np.asarray(embedding, dtype=np.float64), np.asarray(color_by).astype(str)
    if len(emb) != len(color_by):
        raise ValueError(f"embedding_projection: {len(emb)} rows but {len(color_by)} labels")
    rng = np.random.default_rng(seed)
    if len(emb) > max_points:
        keep = np.sort(rng.choice(len(emb), max_points, replace=False))
        emb, color_by = emb[keep], color_by[keep]
    if method == "pca":
        xy = PCA(2, random_state=seed).fit_transform(emb)
    elif method == "tsne":
        xy = TSNE(2, perplexity=min(30.0, max(2.0, (len(emb) - 1) / 3)), init="pca", random_state=seed
                  ).fit_transform(emb)
    else:
        raise ValueError(f"embedding_projection: method must be 'pca' or 'tsne', got {method!r}")
    names, counts = np.unique(color_by, return_counts=True)
    shown = list(names[np.argsort(-counts, kind="stable")][:top])
    palette = dict(zip(shown, sns.color_palette("tab10", len(shown))))
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.subplots()
    other = ~np.isin(color_by, shown)
    if other.any():
        ax.scatter(*xy[other].T, s=6, color="0.8", label="other")
    for name in shown:
        sel = color_by == name
        ax.scatter(*xy[sel].T, s=8, color=palette[name], label=name)
    ax.set(title=title or f"{method.upper()} of the embedding", xticks=[], yticks=[])
    ax.legend(fontsize=7, markerscale=2, loc="best")
    return _finish(fig, path)


def retrieval_examples(images, captions: Sequence[str], similarity, caption_image, queries: Sequence[int],
                       k: int = 5, title: str | None = None, path=None) -> Figure:
    """For each query image: the image, then its top-``k`` captions, right ones in green with a check mark."""
    sim, caption_image = np.asarray(similarity), np.asarray(caption_image)
    fig = Figure(figsize=(11, 2.3 * len(queries)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(queries), 2, width_ratios=[1, 3]))
    for row, q in enumerate(queries):
        ax_img, ax_txt = axes[row]
        ax_img.imshow(np.asarray(images[q]))
        ax_img.set_axis_off()
        ax_img.set_title(f"image {q}", fontsize=9)
        order = np.argsort(-sim[q], kind="stable")[:k]
        ax_txt.set_axis_off()
        for rank, c in enumerate(order):
            hit = caption_image[c] == q
            text = textwrap.shorten(str(captions[c]), 95)
            ax_txt.text(0, 1 - (rank + 0.5) / k, f"{'✓' if hit else '✗'} {rank + 1}. {text}", va="center",
                        fontsize=9, color="#2a7d2a" if hit else "#b03030", transform=ax_txt.transAxes)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def comparison_bars(table, metric: str | Sequence[str] | None = None, title: str | None = None,
                    chance: float | None = None, path=None) -> Figure:
    """Bars comparing models or ablations on one or more metrics, values printed on the bars.

    ``table``: a mapping ``{name: value}`` or ``{name: {metric: value}}``, or a DataFrame with one row per model
    (index = model name). ``chance`` draws a horizontal reference line.
    """
    import pandas as pd
    if isinstance(table, pd.DataFrame):
        df = table
    else:
        first = next(iter(table.values()))
        df = (pd.DataFrame(table).T if isinstance(first, Mapping)
              else pd.DataFrame({metric if isinstance(metric, str) else "value": table}))
    cols = [metric] if isinstance(metric, str) else list(metric or df.columns)
    df = df[cols].astype(float)
    fig = Figure(figsize=(max(5, 1.1 * len(df) * len(cols) + 1.5), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(cols)
    x = np.arange(len(df))
    for j, col in enumerate(cols):
        bars = ax.bar(x + (j - (len(cols) - 1) / 2) * width, df[col], width, label=col)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(x, df.index, rotation=20, ha="right")
    if chance is not None:
        ax.axhline(chance, ls="--", color="0.4", lw=1, label="chance")
    if len(cols) > 1 or chance is not None:
        ax.legend(fontsize=8)
    ax.set(ylabel=cols[0] if len(cols) == 1 else "", title=title or "")
    ax.margins(y=0.15)
    return _finish(fig, path)
