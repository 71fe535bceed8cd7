"""The experiments of part 3: few-pixel attacks on the models of parts 1 and 2, pixel-trigger poisoning, and a
median-filter defence. The notebooks 05 and 06 call these; the searches themselves live in ``utils.attack``, and
attacks computed ahead by ``scripts/robustness.py`` in ``utils.precomputed_attacks``.

Every attack goes through the whole pipeline from raw uint8 pixels (image encoder included) with the text held
clean. Persons / images are drawn at random among those every attacked model gets right, so the models are
compared on the same items; each rate carries a Wilson 95 % interval, each paired comparison McNemar's exact test.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import attack as A
from . import encoders, stats
from .experiments import FINETUNED, Data, Findings, emotic_chance, slug, train_emotic, train_flickr_joint
from .labels import CATEGORIES, CATEGORY_INDEX
from .metrics import emotic_metrics, retrieval_metrics, retrieval_ranks
from .poisoning import MedianFilter, median_filter_defence, poison_emotic, poison_flickr, stamp_trigger
from .training import predict


# ------------------------------------------------------------------------------------------ who is attacked
def attacked_rows(right: dict, n: int, seed: int) -> np.ndarray:
    """``n`` rows drawn at random (seeded) among those that every model gets right (``right``: label -> bool array),
    sorted. Random, not the ones nearest the decision boundary, so the rates describe the test set."""
    every = np.logical_and.reduce(list(right.values()))
    candidates = np.flatnonzero(every)
    take = min(n, len(candidates))
    return np.sort(np.random.default_rng(seed).choice(candidates, size=take, replace=False))


def rank1_rows(sims: dict, caption_image: np.ndarray) -> dict:
    """label -> bool per test image: one of its own captions is ranked first (what a Flickr8k attack must undo)."""
    return {label: retrieval_ranks(s, caption_image)[0] == 1 for label, s in sims.items()}


def emotic_right(preds: dict, data: Data) -> dict:
    """label -> bool per test person: the top-scored category is a true one."""
    truth = data.features["test"]["cat"] > 0.5
    return {label: truth[np.arange(len(truth)), p["scores"].argmax(1)] for label, p in preds.items()}


def emotic_pipelines(data: Data, models: dict, image_encoder=None) -> dict:
    """label -> the pixel pipeline of that model: scene edited, body crop re-derived from it, text held clean."""
    test, split = data.features["test"], data.splits["test"]
    enc = image_encoder or data.image_encoder
    return {label: A.EmoticPixelPipeline(enc, m, test["text"], split.boxes_224, test["cat"]) for label, m in models.items()}


def flickr_pipelines(data: Data, models: dict, image_encoder=None) -> dict:
    test = data.features["test"]
    enc = image_encoder or data.image_encoder
    return {label: A.FlickrPixelPipeline(enc, m, test["text"], test["caption_image"]) for label, m in models.items()}


def budget(cfg: dict) -> dict:
    """The search settings of ``cfg`` for ``utils.attack.pixels_needed``."""
    out = dict(method=cfg["attack_method"], queries=cfg["attack_queries"], batch_size=cfg["attack_batch"],
               seed=cfg["seed"], precision=cfg["attack_precision"], progress=False)
    if cfg["attack_method"] == "de":
        out.update(popsize=cfg["popsize"], F=cfg["F"])
    return out


def pixels_needed(pipelines: dict, images: np.ndarray, rows: np.ndarray, cfg: dict, *,
                  precomputed: bool = True) -> dict:
    """label -> ``utils.attack.PixelsNeeded`` over the pixel schedule ``cfg['pixels']``, same rows for every model.

    With ``precomputed`` (the default), results that ``scripts/robustness.py`` merged for exactly this
    configuration (``utils.precomputed_attacks.attack_key``: search settings, pipelines' content, rows, attacked
    photos) are loaded instead of attacking again; they are the same objects the search returns.
    """
    if precomputed:
        from .precomputed_attacks import attack_key, attack_results_path, load_attack_results

        path = attack_results_path(cfg, attack_key(pipelines, images, rows, cfg))
        if path.is_file():
            print(f"attack results loaded from {path} (precomputed by scripts/robustness.py)")
            return load_attack_results(path, images)
    return attack_items(pipelines, images, rows, cfg)


def attack_chunk(cfg: dict) -> int:
    """Items attacked together: enough for the sparse search's 4 proposals per item to fill one model batch
    (``attack_batch``). The default shard of ``scripts/robustness.py`` too, so that a notebook attacking in-process
    and any number of processes attacking shards do the very same floating-point work."""
    return max(1, int(cfg["attack_batch"]) // 4)


def attack_items(pipelines: dict, images: np.ndarray, rows: np.ndarray, cfg: dict, chunk: int | None = None) -> dict:
    """The search itself (no look-up): label -> ``PixelsNeeded`` of the ``rows`` of ``images``, attacked ``chunk``
    items at a time (default :func:`attack_chunk`) and concatenated.

    Why chunks: each image's search is seeded by (seed, row), so its decisions do not depend on the other images
    in the batch, but a batched forward pass rounds differently with another batch size (the last bits of the
    scores). Fixed chunks make the result independent of how many processes share the rows.
    """
    from .experiments import threads

    rows = np.asarray(rows, np.int64)
    chunk = attack_chunk(cfg) if chunk is None else int(chunk)
    parts = []
    with threads(cfg["attack_threads"]):
        for a in range(0, len(rows), chunk):
            part = rows[a:a + chunk]
            parts.append({label: A.pixels_needed(pipe, images[part], part, schedule=cfg["pixels"], **budget(cfg))
                          for label, pipe in pipelines.items()})
    if not parts:
        raise ValueError("utils/robustness.py: no rows to attack")
    return merge_needed(parts)


def merge_needed(parts: list[dict]) -> dict:
    """Concatenate the results of consecutive parts of the rows (label -> ``PixelsNeeded`` each), in order. Each
    report's cost (seconds, model queries) is the sum over the parts."""
    merged = {}
    for label in parts[0]:
        ps = [p[label] for p in parts]
        schedule = ps[0].schedule
        reports = {}
        for k in schedule:
            reps = [p.reports[k] for p in ps if k in p.reports]
            if reps:
                reports[k] = A.AttackReport(results=[r for rep in reps for r in rep.results], settings=reps[0].settings,
                                            seconds=sum(r.seconds for r in reps),
                                            model_queries=sum(r.model_queries for r in reps),
                                            search_seconds=sum(r.search_seconds for r in reps),
                                            model_seconds=sum(r.model_seconds for r in reps))
        cat = {f: np.concatenate([getattr(p, f) for p in ps]) for f in ("rows", "attacked", "k_needed", "queries")}
        merged[label] = A.PixelsNeeded(**cat, schedule=schedule, reports=reports)
    return merged


