"""Every notebook executed once on the smoke profile, then every number it saved recomputed with independent code.

nbval executes each notebook (collected before these tests; conftest.py prepares the data and empties the
throw-away output folder first). ``test_notebook_results[<name>]`` reads
``<output>/metrics/<name>.json`` and ``<output>/predictions/<name>.npz`` and runs ``CHECKS[name]``; a notebook
without a checker yet (05, 06) has no results test. A checker is a function ``check(output_dir)`` that raises
AssertionError naming the notebook, the row and the column of the first number that does not match.

The reference code here shares nothing with ``utils.metrics`` / ``utils.stats``: average precision straight from
``sklearn.metrics.average_precision_score`` per category, ranks from a loop over queries, bootstrap intervals from a
loop over resamples with its own seed. Point estimates must match to 1e-6, the bias-corrected mAP included: its
correction (mean AP over half-size subsets of the persons, minus the full-split AP) is recomputed here from its
definition with sklearn, on the subsets utils.stats documents drawing (the notebook's seed and count). Intervals
must contain their estimate and lie near the independent bootstrap (percentile bounds from a few hundred resamples
differ by Monte-Carlo noise, so "near" is a share of the interval's width); mAP's interval is the bootstrap spread
around its median re-centred on the corrected estimate, recomputed the same way.
"""
from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from conftest import KERNEL_ENV
from utils import store

pytestmark = pytest.mark.notebook

ATOL = 1e-6             # point estimates: recomputed from the saved predictions, float32 scores
BOOT_RESAMPLES = 200    # the independent bootstrap
BOOT_SEED = 12345       # deliberately not the notebooks' seed
BOOT_TOLERANCE = 0.35   # |bound - independent bound| allowed, as a share of the independent interval's width
EMOTIC_COLUMNS = ("mAP", "VAD MAE", "dominant acc")
FLICKR_COLUMNS = ("i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "mean R@1",
                  "i2t median rank", "t2i median rank")


# ------------------------------------------------------------------------------------ independent references
def by_content(fn):
    """Remember ``fn``'s answer per content of its arguments: the tests that edit a copy of the outputs re-run a
    checker whose bootstraps then recompute only what the edit changed."""
    answers = {}

    @functools.wraps(fn)
    def remembered(*args):
        key = store.digest(*args)  # arrays by dtype, shape and bytes; the rest by value
        if key not in answers:
            answers[key] = fn(*args)
        return copy.deepcopy(answers[key])
    return remembered


