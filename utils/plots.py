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
    "retrieval_examples", "text_to_image_examples", "paired_projection", "rank_histogram",
    "comparison_bars", "metric_curves", "person_examples",
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


_HIT, _MISS = "#2a7d2a", "#b03030"   # right / wrong retrieval answers, as in retrieval_examples


def text_to_image_examples(images, captions: Sequence[str], similarity, caption_image, queries: Sequence[int],
                           k: int = 4, title: str | None = None, path=None) -> Figure:
    """For each query caption: its text, then its top-``k`` images, the caption's own image framed in green."""
    sim, caption_image = np.asarray(similarity), np.asarray(caption_image)
    k = min(k, sim.shape[0])
    fig = Figure(figsize=(2.2 * k + 3.2, 2.3 * len(queries)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(queries), k + 1, width_ratios=[1.5] + [1] * k))
    for row, q in enumerate(queries):
        ax_txt = axes[row, 0]
        ax_txt.set_axis_off()
        ax_txt.text(0, 0.5, textwrap.fill(str(captions[q]), 30), va="center", fontsize=9, transform=ax_txt.transAxes)
        for rank, m in enumerate(np.argsort(-sim[:, q], kind="stable")[:k]):
            ax, hit = axes[row, rank + 1], caption_image[q] == m
            ax.imshow(np.asarray(images[m]))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(_HIT if hit else "0.7")
                spine.set_linewidth(4 if hit else 1)
            ax.set_title(f"{'✓' if hit else '✗'} {rank + 1}. image {m}", fontsize=9, color=_HIT if hit else _MISS)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def paired_projection(image_embedding, text_embedding, caption_image, linked: Sequence[int] = (),
                      normalize: bool = True, center: bool = True, max_captions: int = 3000, seed: int = 0,
                      title: str | None = None, path=None) -> Figure:
    """Images and captions of one comparison space in a single 2-D PCA map, with lines from each ``linked`` image
    to its own captions.

    One PCA is fitted on both sets together, so distances between an image and a caption in the plot reflect the
    space retrieval uses; ``normalize`` L2-normalises rows first, as a cosine similarity does. ``center``
    then subtracts each modality's mean: images and captions usually sit apart by a constant offset (the
    "modality gap") that would otherwise take the first axis and hide how pairs line up. Linked images and
    their captions share a colour; everything else is drawn faintly (at most ``max_captions`` captions, seeded).
    """
    from sklearn.decomposition import PCA
    import seaborn as sns

    img, txt = np.asarray(image_embedding, dtype=np.float64), np.asarray(text_embedding, dtype=np.float64)
    cap = np.asarray(caption_image)
    if img.shape[1] != txt.shape[1] or len(txt) != len(cap):
        raise ValueError(f"paired_projection: image embedding {img.shape}, text embedding {txt.shape} and "
                         f"caption_image {cap.shape} do not describe one space")
    if normalize:
        img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
        txt = txt / np.maximum(np.linalg.norm(txt, axis=1, keepdims=True), 1e-12)
    if center:
        img, txt = img - img.mean(0), txt - txt.mean(0)
    xy = PCA(2, random_state=seed).fit_transform(np.vstack([img, txt]))
    xy_img, xy_txt = xy[:len(img)], xy[len(img):]
    linked = [int(i) for i in linked]
    rest = np.flatnonzero(~np.isin(cap, linked))
    if len(rest) > max_captions:
        rest = np.sort(np.random.default_rng(seed).choice(rest, max_captions, replace=False))
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.subplots()
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