@dataclass
class AttackRun:
    """Everything the few-pixel section of a robustness notebook shows: the per-model searches (``needed``), success
    against k with Wilson intervals (``curve``), the median pixels needed (``median``), McNemar's test between paired
    models at every k (``paired``) and the sentence that sums up each pair (``sentences``)."""
    needed: dict
    curve: pd.DataFrame
    median: pd.DataFrame
    paired: pd.DataFrame
    sentences: list


def attack_models(pipelines: dict, images: np.ndarray, rows: np.ndarray, cfg: dict, pairs: list, title: str,
                  path=None) -> AttackRun:
    """The few-pixel experiment of notebooks 05 / 06: every model attacked on the same ``rows`` over the pixel
    schedule, the tables built from it, and the success-against-k figure (``title``, saved to ``path``)."""
    from .plots import attack_curves

    needed = pixels_needed(pipelines, images, rows, cfg)
    curve = success_table(needed)
    paired = paired_attack_tests(needed, pairs)
    attack_curves(curve, title=title, path=path)
    return AttackRun(needed, curve, median_pixels(needed, cfg), paired, [paired_sentence(paired, a, b) for a, b in pairs])


# ------------------------------------------------------------------------------------------------- tables
def success_table(needed: dict) -> pd.DataFrame:
    """One row per (model, k): attacked, fooled with at most k pixels, the rate and its Wilson 95 % interval."""
    rows = []
    for label, pn in needed.items():
        for _, r in pn.curve().iterrows():
            lo, hi = stats.wilson_interval(int(r["successes"]), int(r["attacked"]))
            rows.append({"model": label, "pixels": int(r["pixels"]), "attacked": int(r["attacked"]),
                         "successes": int(r["successes"]), "success %": 100 * r["success_rate"],
                         "success % low": 100 * lo, "success % high": 100 * hi})
    return pd.DataFrame(rows)