def category_ap(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP (percent) per category with sklearn; NaN for a category without a positive. (One sklearn call for the
    categories that have one: sklearn scores each column alone, the same numbers as a call per category.)"""
    out = np.full(labels.shape[1], np.nan)
    held = labels.sum(0) >= 1
    if held.any():
        out[held] = 100 * np.atleast_1d(average_precision_score(labels[:, held], scores[:, held], average=None))
    return out


def half_subsets(n: int, count: int, seed: int) -> list:
    """The subsets utils.stats documents: all C(n, n // 2) in itertools order when there are at most ``count``,
    else ``count`` draws of rng.choice(n, n // 2, replace=False) from default_rng(SeedSequence(seed).spawn(1)[0])."""
    h = n // 2
    if n < 64 and math.comb(n, h) <= count:
        return [list(c) for c in itertools.combinations(range(n), h)]
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    return [rng.choice(n, h, replace=False) for _ in range(count)]


@by_content
def corrected_map(labels, scores, count: int, seed: int) -> float:
    """mAP minus its small-sample bias, from the definition: each category's AP averaged over the half-size subsets
    of the persons that hold a positive of it, bias = (that mean - full AP) * h / (n - h) with h = n // 2 kept
    persons (0 when no subset holds a positive), corrected mAP = mean of (AP - bias) over the categories with a
    positive."""
    labels, scores = np.asarray(labels, np.int64), np.asarray(scores, np.float64)
    n, h = len(labels), len(labels) // 2
    full = category_ap(labels, scores)
    subsets = np.array([category_ap(labels[rows], scores[rows]) for rows in half_subsets(n, count, seed)])
    held = ~np.isnan(subsets)
    with np.errstate(invalid="ignore"):
        mean = np.where(held, subsets, 0).sum(0) / held.sum(0)
    bias = np.where(held.any(0), (mean - full) * h / (n - h), 0.0)
    return float(np.nanmean(full - bias))


def recentred(estimate: float, replicates) -> tuple[float, float]:
    """The bootstrap's 2.5-50-97.5 % spread placed on the estimate: [est - (median - q2.5), est + (q97.5 - median)]."""
    low, median, high = np.nanpercentile(replicates, [2.5, 50, 97.5])
    return float(estimate - (median - low)), float(estimate + (high - median))


def emotic_reference(scores, labels, vad_pred, vad_true) -> dict:
    scores, vad_pred, vad_true = (np.asarray(a, np.float64) for a in (scores, vad_pred, vad_true))
    labels = np.asarray(labels, np.int64)
    top = np.argmax(scores, axis=1)
    return {"mAP": float(np.nanmean(category_ap(labels, scores))),
            "VAD MAE": float(np.abs(vad_pred - vad_true).mean()),
            "dominant acc": float(100 * np.mean([labels[i, top[i]] for i in range(len(labels))]))}


def brute_force_ranks(sim: np.ndarray, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1 + number of wrong items scored >= the best right one (ties count against the model), query by query."""
    n_images, n_captions = sim.shape
    i2t = np.empty(n_images, np.int64)
    for i in range(n_images):
        best = max(sim[i, c] for c in range(n_captions) if caption_image[c] == i)
        i2t[i] = 1 + sum(1 for c in range(n_captions) if caption_image[c] != i and sim[i, c] >= best)
    t2i = np.empty(n_captions, np.int64)
    for c in range(n_captions):
        right = sim[caption_image[c], c]
        t2i[c] = 1 + sum(1 for i in range(n_images) if i != caption_image[c] and sim[i, c] >= right)
    return i2t, t2i


def retrieval_from_ranks(i2t, t2i) -> dict:
    out = {}
    for d, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{d} R@{k}"] = 100 * float(np.mean(ranks <= k))
        out[f"{d} median rank"] = float(np.median(ranks))
    out["mean R@1"] = (out["i2t R@1"] + out["t2i R@1"]) / 2
    return out


def retrieval_reference(sim, caption_image) -> dict:
    return retrieval_from_ranks(*brute_force_ranks(np.asarray(sim, np.float64), np.asarray(caption_image)))


def retrieval_chance_reference(caption_image: np.ndarray) -> dict:
    """Expected recall of a uniformly random ranking: an image with n of the C captions misses all of them in the
    top k with probability comb(C - n, k) / comb(C, k); a caption finds its image in the top k of M with k / M."""
    n_per_image = np.bincount(caption_image)
    m, c = len(n_per_image), len(caption_image)
    out = {}
    for k in (1, 5, 10):
        kk = min(k, c)
        out[f"i2t R@{k}"] = 100 * float(np.mean([1 - math.comb(c - n, kk) / math.comb(c, kk) for n in n_per_image]))
        out[f"t2i R@{k}"] = 100 * min(k, m) / m
    out["mean R@1"] = (out["i2t R@1"] + out["t2i R@1"]) / 2
    return out


def bootstrap_replicates(statistic, n_items: int, seed: int = BOOT_SEED) -> dict:
    """{name: replicates} of ``statistic(rows) -> {name: value}`` over resamples of the items."""
    rng = np.random.default_rng(seed)
    reps: dict[str, list] = {}
    for _ in range(BOOT_RESAMPLES):
        for key, value in statistic(rng.integers(0, n_items, n_items)).items():
            reps.setdefault(key, []).append(value)
    return reps


def percentile_bootstrap(statistic, n_items: int, seed: int = BOOT_SEED) -> dict:
    """{name: (low, high)}: 2.5 and 97.5 percentiles of ``statistic(rows) -> {name: value}`` over resamples."""
    return {k: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5)))
            for k, v in bootstrap_replicates(statistic, n_items, seed).items()}


@by_content
def emotic_bootstrap(scores, labels, vad_pred, vad_true, corrected: float) -> dict:
    """Percentile intervals for the per-person means; for mAP the spread re-centred on ``corrected``."""
    reps = bootstrap_replicates(lambda rows: emotic_reference(scores[rows], labels[rows], vad_pred[rows],
                                                              vad_true[rows]), len(labels))
    out = {k: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))) for k, v in reps.items()}
    out["mAP"] = recentred(corrected, reps["mAP"])
    return out


@by_content
def retrieval_bootstrap(sim, caption_image) -> dict:
    """Resample images, each with all its captions; ranks stay those on the full test gallery."""
    i2t, t2i = brute_force_ranks(np.asarray(sim, np.float64), caption_image)
    captions_of = [np.flatnonzero(caption_image == i) for i in range(sim.shape[0])]

    def statistic(rows):
        return retrieval_from_ranks(i2t[rows], t2i[np.concatenate([captions_of[i] for i in rows])])
    return percentile_bootstrap(statistic, sim.shape[0])


@by_content
def emotic_paired_bootstrap(labels, scores_a, scores_b, difference: float) -> tuple[float, float]:
    """The paired bootstrap of the mAP difference (persons resampled together), re-centred on ``difference``."""
    reps = bootstrap_replicates(lambda r: {"d": float(np.nanmean(category_ap(labels[r], scores_a[r]))
                                                      - np.nanmean(category_ap(labels[r], scores_b[r])))},
                                len(labels))["d"]
    return recentred(difference, reps)


# ------------------------------------------------------------------------------------------------- loading
class Saved:
    """One notebook's saved metrics and predictions."""

    def __init__(self, out: Path, name: str):
        self.name, self.out = name, Path(out)
        path = self.out / "metrics" / f"{name}.json"
        assert path.is_file(), f"{name}: {path} was not written"
        self.doc = json.loads(path.read_text())
        with np.load(self.out / "predictions" / self.doc["predictions"], allow_pickle=False) as z:
            self.pred = {k: z[k] for k in z.files}
        self.summary = self.doc["summary"]
        self.labels = [str(label) for label in self.pred["model_labels"]]
        self.slugs = dict(zip(self.labels, (str(s) for s in self.pred["models"])))
        self.n_items = len(self.pred["labels"] if "labels" in self.pred else np.unique(self.pred["caption_image"]))

    def fail(self, where: str, message: str):
        raise AssertionError(f"{self.name}: {where}: {message}")

    def close(self, where: str, saved, recomputed, atol: float = ATOL):
        if saved is None or recomputed is None or not np.isfinite(recomputed):
            if not (saved is None and (recomputed is None or not np.isfinite(recomputed))):
                self.fail(where, f"saved {saved}, recomputed {recomputed}")
        elif abs(saved - recomputed) > atol:
            self.fail(where, f"saved {saved} but the predictions give {recomputed}")


def emotic_chance(out: Path) -> dict:
    """The chance row from the training artefacts: training prevalence as scores, the training-mean VAD."""
    root = Path(KERNEL_ENV["EMOTIC_ARTEFACTS"])
    train_cat, train_cont = np.load(root / "train_cat_arr.npy"), np.load(root / "train_cont_arr.npy")
    return {"prevalence": train_cat.mean(0), "vad": train_cont.astype(np.float64).mean(0)}


# --------------------------------------------------------------------------------------------------- checks
def check_intervals(s: Saved, row: str, values: dict, independent: dict, columns) -> None:
    for column in columns:
        est, low, high = values.get(column), values.get(f"{column} low"), values.get(f"{column} high")
        if low is None and high is None:
            continue
        where = f"row {row!r}, {column}"
        mine = independent[column]
        if not low - 1e-9 <= est <= high + 1e-9:
            s.fail(where, f"interval [{low}, {high}] does not contain its estimate {est}")
        tol = BOOT_TOLERANCE * (mine[1] - mine[0]) + 1e-9
        if abs(low - mine[0]) > tol or abs(high - mine[1]) > tol:
            s.fail(where, f"interval [{low:.4g}, {high:.4g}] far from an independent bootstrap "
                          f"[{mine[0]:.4g}, {mine[1]:.4g}] (tolerance {tol:.3g})")


def check_models_and_rows(s: Saved) -> None:
    assert s.doc["notebook"] == s.name and s.doc["profile"] == KERNEL_ENV["MMER_PROFILE"], s.doc["notebook"]
    rows = set(s.summary) - {"chance"}
    if set(s.labels) != rows:
        s.fail("summary", f"rows {sorted(rows)} but predictions for {sorted(s.labels)}")
    assert "chance" in s.summary, f"{s.name}: no chance row"
    assert str(s.pred["main"]) in s.slugs.values(), f"{s.name}: main model {s.pred['main']} has no predictions"


def check_comparisons(s: Saved, reference, metric: str, paired_bootstrap) -> None:
    """Each paired comparison: difference recomputed, sign and wording consistent with the interval, the interval
    near an independent paired bootstrap, and its sentence among the findings."""
    lines = "\n".join(s.doc["findings"]["lines"])
    for key, row in s.doc["comparisons"].items():
        a, b, where = row["a"], row["b"], f"comparison {key!r}"
        assert row["metric"] == metric, where
        s.close(f"{where} difference", row["difference"], reference[a][metric] - reference[b][metric])
        s.close(f"{where} difference vs summary", row["difference"], s.summary[a][metric] - s.summary[b][metric])
        if not (row["low"] <= row["difference"] <= row["high"] and 0 < row["p_value"] <= 1):
            s.fail(where, f"interval [{row['low']}, {row['high']}] around {row['difference']} or p {row['p_value']} "
                          "malformed")
        if row["low"] > 0:
            expect = f"{a} is higher than {b}"
        elif row["high"] < 0:
            expect = f"{b} is higher than {a}"
        else:
            expect = "no detectable difference"
        if not row["finding"].startswith(expect):
            s.fail(where, f"interval [{row['low']}, {row['high']}] but the sentence says {row['finding']!r}")
        if (row["low"] > 0 and row["difference"] <= 0) or (row["high"] < 0 and row["difference"] >= 0):
            s.fail(where, f"difference {row['difference']} on the other side of zero than its interval")
        mine = paired_bootstrap(a, b)
        tol = BOOT_TOLERANCE * (mine[1] - mine[0]) + 1e-9
        if abs(row["low"] - mine[0]) > tol or abs(row["high"] - mine[1]) > tol:
            s.fail(where, f"interval [{row['low']:.4g}, {row['high']:.4g}] far from an independent paired "
                          f"bootstrap [{mine[0]:.4g}, {mine[1]:.4g}]")
        if row["finding"] not in lines:
            s.fail(where, "its sentence is missing from the findings")


def check_seeds(s: Saved, reference: dict, metric: str) -> None:
    seed0 = f"seed {s.doc['config']['seed']}"
    for label, row in s.doc.get("seeds", {}).items():
        values = [v for k, v in row.items() if k.startswith("seed ")]
        assert len(values) == s.doc["config"]["seeds"], f"{s.name}: seeds of {label}: {row}"
        s.close(f"seeds {label!r} {seed0} (the summary model)", row[seed0], reference[label][metric])
        s.close(f"seeds {label!r} mean", row[f"{metric} mean"], float(np.mean(values)))
        s.close(f"seeds {label!r} sd", row[f"{metric} sd"], float(np.std(values, ddof=1)) if len(values) > 1 else None)


def check_history(s: Saved, labels) -> None:
    history = s.doc["history"]
    for label in labels:
        epochs = [h["epoch"] for h in history[label]]
        if not epochs or epochs != list(range(1, len(epochs) + 1)):
            s.fail(f"history {label!r}", f"epochs {epochs}")


def check_emotic_notebook(out: Path, name: str) -> dict:
    """Summary rows, intervals, chance, per-category AP, comparisons, seeds; returns the recomputed rows."""
    s = Saved(out, name)
    check_models_and_rows(s)
    p = s.pred
    labels, vad_true = p["labels"].astype(np.int64), p["vad_true"]
    assert [str(c) for c in p["categories"]] == list(s.doc["per_category"]), f"{name}: category order"
    reference, corrected, boot = {}, {}, {}       # reference: plain sample metrics; corrected: mAP as reported
    n = len(labels)
    chance = emotic_chance(out)
    chance_scores, chance_vad = np.tile(chance["prevalence"], (n, 1)), np.tile(chance["vad"], (n, 1))
    inputs = {label: (p[f"{slug}_scores"], p[f"{slug}_vad_pred"]) for label, slug in s.slugs.items()}
    for label, (scores, vad) in {**inputs, "chance": (chance_scores, chance_vad)}.items():
        reference[label] = emotic_reference(scores, labels, vad, vad_true)
        corrected[label] = corrected_map(labels, scores, s.doc["config"]["bootstrap"], s.doc["config"]["seed"])
        boot[label] = emotic_bootstrap(scores, labels, vad, vad_true, corrected[label])
    # a constant scorer ranks everybody equal: its sample AP is the test prevalence of the category
    positives = labels.sum(0) > 0
    s.close("row 'chance', sample mAP = mean test prevalence", reference["chance"]["mAP"],
            100 * float(labels.mean(0)[positives].mean()))
    for row, values in s.summary.items():
        for column in EMOTIC_COLUMNS:
            expected = corrected[row] if column == "mAP" else reference[row][column]  # mAP: bias-corrected
            s.close(f"row {row!r}, {column}", values[column], expected)
        check_intervals(s, row, values, boot[row], EMOTIC_COLUMNS)
    for j, (category, row) in enumerate(s.doc["per_category"].items()):
        s.close(f"per_category {category!r} prevalence", row["prevalence %"], 100 * float(labels[:, j].mean()), 1e-4)
        for label, slug in s.slugs.items():
            ap = category_ap(labels[:, [j]], p[f"{slug}_scores"][:, [j]])[0]
            s.close(f"per_category {category!r}, {label}", row[label], None if np.isnan(ap) else float(ap))

    def paired(a, b):
        return emotic_paired_bootstrap(labels, p[f"{s.slugs[a]}_scores"], p[f"{s.slugs[b]}_scores"],
                                       corrected[a] - corrected[b])
    check_comparisons(s, {k: {"mAP": v} for k, v in corrected.items()}, "mAP", paired)
    check_seeds(s, {label: {"mAP": s.summary[label]["mAP"]} for label in s.labels}, "mAP")
    check_history(s, [label for label in s.labels if label in s.doc["history"]])
    return reference


def check_flickr_notebook(out: Path, name: str) -> dict:
    s = Saved(out, name)
    check_models_and_rows(s)
    cap = s.pred["caption_image"]
    assert cap.dtype.kind == "i" and len(s.pred["captions"]) == len(cap), f"{name}: caption arrays"
    reference, boot, ranks = {}, {}, {}
    for label, slug in s.slugs.items():
        sim = s.pred[f"{slug}_similarity"]
        ranks[label] = brute_force_ranks(sim.astype(np.float64), cap)
        reference[label] = retrieval_from_ranks(*ranks[label])
        boot[label] = retrieval_bootstrap(sim, cap)
    chance = retrieval_chance_reference(cap)
    for column, value in s.summary["chance"].items():
        s.close(f"row 'chance', {column}", value, chance.get(column))
    for row, values in s.summary.items():
        if row == "chance":
            continue
        for column in FLICKR_COLUMNS:
            s.close(f"row {row!r}, {column}", values[column], reference[row][column])
        check_intervals(s, row, values, boot[row], FLICKR_COLUMNS)
    captions_of = [np.flatnonzero(cap == i) for i in range(len(np.bincount(cap)))]

    def paired(a, b):
        (ia, ta), (ib, tb) = ranks[a], ranks[b]

        def d(rows):
            c = np.concatenate([captions_of[i] for i in rows])
            return {"d": retrieval_from_ranks(ia[rows], ta[c])["mean R@1"] - retrieval_from_ranks(ib[rows], tb[c])["mean R@1"]}
        return percentile_bootstrap(d, len(captions_of))["d"]
    check_comparisons(s, reference, "mean R@1", paired)
    check_seeds(s, reference, "mean R@1")
    targets = s.doc["findings"]["targets"]
    for label, above in targets["above_chance"].items():
        if above != (s.summary[label]["mean R@1 low"] > chance["mean R@1"]):
            s.fail(f"findings target above_chance {label!r}", f"{above} against the saved interval")
    return reference


def _sha16(key) -> str:
    return store.key(key)  # the checkpoint's name: utils.store's content key of its record's key


def check_checkpoints(out: Path, experiment: str) -> dict:
    """Every checkpoint record names its own fingerprint, has its weights beside it, and no model (label, seed,
    training data, lambda) was trained twice under two fingerprints. Returns label -> record for seed-0 clean runs."""
    seen, first = {}, {}
    for record_path in sorted((out / "checkpoints").glob(f"{experiment}_*.json")):
        record = json.loads(record_path.read_text())
        key = record["key"]
        assert record_path.stem.endswith(_sha16(key)), f"{record_path.name}: name does not carry its key's hash"
        assert record_path.with_suffix(".pt").is_file(), f"{record_path.name}: weights missing"
        model = (record["label"], key["seed"], key["tag"], key["train"], str(key.get("align_weight")))
        assert model not in seen, f"{record['label']}: trained twice ({seen.get(model)} and {record_path.name})"
        seen[model] = record_path.name
        if key["tag"] == "clean" and key["seed"] == 0:
            first[record["label"]] = record
    return first


def check_01(out: Path) -> None:
    name = "01_emotic_baseline"
    reference = check_emotic_notebook(out, name)
    doc = Saved(out, name).doc
    targets, summary = doc["findings"]["targets"], doc["summary"]
    singles = list(targets["singles_clearly_above_chance"])
    best = max(singles, key=lambda label: summary[label]["mAP"])  # the reported (bias-corrected) mAP, checked above
    assert targets["best_single"] == best, f"{name}: best single {targets['best_single']} but recomputed {best}"
    first = next(iter(doc["comparisons"].values()))
    assert (first["a"], first["b"]) == ("fusion (all)", best), f"{name}: first comparison {first['a']} vs {first['b']}"
    for label in singles:
        assert targets["singles_clearly_above_chance"][label] == (
            summary[label]["mAP"] >= 1.5 * summary["chance"]["mAP"]), f"{name}: above-chance target of {label}"
    assert targets["fusion_beats_best_single"] == (first["low"] > 0), f"{name}: fusion_beats_best_single"
    checkpoints = check_checkpoints(out, "emotic")
    for label in doc["history"]:
        assert checkpoints[label]["history"] == doc["history"][label], f"{name}: {label} history vs its checkpoint"


BASELINE_ROWS_OF_03 = ("fusion (all)", "image (body+context)", "text only")


def check_03(out: Path) -> None:
    """Besides the generic checks: the baseline rows are notebook 01's very models (checkpoints reused, not
    retrained), so their training history (wall-clock seconds included), predictions and numbers are identical."""
    name = "03_emotic_joint_embedding"
    check_emotic_notebook(out, name)
    s03, s01 = Saved(out, name), Saved(out, "01_emotic_baseline")
    checkpoints = check_checkpoints(out, "emotic")
    for label in BASELINE_ROWS_OF_03:
        assert s03.doc["history"][label] == s01.doc["history"][label] == checkpoints[label]["history"], (
            f"{name}: {label} was retrained instead of loaded from notebook 01's checkpoint")
        assert s03.summary[label] == s01.summary[label], f"{name}: {label} numbers differ from notebook 01's"
        np.testing.assert_array_equal(s03.pred[f"{s03.slugs[label]}_scores"], s01.pred[f"{s01.slugs[label]}_scores"],
                                      err_msg=f"{name}: {label} predictions differ from notebook 01's")
    alignment, n = s03.doc["alignment"], len(s03.pred["labels"])
    for label, row in alignment.items():
        s03.close(f"alignment {label!r} chance R@1", row["chance R@1"], 100 / n)
        s03.close(f"alignment {label!r} mean R@1", row["mean R@1"], (row["i2t R@1"] + row["t2i R@1"]) / 2)
    s03.close("alignment lambda of the main model", alignment["joint (image+text)"]["lambda"],
              s03.doc["config"]["align_weight"])


def check_02(out: Path) -> None:
    name = "02_flickr8k_baseline"
    check_flickr_notebook(out, name)
    doc = Saved(out, name).doc
    validation, chosen, cfg = doc["validation"], doc["chosen"], doc["config"]
    for label, grid in validation.items():
        allowed = cfg["cca_regs"] if label == "CCA" else cfg["ridge_alphas"]
        assert sorted(map(float, grid)) == sorted(map(float, allowed)), f"{name}: {label} grid {grid}"
        best = max(grid.values())
        assert grid[str(float(chosen[label]))] == best, f"{name}: {label} chose {chosen[label]}, not a best of {grid}"
    assert chosen["both maps"] == [chosen["image->text map"], chosen["text->image map"]], f"{name}: both maps penalties"


def check_04(out: Path) -> None:
    """Besides the generic checks: the closed-form baseline row equals notebook 02's (same data, same refit)."""
    name = "04_flickr8k_joint_embedding"
    check_flickr_notebook(out, name)
    s04, s02 = Saved(out, name), Saved(out, "02_flickr8k_baseline")
    assert s04.summary["both maps"] == s02.summary["both maps"], f"{name}: 'both maps' differs from notebook 02's"
    np.testing.assert_array_equal(s04.pred["both_maps_similarity"], s02.pred["both_maps_similarity"])
    checkpoints = check_checkpoints(out, "flickr8k")
    for label, history in s04.doc["history"].items():
        assert checkpoints[label]["history"] == history, f"{name}: {label} history vs its checkpoint"


#: notebook -> checker; 05/06 slot in here. DEPENDS: notebooks whose outputs a checker compares against.
CHECKS = {"01_emotic_baseline": check_01, "02_flickr8k_baseline": check_02,
          "03_emotic_joint_embedding": check_03, "04_flickr8k_joint_embedding": check_04}
DEPENDS = {"03_emotic_joint_embedding": ["01_emotic_baseline"], "04_flickr8k_joint_embedding": ["02_flickr8k_baseline"]}


# ---------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(CHECKS))
def test_notebook_results(name, notebook_runner):
    for needed in [*DEPENDS.get(name, []), name]:
        notebook_runner.run(needed)
    CHECKS[name](notebook_runner.output)


def _copy_outputs(notebook_runner, names, tmp_path) -> Path:
    for name in names:
        notebook_runner.run(name)
    out = tmp_path / "outputs"
    shutil.copytree(notebook_runner.output, out, ignore=shutil.ignore_patterns("figures", "notebooks"))
    return out


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("name, row, column", [("01_emotic_baseline", "fusion (all)", "mAP"),
                                               ("01_emotic_baseline", "chance", "dominant acc"),
                                               ("02_flickr8k_baseline", "both maps", "i2t R@1")])
def test_a_saved_number_off_by_one_point_fails_its_checker(name, row, column, notebook_runner, tmp_path):
    out = _copy_outputs(notebook_runner, [name], tmp_path)  # unedited, it passes: test_notebook_results

    def bump(doc):
        doc["summary"][row][column] += 1.0
    _edit_json(out / "metrics" / f"{name}.json", bump)
    with pytest.raises(AssertionError, match=re.escape(f"{name}: row '{row}', {column}: saved")):
        CHECKS[name](out)


def test_changed_predictions_or_finding_fail_the_checker(notebook_runner, tmp_path):
    name = "01_emotic_baseline"
    out = _copy_outputs(notebook_runner, [name], tmp_path)
    path = out / "predictions" / f"{name}.npz"
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["body_only_scores"] = arrays["body_only_scores"][::-1].copy()  # one model's rows shuffled
    np.savez(path, **arrays)
    with pytest.raises(AssertionError, match="row 'body only'"):
        CHECKS[name](out)
    shutil.copy(notebook_runner.output / "predictions" / f"{name}.npz", path)

    def drop_finding(doc):
        doc["findings"]["lines"] = doc["findings"]["lines"][:1]
    _edit_json(out / "metrics" / f"{name}.json", drop_finding)
    with pytest.raises(AssertionError, match="missing from the findings"):
        CHECKS[name](out)


def test_a_retrained_baseline_fails_the_reuse_check(notebook_runner, tmp_path):
    """Notebook 03 must load notebook 01's checkpoints: a different history (as a retrain would write) fails."""
    out = _copy_outputs(notebook_runner, ["01_emotic_baseline", "03_emotic_joint_embedding"], tmp_path)

    def retrained(doc):
        doc["history"]["fusion (all)"][0]["seconds"] += 0.5
    _edit_json(out / "metrics" / "03_emotic_joint_embedding.json", retrained)
    with pytest.raises(AssertionError, match="retrained instead of loaded"):
        check_03(out)