def rank_histogram(i2t: Mapping[str, np.ndarray], t2i: Mapping[str, np.ndarray], title: str | None = None,
                   path=None) -> Figure:
    """Where the first right answer lands: share of queries per rank bin (1, 2-5, 6-10, 11-20, ...), one bar per
    model, image->text and text->image side by side; the legend gives each model's median rank.

    Bins rather than single ranks keep the tail readable on a 1,000-image test split as on a 60-image one.
    """
    import seaborn as sns

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, ranks, name in ((axes[0], i2t, "image -> text"), (axes[1], t2i, "text -> image")):
        top = max(int(np.max(r)) for r in ranks.values())
        starts = [s for s in (1, 2, 6, 11, 21, 51, 101, 201, 501, 1001, 2001) if s <= top]
        labels = [f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in zip(starts, starts[1:] + [top + 1])]
        edges = np.array(starts + [top + 1])
        width = 0.8 / len(ranks)
        x = np.arange(len(starts))
        for j, ((label, r), colour) in enumerate(zip(ranks.items(), sns.color_palette("tab10", len(ranks)))):
            r = np.asarray(r)
            share = 100 * np.histogram(r, bins=edges)[0] / len(r)
            ax.bar(x + (j - (len(ranks) - 1) / 2) * width, share, width, color=colour,
                   label=f"{label} (median {np.median(r):g})")
        ax.set_xticks(x, labels)
        ax.set(xlabel="rank of the first right answer", ylabel="% of queries", title=name)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def comparison_bars(table, metric: str | Sequence[str] | None = None, title: str | None = None,
                    chance: float | None = None, path=None) -> Figure:
    """Bars comparing models or ablations on one or more metrics, values printed on the bars.

    ``table``: a mapping ``{name: value}`` or ``{name: {metric: value}}``, or a DataFrame with one row per model
    (index = model name). ``chance`` draws a horizontal reference line. When the DataFrame also has columns
    ``"<metric> low"`` and ``"<metric> high"`` (a 95 % interval, as ``utils.experiments`` tables do), they are drawn
    as error bars.
    """
    import pandas as pd
    if isinstance(table, pd.DataFrame):
        df = table
    else:
        first = next(iter(table.values()))
        df = (pd.DataFrame(table).T if isinstance(first, Mapping)
              else pd.DataFrame({metric if isinstance(metric, str) else "value": table}))
    cols = [metric] if isinstance(metric, str) else list(metric or df.columns)
    bounds = {c: df[[f"{c} low", f"{c} high"]].astype(float).to_numpy().T for c in cols
              if f"{c} low" in df.columns and f"{c} high" in df.columns}
    df = df[cols].astype(float)
    fig = Figure(figsize=(min(14, max(5, 1.1 * len(df) * len(cols) + 1.5)), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(cols)
    x = np.arange(len(df))
    for j, col in enumerate(cols):
        err = None
        if col in bounds:  # asymmetric error bars from the interval; NaN bounds (no interval) draw nothing
            err = np.abs(bounds[col] - df[col].to_numpy()[None, :])
        bars = ax.bar(x + (j - (len(cols) - 1) / 2) * width, df[col], width, label=col, yerr=err, capsize=3,
                      error_kw={"lw": 1})
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set_xticks(x, df.index, rotation=20, ha="right")
    if chance is not None:
        ax.axhline(chance, ls="--", color="0.4", lw=1, label="chance")
    if len(cols) > 1 or chance is not None:
        ax.legend(fontsize=8)
    ax.set(ylabel=cols[0] if len(cols) == 1 else "", title=title or "")
    ax.margins(y=0.15)
    return _finish(fig, path)


def shared_space(z_image, z_text, method: str = "pca", seed: int = 0, title: str | None = None, path=None) -> Figure:
    """Image and text embeddings of the same items in one 2-D projection, coloured by modality: a well-aligned
    space mixes the two colours, a poorly aligned one shows two clouds."""
    z = np.concatenate([np.asarray(z_image), np.asarray(z_text)])
    return embedding_projection(z, np.repeat(["image", "text"], [len(z_image), len(z_text)]), method=method,
                                seed=seed, title=title, path=path)


def metric_curves(histories: Mapping[str, Sequence[Mapping]], key: str = "val_mAP", title: str | None = None,
                  path=None) -> Figure:
    """One history column (e.g. ``val_mAP``) per epoch for several runs on one axis, best epoch of each marked.

    ``histories`` maps a run name to ``FitResult.history`` (or anything with ``.history``); lets a reader see
    at a glance which variant learns faster or overfits, where one ``training_curves`` figure per run would not.
    """
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    mode_max = not any(s in key.lower() for s in ("loss", "mae", "rank", "error"))
    for name, history in histories.items():
        rows = getattr(history, "history", history)
        epochs = [r["epoch"] for r in rows if key in r]
        values = [r[key] for r in rows if key in r]
        if not values:
            raise KeyError(f"metric_curves: run {name!r} has no {key!r} in its history")
        line, = ax.plot(epochs, values, marker="o", ms=2.5, lw=1.2, label=name)
        best = int(np.argmax(values) if mode_max else np.argmin(values))
        ax.scatter([epochs[best]], [values[best]], s=45, facecolors="none", edgecolors=line.get_color(), zorder=3)
    ax.set(xlabel="epoch", ylabel=key.replace("_", " "), title=title or key.replace("_", " "))
    ax.legend(fontsize=8)
    return _finish(fig, path)


def person_examples(images, boxes, descriptions: Sequence[str], truths: Sequence, predictions: Sequence,
                    title: str | None = None, path=None) -> Figure:
    """One row per person: the scene with the body box drawn, then the description, the true categories and the
    predicted ones with their scores (a check mark where a prediction is one of the true categories).

    ``images`` (n, H, W, 3) uint8 scenes; ``boxes`` (n, 4) x1, y1, x2, y2 in the images' pixel grid; ``truths`` per
    person a list of names or a ";"-joined string (the CSV's ``categories``); ``predictions`` per person a list of
    ``(category, score)`` as ``utils.person.top_emotions`` returns.
    """
    from matplotlib.patches import Rectangle

    n = len(descriptions)
    if not (len(images) == len(boxes) == len(truths) == len(predictions) == n):
        raise ValueError(f"person_examples: got {len(images)} images, {len(boxes)} boxes, {n} descriptions, "
                         f"{len(truths)} truths and {len(predictions)} predictions; all must match")
    fig = Figure(figsize=(11, 2.6 * max(n, 1)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(n, 1), 2, width_ratios=[1, 2.6]))
    for row in range(n):
        ax_img, ax_txt = axes[row]
        ax_img.imshow(np.asarray(images[row]))
        x1, y1, x2, y2 = (float(v) for v in boxes[row])
        ax_img.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2, ec="#ffd400"))
        ax_img.set_axis_off()
        truth = truths[row].split(";") if isinstance(truths[row], str) else list(truths[row])
        ax_txt.set_axis_off()
        lines = [(textwrap.fill(f"“{descriptions[row]}”", 80), "0.2"), ("true: " + ", ".join(truth), "0.2")]
        for name, score in predictions[row]:
            hit = name in truth
            lines.append((f"{'✓' if hit else '✗'} {name} {score:.2f}", "#2a7d2a" if hit else "#b03030"))
        y = 0.98
        for text, colour in lines:
            ax_txt.text(0, y, text, va="top", fontsize=9, color=colour, transform=ax_txt.transAxes)
            y -= 0.13 * (text.count("\n") + 1) + 0.02
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