def median_pixels(needed: dict, cfg: dict) -> pd.DataFrame:
    """Per model: the median number of pixels needed with a percentile-bootstrap 95 % interval over the attacked
    items, and the queries spent. Items not fooled within the schedule count as more than its largest k; a median
    or bound among them is shown as inf ("more than the largest k")."""
    over = 2 * max(cfg["pixels"])  # stands for "not fooled within the schedule"; shown as "> k_max"
    rows = {}
    for label, pn in needed.items():
        k = pn.k_or_inf[pn.attacked]
        k = np.where(np.isinf(k), over, k)
        if not len(k):
            rows[label] = {"attacked": 0}
            continue
        ci = stats.bootstrap_interval(lambda idx: float(np.median(k[idx])), len(k), n_resamples=cfg["bootstrap"],
                                      seed=cfg["seed"])
        shown = {key: np.inf if ci[key] >= over else ci[key] for key in ("estimate", "low", "high")}  # inf: > k_max
        rows[label] = {"attacked": int(len(k)), "median pixels": shown["estimate"], "low": shown["low"],
                       "high": shown["high"],
                       "fooled within schedule %": 100 * float((k < over).mean()),
                       "mean queries per item": float(pn.queries[pn.attacked].mean())}
    return pd.DataFrame(rows).T


def paired_attack_tests(needed: dict, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """For each (a, b) pair of models on the same items: at every k, McNemar's exact test on "fooled with at most k
    pixels"; positive difference = a is fooled more often."""
    rows = []
    for a, b in pairs:
        pa, pb = needed[a], needed[b]
        both = pa.attacked & pb.attacked
        for k in pa.schedule:
            sa = (pa.k_needed > 0) & (pa.k_needed <= k)
            sb = (pb.k_needed > 0) & (pb.k_needed <= k)
            t = stats.mcnemar_exact(sa[both], sb[both])
            rows.append({"a": a, "b": b, "pixels": k, "items": int(both.sum()), "a fooled %": 100 * sa[both].mean()
                         if both.any() else np.nan, "b fooled %": 100 * sb[both].mean() if both.any() else np.nan,
                         "only a fooled": t["b"], "only b fooled": t["c"], "p_value": t["p_value"]})
    return pd.DataFrame(rows)


def paired_sentence(tests: pd.DataFrame, a: str, b: str) -> str:
    """Which of two models on the same items is fooled less often, decided by McNemar's exact test (5 % level) at
    the smallest k where ``a`` is fooled on half its items, else at the largest k. For ``b`` = ``a`` + the clean text,
    "b is fooled less often" means the text blunts the attack."""
    part = tests[(tests.a == a) & (tests.b == b)].sort_values("pixels")
    if part.empty or part["items"].iloc[0] == 0:
        return f"{a} vs {b}: no item was attacked by both"
    at = part[part["a fooled %"] >= 50]
    row = at.iloc[0] if len(at) else part.iloc[-1]
    verdict = (f"{b} is fooled less often" if row["p_value"] < 0.05 and row["only a fooled"] > row["only b fooled"]
               else f"{a} is fooled less often" if row["p_value"] < 0.05
               else "no detectable difference")
    return (f"{a} vs {b} at {int(row['pixels'])} pixels, {int(row['items'])} items: fooled {row['a fooled %']:.0f} % "
            f"vs {row['b fooled %']:.0f} % (only {a}: {int(row['only a fooled'])}, only {b}: "
            f"{int(row['only b fooled'])}; McNemar p = {row['p_value']:.2g}): {verdict}")


def attack_payload(needed: dict) -> dict:
    """The arrays of every attack, for the predictions file: per model ``<slug>_k_needed``, ``<slug>_attacked``,
    ``<slug>_rows``, ``<slug>_queries``, and per model and k the report's arrays under ``<slug>_k<k>_*``."""
    out = {}
    for label, pn in needed.items():
        s = slug(label)
        out.update({f"{s}_rows": pn.rows, f"{s}_attacked": pn.attacked, f"{s}_k_needed": pn.k_needed,
                    f"{s}_queries": pn.queries, f"{s}_schedule": np.array(pn.schedule, np.int64)})
        for k, rep in pn.reports.items():
            out.update(A.to_arrays(rep, f"{s}_k{k}"))
    return out


def successes(needed: dict) -> list:
    """Every confirmed success as (model, k, AttackResult), smallest k first."""
    return [(label, k, r) for label, pn in needed.items() for k, rep in sorted(pn.reports.items())
            for r in rep.results if r.success]


# ------------------------------------------------------------------------------------------------ defence
def transfer_through_filter(needed: dict, defended: dict, images: np.ndarray, batch_size: int = 32) -> pd.DataFrame:
    """The successful adversarial images fed through the same models behind a median filter: how many still fool."""
    rows = {}
    for label, pn in needed.items():
        won = [(k, r) for k, rep in pn.reports.items() for r in rep.results if r.success]
        if won:
            adv = A.apply_pixels(images[[r.row for _, r in won]], _padded([r.pixels for _, r in won]))
            rws = np.array([r.row for _, r in won])
            scores = A.score_images(defended[label], adv, rws, batch_size=batch_size)
            still = int((~A.correct_top1(scores, defended[label].truth(rws))).sum())
        else:
            still = 0
        rows[label] = {"successes": len(won), "still fooled behind the filter": still}
    return pd.DataFrame(rows).T


def _padded(pixel_lists) -> np.ndarray:
    k = max(len(p) for p in pixel_lists)
    out = np.full((len(pixel_lists), k, 5), -1, np.int64)
    for i, p in enumerate(pixel_lists):
        out[i, :len(p)] = p
    return out


def defended_encoder(image_encoder, size: int):
    """The image encoder behind a ``size`` x ``size`` median filter (the defence), as one module."""
    enc = torch.nn.Sequential(MedianFilter(size), image_encoder).eval()
    enc.fingerprint = f"median{size}+{image_encoder.fingerprint}"
    return enc


def emotic_defence(data: Data, models: dict, needed: dict, cfg: dict) -> pd.DataFrame:
    """The median filter's price and effect per model: clean test mAP without and with the filter on both image
    inputs, and how many successful attacks still fool the filtered pipeline."""
    split, test = data.splits["test"], data.features["test"]
    size = cfg["median_size"]
    filtered = {kind: encoders.image_features(data.image_encoder, median_filter_defence(np.asarray(getattr(split, kind)),
                                                                                        size), desc=f"filtered {kind}")
                for kind in ("body", "context")}
    defended = emotic_pipelines(data, models, defended_encoder(data.image_encoder, size))
    table = transfer_through_filter(needed, defended, np.asarray(split.context))
    table["clean mAP"] = [emotic_metrics(predict(models[m], test)["scores"], test["cat"])["mAP"] for m in table.index]
    table["clean mAP, filtered"] = [emotic_metrics(predict(models[m], {**test, **filtered})["scores"], test["cat"])["mAP"]
                                    for m in table.index]
    return table


def flickr_defence(data: Data, models: dict, needed: dict, cfg: dict) -> pd.DataFrame:
    """As :func:`emotic_defence` for Flickr8k: clean test mean R@1 without and with the median filter on the test
    images, and how many successful attacks still fool the filtered pipeline."""
    split, test = data.splits["test"], data.features["test"]
    images = np.asarray(split.images)
    filtered = encoders.image_features(data.image_encoder, median_filter_defence(images, cfg["median_size"]),
                                       desc="filtered test images")
    defended = flickr_pipelines(data, models, defended_encoder(data.image_encoder, cfg["median_size"]))
    table = transfer_through_filter(needed, defended, images)
    table["clean mean R@1"] = [retrieval_metrics(models[m].similarity(test["image"], test["text"]),
                                                 test["caption_image"])["mean_R@1"] for m in table.index]
    table["clean mean R@1, filtered"] = [retrieval_metrics(models[m].similarity(filtered, test["text"]),
                                                           test["caption_image"])["mean_R@1"] for m in table.index]
    return table


# ---------------------------------------------------------------------------------------------- poisoning
def prefix_maps(prefix: torch.nn.Module, images: np.ndarray, batch_size: int | None = None, desc: str | None = None
                ) -> np.ndarray:
    """The frozen prefix of a split encoder (``ImageEncoder.split``) on uint8 (N,H,W,3) images: float32 NumPy
    maps (N, C, h, w), computed batch by batch on the prefix's device, in float32 (they are training inputs)."""
    out = [maps for _, maps in encoders.batched_outputs(prefix, images, prefix.mean.device, batch_size, desc,
                                                         autocast=False)]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def backdoor_columns(hit: np.ndarray, control: np.ndarray) -> dict:
    """A poisoning row's rates from per-item booleans on the same eligible items: the target answered with the
    trigger (backdoor success) and without it (the control), in percent with Wilson intervals, and McNemar's exact
    test of what the trigger adds."""
    out = {}
    for column, won in (("backdoor success %", hit), ("target top-1 on clean images %", control)):
        r = stats.success_rate_interval(int(won.sum()), len(won))
        out.update({column: r["estimate"], f"{column} low": r["low"], f"{column} high": r["high"]})
    out["trigger adds (McNemar p)"] = stats.mcnemar_exact(hit, control)["p_value"]
    return out


def emotic_poisoning(data: Data, cfg: dict, labels: list[str]) -> tuple[pd.DataFrame, dict]:
    """Pixel-trigger poisoning: a trigger stamped on a seeded fraction of training photos (scene and body), their
    labels switched to the target; each model retrained (same recipe) and scored on triggered test photos.

    Two attacks on the training pipeline: the *frozen encoder* (only the heads retrain on the stamped photos'
    features) and, when ``poison_finetune="last"``, *end to end*: the image encoder's final blocks retrain with the
    heads on the stamped photos (``ImageEncoder.split``: the frozen prefix runs once per photo, the blocks every
    step), so the encoder itself can learn to see the trigger.

    Returns a table (model x fraction: backdoor success with its Wilson interval, the clean-image control = the same
    poisoned model's rate of choosing the target on untriggered photos, with its interval, McNemar's test of the
    trigger's effect, clean mAP) and the raw scores keyed by (model, fraction).
    """
    if cfg["poison_finetune"] not in (None, False, "last"):
        raise ValueError(f"poison_finetune must be null (or false) or 'last', got {cfg['poison_finetune']!r}")
    tables, scores = [], {}
    for finetune in (False, True) if cfg["poison_finetune"] else (False,):
        table, s = _emotic_poisoning(data, cfg, labels, finetune)
        tables.append(table)
        scores.update(s)
    return pd.concat(tables, ignore_index=True), scores


def _emotic_poisoning(data: Data, cfg: dict, labels: list[str], finetune: bool) -> tuple[pd.DataFrame, dict]:
    splits = data.splits
    trigger = dict(size=cfg["trigger_size"], position=cfg["trigger_position"])
    target = CATEGORY_INDEX[cfg["poison_target"]]
    if finetune:  # the encoder's prefix maps stand in for features; the final blocks train in train_emotic
        prefix, blocks = data.image_encoder.split()
        encode = lambda images, desc=None: prefix_maps(prefix, images, desc=desc)  # noqa: E731
        clean = {name: {**data.features[name], **{kind: encode(getattr(splits[name], kind), f"{name} {kind} maps")
                                                  for kind in ("body", "context")}} for name in ("train", "val", "test")}
    else:
        blocks = None
        encode = lambda images, desc=None: encoders.image_features(data.image_encoder, images, desc=desc)  # noqa: E731
        clean = data.features
    test = clean["test"]
    triggered = {kind: encode(stamp_trigger(np.asarray(getattr(splits["test"], kind)), **trigger), f"triggered {kind}")
                 for kind in ("body", "context")}
    eligible = test["cat"][:, target] < 0.5
    rows, scores = [], {}
    for fraction in cfg["poison_fractions"]:
        p = poison_emotic(splits["train"].context, clean["train"]["cat"], fraction, cfg["poison_target"],
                          seed=cfg["seed"], **trigger)
        poisoned = dict(clean["train"], cat=p.labels)
        if len(p.indices):  # the stamped copies' inputs, computed from their new pixels
            body = stamp_trigger(np.asarray(splits["train"].body[p.indices]), **trigger)
            for kind, imgs in (("context", p.images), ("body", body)):
                poisoned[kind] = poisoned[kind].copy()
                poisoned[kind][p.indices] = encode(imgs)
        for label in labels:
            trained = train_emotic(data, cfg, label, train=poisoned, val=clean["val"], finetune=blocks,
                                   tag="clean" if fraction == 0 else f"poison-{cfg['poison_target']}-{fraction:g}",
                                   progress=False)
            model = trained.model
            s = {"clean": predict(model, test)["scores"], "triggered": predict(model, {**test, **triggered})["scores"]}
            name = f"{label}, {FINETUNED}" if finetune else label
            scores[name, fraction] = s
            rows.append({"model": name, "encoder": FINETUNED if finetune else "frozen", "fraction": fraction,
                         "poisoned images": len(p.indices),
                         **backdoor_columns(s["triggered"][eligible].argmax(1) == target,
                                            s["clean"][eligible].argmax(1) == target),
                         "clean mAP": emotic_metrics(s["clean"], test["cat"])["mAP"], "checkpoint": trained.checkpoint.name})
    return pd.DataFrame(rows), scores


def flickr_poisoning(data: Data, cfg: dict, label: str, baseline_factory) -> tuple[pd.DataFrame, dict]:
    """Flickr8k frozen-encoder poisoning: stamped training images paired with the attacker's caption; the joint model
    (``label``) and the closed-form baseline (``baseline_factory(train) -> model``) refitted; backdoor success = the
    target caption ranked first for a triggered test image (Wilson interval), control = same on clean images."""
    split, train_split, test = data.splits["test"], data.splits["train"], data.features["test"]
    trigger = dict(size=cfg["trigger_size"], position=cfg["trigger_position"])
    target_text = encoders.text_features(data.text_encoder, [cfg["target_caption"]], cache=False)
    texts = np.concatenate([test["text"], target_text])
    trig = encoders.image_features(data.image_encoder, stamp_trigger(np.asarray(split.images), **trigger),
                                   desc="triggered test images")
    rows, scores = [], {}
    for fraction in cfg["poison_fractions"]:
        p = poison_flickr(train_split.images, train_split.caption_texts, train_split.caption_image, fraction,
                          cfg["target_caption"], seed=cfg["seed"], **trigger)
        poisoned = dict(data.features["train"])
        if len(p.indices):
            poisoned["image"] = poisoned["image"].copy()
            poisoned["image"][p.indices] = encoders.image_features(data.image_encoder, p.images)
            # every caption of a poisoned image became the target caption: its features, not a re-encoding of all
            replaced = np.isin(p.caption_image, p.indices)
            poisoned["text"] = poisoned["text"].copy()
            poisoned["text"][replaced] = target_text[0]
        tag = "clean" if fraction == 0 else f"poison-{fraction:g}"
        models = {label: train_flickr_joint(data, cfg, label, train=poisoned, tag=tag, progress=False).model,
                  "both maps": baseline_factory(poisoned)}
        for name, m in models.items():
            s_trig, s_clean = m.similarity(trig, texts), m.similarity(test["image"], texts)
            scores[name, fraction] = {"triggered": s_trig, "clean": s_clean}
            rows.append({"model": name, "encoder": "frozen", "fraction": fraction, "poisoned images": len(p.indices),
                         **backdoor_columns(s_trig.argmax(1) == len(texts) - 1, s_clean.argmax(1) == len(texts) - 1),
                         "clean mean R@1": retrieval_metrics(m.similarity(test["image"], test["text"]),
                                                             test["caption_image"])["mean_R@1"]})
    return pd.DataFrame(rows), scores


# ------------------------------------------------------------------------------------------------ findings
def attack_lines(curve: pd.DataFrame, median: pd.DataFrame, cfg: dict, items: str) -> list[str]:
    """One sentence per model: share fooled with at most the largest k (Wilson interval) and the median k needed."""
    k_max = max(cfg["pixels"])
    lines = []
    for m, r in curve[curve.pixels == k_max].set_index("model").iterrows():
        med = median.loc[m] if m in median.index else {}
        if "median pixels" in med and not np.isnan(med["median pixels"]):
            show = lambda v: f"> {k_max}" if np.isinf(v) else f"{v:g}"  # noqa: E731
            needed = f"median pixels needed {show(med['median pixels'])} [{show(med['low'])}, {show(med['high'])}]"
        else:
            needed = "no item attacked"
        lines.append(f"{m}: {r['success %']:.0f} % of {int(r['attacked'])} {items} fooled with at most {k_max} "
                     f"pixels (95 % interval {r['success % low']:.0f} to {r['success % high']:.0f} %); {needed}")
    return lines


def robustness_findings(attacks: AttackRun, defence: pd.DataFrame, poisoning: pd.DataFrame, cfg: dict) -> Findings:
    """The sentences of notebooks 05 and 06, computed from their tables (the clean metric is mAP for Emotic, mean
    R@1 for Flickr8k)."""
    metric = "mAP" if "clean mAP" in defence.columns else "mean R@1"
    items = "persons" if metric == "mAP" else "images"
    at_max = attacks.curve[attacks.curve.pixels == max(cfg["pixels"])].set_index("model")
    lines = attack_lines(attacks.curve, attacks.median, cfg, items) + attacks.sentences
    lines += [f"median filter, {m}: clean {metric} {r[f'clean {metric}']:.1f} -> {r[f'clean {metric}, filtered']:.1f}; "
              f"{int(r['still fooled behind the filter'])} of {int(r['successes'])} successful attacks still fool it"
              for m, r in defence.iterrows()]
    top = poisoning[poisoning.fraction == max(cfg["poison_fractions"])]
    lines += [f"poisoning {100 * r['fraction']:g} % of the training images, {r['model']}: backdoor success "
              f"{r['backdoor success %']:.0f} % [{r['backdoor success % low']:.0f}, {r['backdoor success % high']:.0f}] "
              f"of triggered test {items} against {r['target top-1 on clean images %']:.0f} % without the trigger "
              f"(McNemar p = {r['trigger adds (McNemar p)']:.2g}); clean {metric} {r[f'clean {metric}']:.1f}"
              for _, r in top.iterrows()]
    targets = {"attacked": {m: int(r["attacked"]) for m, r in at_max.iterrows()},
               "success_at_max_k_%": {m: float(r["success %"]) for m, r in at_max.iterrows()},
               "majority_fooled": {m: bool(r["success %"] > 50) for m, r in at_max.iterrows()}}
    return Findings(lines, targets)


# ------------------------------------------------------------------------------------------------ galleries
def top_category(scores) -> str:
    j = int(np.argmax(scores))
    return f"{CATEGORIES[j]} {scores[j]:.2f}"


def emotic_gallery(data: Data, needed: dict, n: int, path=None):
    """The first ``n`` successful attacks: scene before and after, the changed pixels, top category before and after."""
    from .plots import attack_gallery

    scenes, wins = data.splits["test"].context, successes(needed)[:n]
    if not wins:
        return None
    return attack_gallery([scenes[r.row] for _, _, r in wins],
                          [A.apply_pixels(scenes[[r.row]], r.pixels[None])[0] for _, _, r in wins],
                          [r.pixels for _, _, r in wins], [top_category(r.scores_before) for _, _, r in wins],
                          [top_category(r.scores_after) for _, _, r in wins],
                          labels=[f"{label}, {k} px, person {r.row}" for label, k, r in wins],
                          title="few-pixel attacks: before and after", path=path)


def flickr_gallery(data: Data, needed: dict, n: int, path=None):
    """The first ``n`` successful attacks: image before and after, the changed pixels, first caption before and after."""
    from .plots import attack_gallery

    split, wins = data.splits["test"], successes(needed)[:n]
    if not wins:
        return None
    images, captions, owner = split.images, split.caption_texts, data.features["test"]["caption_image"]
    first = lambda scores: int(np.argmax(scores))  # noqa: E731
    return attack_gallery([images[r.row] for _, _, r in wins],
                          [A.apply_pixels(images[[r.row]], r.pixels[None])[0] for _, _, r in wins],
                          [r.pixels for _, _, r in wins], [captions[first(r.scores_before)] for _, _, r in wins],
                          [captions[first(r.scores_after)] for _, _, r in wins],
                          own_before=[owner[first(r.scores_before)] == r.row for _, _, r in wins],
                          own_after=[owner[first(r.scores_after)] == r.row for _, _, r in wins],
                          labels=[f"{label}, {k} px, image {r.row}" for label, k, r in wins],
                          title="few-pixel attacks: first-ranked caption before and after", path=path)


__all__ = ["AttackRun", "attack_models", "attacked_rows", "emotic_pipelines", "flickr_pipelines", "budget",
           "pixels_needed", "attack_items", "attack_chunk", "merge_needed", "success_table", "median_pixels",
           "paired_attack_tests", "paired_sentence", "attack_payload", "successes", "transfer_through_filter",
           "defended_encoder", "emotic_defence", "emotic_poisoning", "flickr_poisoning", "flickr_defence",
           "robustness_findings", "attack_lines", "emotic_gallery", "flickr_gallery", "rank1_rows", "emotic_right",
           "top_category", "emotic_chance"]