# ======================================================================================================================
# Robustness figures (notebooks 05 and 06): attack curves, rank shifts, poisoning curves, attacked-image gallery
# ======================================================================================================================
__all__ += ["attack_curves", "rank_shift_histogram", "poisoning_curves", "attack_gallery"]


def attack_curves(table, by: str = "model", x: str = "pixels", success: str = "success %",
                  queries: str = "queries_per_success", title: str | None = None, path=None) -> Figure:
    """Attack success rate against the number of changed pixels, one line per ``by`` group, with error bars from
    ``"<success> low"`` / ``"<success> high"`` columns when present (e.g. Wilson intervals); a second panel shows
    mean queries per successful attack when the table has a ``queries`` column."""
    has_q = queries in table.columns
    fig = Figure(figsize=(10 if has_q else 6, 3.6), layout="constrained")
    axes = fig.subplots(1, 2 if has_q else 1)
    ax_s, ax_q = (axes if has_q else (axes, None))
    for name, part in table.groupby(by, sort=False):
        part = part.sort_values(x)
        err = None
        if f"{success} low" in part.columns:
            err = np.abs(part[[f"{success} low", f"{success} high"]].to_numpy(float).T - part[success].to_numpy(float))
        ax_s.errorbar(part[x], part[success], yerr=err, marker="o", capsize=3, label=name)
        if has_q:
            ax_q.plot(part[x], part[queries], marker="o", label=name)
    ax_s.set(xlabel="pixels changed (k)", ylabel=success, ylim=(-3, 103), title="attack success")
    ax_s.set_xscale("log", base=2)
    ax_s.set_xticks(sorted(table[x].unique()), [str(v) for v in sorted(table[x].unique())])
    ax_s.legend(fontsize=8)
    if has_q:
        ax_q.set(xlabel="pixels changed", ylabel="model queries", title="queries per successful attack")
        ax_q.set_ylim(bottom=0)
        ax_q.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def rank_shift_histogram(ranks: Mapping[str, Sequence[int]], title: str | None = None, path=None) -> Figure:
    """Where the best true answer lands after an attack: share of attacked images per rank bin (1 = the attack
    failed), one bar per run; the legend gives each run's mean rank. Bins as in :func:`rank_histogram`."""
    import seaborn as sns

    ranks = {k: np.asarray(v, dtype=np.int64) for k, v in ranks.items() if len(v)}
    if not ranks:
        raise ValueError("rank_shift_histogram: no ranks to plot")
    top = max(int(r.max()) for r in ranks.values())
    starts = [s for s in (1, 2, 3, 6, 11, 21, 51, 101, 501) if s <= top]
    labels = [f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in zip(starts, starts[1:] + [top + 1])]
    edges = np.array(starts + [top + 1])
    fig = Figure(figsize=(max(6, 1.2 * len(starts) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    width, x = 0.8 / len(ranks), np.arange(len(starts))
    for j, ((label, r), colour) in enumerate(zip(ranks.items(), sns.color_palette("tab10", len(ranks)))):
        share = 100 * np.histogram(r, bins=edges)[0] / len(r)
        ax.bar(x + (j - (len(ranks) - 1) / 2) * width, share, width, color=colour,
               label=f"{label} (mean {r.mean():.1f}, n={len(r)})")
    ax.set_xticks(x, labels)
    ax.set(xlabel="rank after the attack", ylabel="% of attacked images", title=title or "")
    ax.legend(fontsize=7)
    return _finish(fig, path)


def poisoning_curves(table, by: str = "model", x: str = "fraction",
                     success: Sequence[str] = ("backdoor success %", "backdoor success % (filtered)",
                                               "target top-1 on clean images %"),
                     clean: str = "clean mean R@1", title: str | None = None, path=None) -> Figure:
    """Backdoor curves against the poisoned fraction: attack-success columns on the left (first solid, then dashed
    and dotted: e.g. with a defence, and the clean-image control; error bars where the table has ``<column> low``
    and ``<column> high``), the clean metric on the right; one colour per ``by`` group. Columns missing from
    ``table`` are skipped."""
    import seaborn as sns

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_s, ax_c = fig.subplots(1, 2)
    groups = list(table.groupby(by, sort=False))
    for (name, part), colour in zip(groups, sns.color_palette("tab10", len(groups))):
        part = part.sort_values(x)
        for col, style in zip([c for c in success if c in part], ("-", "--", ":", "-.")):
            # a rate with its interval columns ("<col> low" / "<col> high") gets error bars
            bars = (np.vstack([part[col] - part[f"{col} low"], part[f"{col} high"] - part[col]])
                    if f"{col} low" in part and f"{col} high" in part else None)
            ax_s.errorbar(100 * part[x], part[col], yerr=bars, fmt=style, marker="o", ms=4, capsize=3, color=colour,
                          label=f"{name}: {col}")
        ax_c.plot(100 * part[x], part[clean], marker="o", ms=4, color=colour, label=name)
    ax_s.set(xlabel="poisoned training images (%)", ylabel="%", ylim=(-3, 103), title="attack success")
    ax_c.set(xlabel="poisoned training images (%)", ylabel=clean, title=f"{clean} (clean test data)")
    ax_s.legend(fontsize=7)
    ax_c.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def attack_gallery(clean, adversarial, pixels, before: Sequence[str], after: Sequence[str], own_before=None,
                   own_after=None, labels: Sequence[str] | None = None, zoom: int = 12, title: str | None = None,
                   path=None) -> Figure:
    """One row per attacked image: the clean photo with its top prediction, the attacked photo with every changed
    pixel circled and its new top prediction, and a nearest-neighbour zoom around the first changed pixel (single
    pixels are invisible at full size).

    ``pixels``: per image an (n, 5) array of x, y, r, g, b (``AttackResult.pixels``); ``before``/``after``: the top
    prediction as text (a caption, a category); ``own_before``/``own_after``: whether it is a right answer (green)
    or not (red); ``labels``: a line above each row.
    """
    from matplotlib.patches import Circle, Rectangle

    n = len(clean)
    if not (len(adversarial) == len(pixels) == len(before) == len(after) == n):
        raise ValueError(f"attack_gallery: got {n} clean images, {len(adversarial)} adversarial, {len(pixels)} pixel "
                         f"lists, {len(before)} and {len(after)} predictions; all must match")
    colour = lambda ok: "0.2" if ok is None else ("#2a7d2a" if ok else "#b03030")
    fig = Figure(figsize=(11, 3.4 * max(n, 1)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(n, 1), 3, width_ratios=[1, 1, 0.8]))
    for i in range(n):
        img, adv, pix = np.asarray(clean[i]), np.asarray(adversarial[i]), np.asarray(pixels[i]).reshape(-1, 5)
        ax_c, ax_a, ax_z = axes[i]
        ax_c.imshow(img)
        ax_a.imshow(adv)
        radius = max(img.shape[:2]) / 28
        for x, y in pix[:, :2]:
            ax_a.add_patch(Circle((x, y), radius, fill=False, lw=1.8, ec="#ffd400"))
            ax_a.add_patch(Circle((x, y), radius * 1.25, fill=False, lw=0.8, ec="black"))
        head = "" if labels is None else textwrap.fill(str(labels[i]), 60) + "\n"
        for ax, text, ok, when in ((ax_c, before[i], None if own_before is None else own_before[i], "before"),
                                   (ax_a, after[i], None if own_after is None else own_after[i], "after")):
            ax.set_title((head if ax is ax_c else "\n" * head.count("\n")) + textwrap.fill(f"{when}: {text}", 40),
                         fontsize=8, color=colour(ok))
            ax.set_axis_off()
        if len(pix):
            x0, y0 = int(pix[0, 0]), int(pix[0, 1])
            h, w = adv.shape[:2]
            left, top = min(max(x0 - zoom, 0), max(w - 2 * zoom - 1, 0)), min(max(y0 - zoom, 0), max(h - 2 * zoom - 1, 0))
            ax_z.imshow(adv[top:top + 2 * zoom + 1, left:left + 2 * zoom + 1], interpolation="nearest")
            ax_z.add_patch(Rectangle((x0 - left - 0.5, y0 - top - 0.5), 1, 1, fill=False, lw=1.5, ec="#ffd400"))
            ax_z.set_title(f"zoom: ({x0}, {y0}) -> rgb{tuple(int(v) for v in pix[0, 2:])}", fontsize=8)
        else:
            ax_z.text(0.5, 0.5, "no pixel changed", ha="center", va="center", transform=ax_z.transAxes)
        ax_z.set_axis_off()
    if title:
        fig.suptitle(title)
    return _finish(fig, path)
