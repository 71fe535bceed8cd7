"""The experiments of part 3: few-pixel attacks on the models of parts 1 and 2, pixel-trigger poisoning, and a
median-filter defence. The notebooks 05 and 06 call these; the searches themselves live in ``utils.attack``, and
attacks computed ahead by ``scripts/robustness.py`` in ``utils.precomputed_attacks``.

Every attack goes through the whole pipeline from raw uint8 pixels (image encoder included) with the text held
clean. Persons / images are drawn at random among those every attacked model gets right, so the models are
compared on the same items; each rate carries a Wilson 95 % interval. The rules of the findings (docs/robustness.md):
each states its search and budget; a rate whose success count still grew in the last half of the budget at the
largest k is a lower bound, and a difference between two models is then "not settled"; models are compared by
McNemar's exact test at the largest k, fixed in advance, Holm-adjusted over the schedule; the adaptive attack on
the median filter uses the same searches and budget as the transfer it is shown beside; the poisoning headline is
the trigger's effect (backdoor minus control on the same items) with a paired interval.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import attack as A
from .attack.sparse_pgd import STEP_COST
from . import encoders, stats
from .experiments import FINETUNED, Data, Findings, emotic_chance, slug, train_emotic, train_flickr_joint
from .labels import CATEGORIES, CATEGORY_INDEX
from .metrics import retrieval_metrics, retrieval_ranks
from .poisoning import median_filter_defence, poison_emotic, poison_flickr, stamp_trigger
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


# ------------------------------------------------------------------------------------ the search and its budget
#: which searches an ``attack_method`` runs, by member name (an ensemble's result per item is its members' worst
#: case, as in Sparse-AutoAttack: the white-box member first is the worst case, the black-box member alone is the
#: realistic attacker that sees only the scores)
MEMBERS = {"ensemble": {"white-box": "sparse-pgd", "black-box": "sparse"}, "sparse": {"black-box": "sparse"},
           "de": {"black-box": "de"}, "sparse-pgd": {"white-box": "sparse-pgd"}}


def members(cfg: dict) -> dict:
    """member name -> the keywords ``utils.attack.pixels_needed`` runs it with (method, budget per k, seed...).
    The white-box budget goes in as ``queries`` (forward-equivalents: ``STEP_COST`` per step and restart), which
    sparse-PGD turns back into ``attack_steps`` steps per restart."""
    if cfg["attack_method"] not in MEMBERS:
        raise ValueError(f"attack_method must be one of {sorted(MEMBERS)}, got {cfg['attack_method']!r}")
    out = {}
    for member, method in MEMBERS[cfg["attack_method"]].items():
        kw = dict(method=method, seed=cfg["attack_seed"], progress=False)
        if method == "sparse-pgd":  # its own (smaller) batch: the backward pass keeps the activations
            restarts = cfg["attack_restarts"]
            kw.update(restarts=restarts, queries=STEP_COST * restarts * cfg["attack_steps"])
        else:
            kw.update(queries=cfg["attack_queries"], batch_size=cfg["attack_batch"], precision=cfg["attack_precision"])
        if method == "de":
            kw.update(popsize=cfg["popsize"], F=cfg["F"])
        out[member] = kw
    return out


def budget_statement(cfg: dict) -> str:
    """The search and its budget in words, as every finding states it."""
    words = {"sparse-pgd": f"white-box sparse-PGD, {cfg['attack_restarts']} x {cfg['attack_steps']} steps",
             "sparse": f"sparse search, {cfg['attack_queries']} queries",
             "de": f"differential evolution, {cfg['attack_queries']} queries"}
    parts = [words[m] for m in MEMBERS[cfg["attack_method"]].values()]
    return ("ensemble: " if len(parts) > 1 else "") + ", and ".join(parts) + " per k"


def _late(result, settings: dict) -> bool:
    """A success found in the last half of its search's budget (``queries`` of a success: the query, or for the
    white-box search the forward-equivalent, at which it was fooled)."""
    if settings["method"] == "sparse-pgd":
        budget = settings["step_cost"] * settings["restarts"] * settings["steps"]
    else:
        budget = settings.get("queries") or settings["popsize"] * (settings["generations"] + 1)
    return result.queries > budget / 2


def run_label(label: str, member: str) -> str:
    """The key of one member's search of one model in ``AttackRun.runs`` and the saved arrays."""
    return f"{label} [{member}]"


# ------------------------------------------------------------------------------------------------ searching
def pixels_needed(pipelines: dict, images: np.ndarray, rows: np.ndarray, cfg: dict, *,
                  precomputed: bool = True) -> dict:
    """``run_label(model, member)`` -> ``utils.attack.PixelsNeeded`` over the pixel schedule ``cfg['pixels']`` for
    every member search of ``cfg['attack_method']`` (:func:`members`), same rows for every model.

    With ``precomputed`` (the default), results that ``scripts/robustness.py`` merged for exactly this
    configuration (``utils.precomputed_attacks.attack_key``: the searches and their settings, the attack code, the
    pipelines' content, rows, attacked photos) are loaded instead of attacking again.
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
    """The searches themselves (no look-up): ``run_label(model, member)`` -> ``PixelsNeeded`` of the ``rows`` of
    ``images``, attacked ``chunk`` items at a time (default :func:`attack_chunk`) and concatenated.

    Why chunks: each image's search is seeded by (seed, row), so its decisions do not depend on the other images
    in the batch, but a batched forward pass rounds differently with another batch size (the last bits of the
    scores). Fixed chunks make the result independent of how many processes share the rows.
    """
    from .experiments import threads

    rows = np.asarray(rows, np.int64)
    chunk = attack_chunk(cfg) if chunk is None else int(chunk)
    searches = members(cfg)
    parts = []
    with threads(cfg["attack_threads"]):
        for a in range(0, len(rows), chunk):
            part = rows[a:a + chunk]
            parts.append({run_label(label, member): A.pixels_needed(pipe, images[part], part, schedule=cfg["pixels"],
                                                                    **kw)
                          for label, pipe in pipelines.items() for member, kw in searches.items()})
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


def ensemble_needed(runs: dict) -> A.PixelsNeeded:
    """The attack's result from its members' (member -> ``PixelsNeeded`` on the same rows): per item the smallest k
    at which any member fooled it; queries are summed. Without reports: the successes are the members'."""
    pns = list(runs.values())
    first = pns[0]
    for p in pns[1:]:
        if not (np.array_equal(p.rows, first.rows) and np.array_equal(p.attacked, first.attacked)
                and p.schedule == first.schedule):
            raise ValueError("utils/robustness.py: the members of an attack were not run on the same items")
    never = np.iinfo(np.int64).max
    k = np.stack([np.where(p.k_needed > 0, p.k_needed, never) for p in pns]).min(0)
    return A.PixelsNeeded(rows=first.rows, attacked=first.attacked, k_needed=np.where(k == never, -1, k),
                          queries=np.sum([p.queries for p in pns], axis=0), schedule=first.schedule, reports={})


def budget_status(runs: dict) -> dict:
    """Whether the budget settled the attack (member -> ``PixelsNeeded`` of one model): at the largest k, the items
    the attack fooled there (not before) and, of them, those every member that fooled them fooled only in the last
    half of its budget. Any such item means the success count was still growing: the rate is a lower bound."""
    ens = ensemble_needed(runs)
    k_max = max(ens.schedule)
    at_max = set(ens.rows[(ens.k_needed == k_max) & ens.attacked].tolist())
    late = set(at_max)
    for pn in runs.values():
        rep = pn.reports.get(k_max)
        early = {r.row for r in rep.results if r.success and not _late(r, rep.settings)} if rep else set()
        late -= early
    return {"fooled at largest k": len(at_max), "fooled late": len(late), "settled": not late}


@dataclass
class AttackRun:
    """Everything the few-pixel section of a robustness notebook shows: each member search per model (``runs``,
    what is saved and re-fed), the attack per model (``needed``: the members' worst case per item), the budget in
    words and whether it settled (``status``), success against k with Wilson intervals for the attack (``curve``)
    and for each member with its own budget status (``member_curve``), the median pixels needed (``median``),
    McNemar's test between paired models at every k with Holm-adjusted p-values (``paired``), the ``pairs``, each pair's sentence (``sentences``) and
    its conclusion alone (``verdicts``)."""
    runs: dict
    needed: dict
    budget: str
    status: pd.DataFrame
    curve: pd.DataFrame
    member_curve: pd.DataFrame
    median: pd.DataFrame
    paired: pd.DataFrame
    pairs: list
    sentences: list
    verdicts: list


def summarise(runs: dict, labels: list, cfg: dict, pairs: list) -> AttackRun:
    """The tables and sentences of an attack from its member searches (``run_label(model, member)`` ->
    ``PixelsNeeded``)."""
    by_model = {label: {m: runs[run_label(label, m)] for m in MEMBERS[cfg["attack_method"]]} for label in labels}
    needed = {label: ensemble_needed(r) for label, r in by_model.items()}
    status = pd.DataFrame({label: budget_status(r) for label, r in by_model.items()}).T
    member_curve = pd.concat([success_table({label: pn}).assign(member=m, settled=budget_status({m: pn})["settled"])
                              for label, r in by_model.items() for m, pn in r.items()], ignore_index=True)
    paired = paired_attack_tests(needed, pairs)
    sentences = [paired_sentence(paired, a, b, status, budget_statement(cfg)) for a, b in pairs]
    return AttackRun(runs, needed, budget_statement(cfg), status, success_table(needed), member_curve,
                     median_pixels(needed, cfg), paired, list(pairs), sentences,
                     [pair_verdict(paired, a, b, status) for a, b in pairs])


def attack_models(pipelines: dict, images: np.ndarray, rows: np.ndarray, cfg: dict, pairs: list, title: str,
                  path=None) -> AttackRun:
    """The few-pixel experiment of notebooks 05 / 06: every model attacked on the same ``rows`` over the pixel
    schedule by every member of the attack, the tables built from it, and the success-against-k figure (``title``,
    saved to ``path``)."""
    from .plots import attack_curves

    run = summarise(pixels_needed(pipelines, images, rows, cfg), list(pipelines), cfg, pairs)
    attack_curves(run.curve, title=f"{title}\n{run.budget}", path=path)
    return run


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
    pixels", and its p-value Holm-adjusted over the k of the schedule (a family per pair); positive difference =
    a is fooled more often."""
    rows = []
    for a, b in pairs:
        pa, pb = needed[a], needed[b]
        both = pa.attacked & pb.attacked
        family = []
        for k in pa.schedule:
            sa = (pa.k_needed > 0) & (pa.k_needed <= k)
            sb = (pb.k_needed > 0) & (pb.k_needed <= k)
            t = stats.mcnemar_exact(sa[both], sb[both])
            family.append({"a": a, "b": b, "pixels": k, "items": int(both.sum()), "a fooled %": 100 * sa[both].mean()
                           if both.any() else np.nan, "b fooled %": 100 * sb[both].mean() if both.any() else np.nan,
                           "only a fooled": t["b"], "only b fooled": t["c"], "p_value": t["p_value"]})
        for row, p in zip(family, stats.holm([r["p_value"] for r in family])):
            row["p (Holm)"] = float(p)
        rows += family
    return pd.DataFrame(rows)


#: the verdict when no model is declared more robust, whatever the reason (not settled, or no detectable difference):
#: the reason is stated in the sentence, the verdict stays the same on every machine and seed
NO_VERDICT = "no model is declared more robust"


def pair_verdict(tests: pd.DataFrame, a: str, b: str, status: pd.DataFrame | None = None) -> str:
    """Which of two models on the same items is fooled less often. Declared only when the budget settled for both
    models (``status``, :func:`budget_status`) and McNemar's exact test at the largest k of the schedule (fixed
    before any result is seen), Holm-adjusted over the schedule, is significant at the 5 % level; otherwise
    :data:`NO_VERDICT`. A budget that did not settle, or a difference within the test's noise, can change with the
    machine or the seed; a verdict must not. For ``b`` = ``a`` + the clean text, "b is fooled less often" means the
    text blunts the attack."""
    part = tests[(tests.a == a) & (tests.b == b)].sort_values("pixels")
    if part.empty or part["items"].iloc[0] == 0:
        return "no item was attacked by both"
    row = part.iloc[-1]
    if _rising(status, a, b) or not row["p (Holm)"] < 0.05:
        return NO_VERDICT
    return f"{b if row['only a fooled'] > row['only b fooled'] else a} is fooled less often"


def _rising(status: pd.DataFrame | None, *models: str) -> list:
    return [m for m in models if status is not None and not bool(status.loc[m, "settled"])]


def paired_sentence(tests: pd.DataFrame, a: str, b: str, status: pd.DataFrame | None = None, budget: str = "") -> str:
    """The sentence of a pair: counts and tests at the largest k, why no model is declared more robust when none is
    (success still rising late: "not settled at this budget"; else "no detectable difference"), then
    :func:`pair_verdict`."""
    part = tests[(tests.a == a) & (tests.b == b)].sort_values("pixels")
    if part.empty or part["items"].iloc[0] == 0:
        return f"{a} vs {b}: no item was attacked by both"
    row = part.iloc[-1]
    rising = _rising(status, a, b)
    verdict = pair_verdict(tests, a, b, status)
    reason = (f"; success still rising in the last half of the budget for {' and '.join(rising)}: not settled at "
              f"this budget, the rates are lower bounds" if rising else
              "; no detectable difference" if verdict == NO_VERDICT else "")
    return (f"{a} vs {b} at {int(row['pixels'])} pixels (the largest k, fixed in advance), {int(row['items'])} items"
            f"{f', {budget}' if budget else ''}: fooled {row['a fooled %']:.0f} % vs {row['b fooled %']:.0f} % "
            f"(only {a}: {int(row['only a fooled'])}, only {b}: {int(row['only b fooled'])}; McNemar p = "
            f"{row['p_value']:.2g}, Holm-adjusted over {len(part)} k: {row['p (Holm)']:.2g}{reason}): {verdict}")


def attack_payload(runs: dict, needed: dict | None = None, prefix: str = "") -> dict:
    """The arrays of every attack, for the predictions file: per member search (``runs``) ``<slug>_k_needed``,
    ``<slug>_attacked``, ``<slug>_rows``, ``<slug>_queries``, ``<slug>_schedule``, and per k the report's arrays
    under ``<slug>_k<k>_*``; per model of ``needed`` (the members' worst case) the same without reports. The slug
    is that of ``prefix`` + the label (e.g. "adaptive " for the attack on the defence)."""
    out = {}
    for label, pn in {**runs, **(needed or {})}.items():
        s = slug(prefix + label)
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
def transfer_through_filter(runs: dict, defended: dict, images: np.ndarray, batch_size: int = 32) -> pd.DataFrame:
    """Every successful adversarial image of every member search (``runs``: ``run_label(model, member)`` ->
    ``PixelsNeeded``) fed through the same model behind the median filter (``defended``: model -> pipeline): per
    model, the items fooled without the filter and how many of them one of their adversarial images still fools."""
    rows = {}
    for label, pipe in defended.items():
        won = [r for key, pn in runs.items() if key.startswith(f"{label} [") for rep in pn.reports.values()
               for r in rep.results if r.success]
        still = set()
        if won:
            adv = A.apply_pixels(images[[r.row for r in won]], _padded([r.pixels for r in won]))
            rws = np.array([r.row for r in won])
            fooled = ~A.correct_top1(A.score_images(pipe, adv, rws, batch_size=batch_size), pipe.truth(rws))
            still = set(rws[fooled].tolist())
        rows[label] = {"fooled": len({r.row for r in won}), "still fooled behind the filter": len(still)}
    return pd.DataFrame(rows).T


def defence_table(runs: dict, adaptive: dict, defended: dict, images: np.ndarray, cfg: dict) -> pd.DataFrame:
    """The median filter against the attack of ``runs``: the transfer (its adversarial images through the filter,
    :func:`transfer_through_filter`) beside the adaptive attack (``adaptive``: the same searches run on the
    ``defended`` pipelines; the white-box member passes its gradient straight through the filter), whose success
    with at most the largest k pixels carries a Wilson interval and its budget status. Both must come from the
    same searches with the same budget: a report whose settings differ between the two is an error."""
    for key, pn in runs.items():
        for k, rep in pn.reports.items():
            other = adaptive[key].reports.get(k) if key in adaptive else None
            if other is not None and other.settings != rep.settings:
                raise ValueError(f"utils/robustness.py: the adaptive attack on {key} at k={k} ran with "
                                 f"{other.settings}, the attack it is compared with with {rep.settings}")
    if {key for key in adaptive} != {key for key in runs}:
        raise ValueError(f"utils/robustness.py: adaptive searches {sorted(adaptive)} are not those of the attack "
                         f"{sorted(runs)}")
    rows = {}
    for label in defended:
        mine = {m: adaptive[run_label(label, m)] for m in MEMBERS[cfg["attack_method"]]}
        pn = ensemble_needed(mine)
        n, won = int(pn.attacked.sum()), int(((pn.k_needed > 0) & pn.attacked).sum())
        r = stats.success_rate_interval(won, n)
        rows[label] = {"adaptive: attacked": n, "adaptive: fooled": won, "adaptive %": r["estimate"],
                       "adaptive % low": r["low"], "adaptive % high": r["high"],
                       "adaptive settled": budget_status(mine)["settled"], "budget": budget_statement(cfg)}
    return transfer_through_filter(runs, defended, images).join(pd.DataFrame(rows).T.infer_objects())


def adaptive_attack(pipelines: dict, images: np.ndarray, rows: np.ndarray, cfg: dict) -> tuple[dict, dict]:
    """The adaptive attack on the defence: every model behind a ``median_size`` median filter inside its pipeline
    (``utils.attack.median_defended``), attacked by the same searches with the same budget on the same rows, at
    the largest k of the schedule only: the one the findings report (and half the cost of the whole schedule or
    less). Returns (defended pipelines, ``run_label(model, member)`` -> ``PixelsNeeded``)."""
    defended = {label: A.median_defended(p, cfg["median_size"]) for label, p in pipelines.items()}
    return defended, pixels_needed(defended, images, rows, {**cfg, "pixels": [max(cfg["pixels"])]})


def _padded(pixel_lists) -> np.ndarray:
    k = max(len(p) for p in pixel_lists)
    out = np.full((len(pixel_lists), k, 5), -1, np.int64)
    for i, p in enumerate(pixel_lists):
        out[i, :len(p)] = p
    return out


def clean_map(scores: np.ndarray, labels: np.ndarray, cfg: dict) -> float:
    """The bias-corrected test mAP, exactly as the notebooks' summary tables compute it (same subsets, same seed), so a
    clean mAP here reads against the mAP of notebooks 01, 03 and 05."""
    return stats.bias_corrected_map(scores, labels, n_subsamples=cfg["bootstrap"], seed=cfg["seed"])["estimate"]


def emotic_defence(data: Data, models: dict, attack: AttackRun, rows: np.ndarray, cfg: dict) -> tuple[pd.DataFrame, dict]:
    """The median filter's price and effect per model: clean test mAP without and with the filter on both image
    inputs, the transfer of the attack's successes and the adaptive attack (:func:`defence_table`). Returns the
    table and the adaptive searches (``run_label(model, member)`` -> ``PixelsNeeded``)."""
    split, test = data.splits["test"], data.features["test"]
    filtered = {kind: encoders.image_features(data.image_encoder, median_filter_defence(np.asarray(getattr(split, kind)),
                                                                                        cfg["median_size"]),
                                              desc=f"filtered {kind}") for kind in ("body", "context")}
    images = np.asarray(split.context)
    defended, adaptive = adaptive_attack(emotic_pipelines(data, models), images, rows, cfg)
    table = defence_table(attack.runs, adaptive, defended, images, cfg)
    table["clean mAP"] = [clean_map(predict(models[m], test)["scores"], test["cat"], cfg) for m in table.index]
    table["clean mAP, filtered"] = [clean_map(predict(models[m], {**test, **filtered})["scores"], test["cat"], cfg)
                                    for m in table.index]
    return table, adaptive


def flickr_defence(data: Data, models: dict, attack: AttackRun, rows: np.ndarray, cfg: dict) -> tuple[pd.DataFrame, dict]:
    """As :func:`emotic_defence` for Flickr8k: clean test mean R@1 without and with the median filter on the test
    images, the transfer and the adaptive attack."""
    split, test = data.splits["test"], data.features["test"]
    images = np.asarray(split.images)
    filtered = encoders.image_features(data.image_encoder, median_filter_defence(images, cfg["median_size"]),
                                       desc="filtered test images")
    defended, adaptive = adaptive_attack(flickr_pipelines(data, models), images, rows, cfg)
    table = defence_table(attack.runs, adaptive, defended, images, cfg)
    table["clean mean R@1"] = [retrieval_metrics(models[m].similarity(test["image"], test["text"]),
                                                 test["caption_image"])["mean_R@1"] for m in table.index]
    table["clean mean R@1, filtered"] = [retrieval_metrics(models[m].similarity(filtered, test["text"]),
                                                           test["caption_image"])["mean_R@1"] for m in table.index]
    return table, adaptive


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
    trigger (backdoor success) and without it (the control), in percent with Wilson intervals; the trigger's own
    effect, their difference on the same items, with Newcombe's paired 95 % interval
    (``stats.paired_rate_difference``); and McNemar's exact test of that difference."""
    out = {}
    for column, won in (("backdoor success %", hit), ("target top-1 on clean images %", control)):
        r = stats.success_rate_interval(int(won.sum()), len(won))
        out.update({column: r["estimate"], f"{column} low": r["low"], f"{column} high": r["high"]})
    d = stats.paired_rate_difference(hit, control) if len(hit) else {"difference": np.nan, "low": np.nan, "high": np.nan}
    out.update({"trigger effect (points)": d["difference"], "trigger effect low": d["low"],
                "trigger effect high": d["high"], "trigger adds (McNemar p)": stats.mcnemar_exact(hit, control)["p_value"]})
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
                         "clean mAP": clean_map(s["clean"], test["cat"], cfg), "checkpoint": trained.checkpoint.name})
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
def _rate(r, column: str = "success %") -> str:
    return f"{r[column]:.0f} % (95 % interval {r[f'{column} low']:.0f} to {r[f'{column} high']:.0f} %)"


def attack_lines(attacks: AttackRun, cfg: dict, items: str) -> list[str]:
    """One sentence per model: share fooled with at most the largest k by the attack (Wilson interval) and by each
    member, the median k needed, and whether the budget settled it (else the rate is a lower bound)."""
    k_max = max(cfg["pixels"])
    show = lambda v: f"> {k_max}" if np.isinf(v) else f"{v:g}"  # noqa: E731
    members_at_max = attacks.member_curve[attacks.member_curve.pixels == k_max]
    lines = []
    for m, r in attacks.curve[attacks.curve.pixels == k_max].set_index("model").iterrows():
        med = attacks.median.loc[m] if m in attacks.median.index else {}
        if "median pixels" in med and not np.isnan(med["median pixels"]):
            needed = f"median pixels needed {show(med['median pixels'])} [{show(med['low'])}, {show(med['high'])}]"
        else:
            needed = "no item attacked"
        mine = members_at_max[members_at_max.model == m]
        split = "".join(f"; {row['member']} member{' (the realistic attacker)' if row['member'] == 'black-box' else ''}"
                        f" {_rate(row)}{'' if row['settled'] else ', a lower bound'}" for _, row in mine.iterrows()
                        ) if len(mine) > 1 else ""
        st = attacks.status.loc[m]
        settled = (f"settled: no success came in the last half of the budget at {k_max} pixels" if st["settled"] else
                   f"a lower bound: {int(st['fooled late'])} of the {int(st['fooled at largest k'])} {items} first "
                   f"fooled at {k_max} pixels were fooled only in the last half of the budget")
        lines.append(f"{m} ({attacks.budget}): {_rate(r)} of {int(r['attacked'])} {items} fooled with at most {k_max} "
                     f"pixels{split}; {needed}; {settled}")
    return lines


def defence_lines(defence: pd.DataFrame, metric: str, items: str, k_max: int) -> list[str]:
    """Per model: the filter's price in clean accuracy, the transfer and the adaptive attack (same budget)."""
    lines = []
    for m, r in defence.iterrows():
        rising = "" if r["adaptive settled"] else "; a lower bound: success still rising in the last half of the budget"
        lines.append(f"median filter, {m}: clean {metric} {r[f'clean {metric}']:.1f} -> "
                     f"{r[f'clean {metric}, filtered']:.1f}; transfer: {int(r['still fooled behind the filter'])} of the "
                     f"{int(r['fooled'])} {items} fooled without the filter are still fooled through it; adaptive attack "
                     f"({r['budget']}, gradients straight through the filter): {_rate(r, 'adaptive %')} of "
                     f"{int(r['adaptive: attacked'])} {items} fooled with at most {k_max} pixels{rising}")
    return lines


def poisoning_lines(poisoning: pd.DataFrame, cfg: dict, metric: str, items: str) -> list[str]:
    """At the largest poisoned fraction: the trigger's effect (backdoor minus control on the same items, paired
    interval) first, both rates beside it."""
    top = poisoning[poisoning.fraction == max(cfg["poison_fractions"])]
    return [f"poisoning {100 * r['fraction']:g} % of the training images, {r['model']}: the trigger's effect "
            f"{r['trigger effect (points)']:+.0f} points (95 % interval {r['trigger effect low']:.0f} to "
            f"{r['trigger effect high']:.0f}, paired on the same {items}; McNemar p = "
            f"{r['trigger adds (McNemar p)']:.2g}): backdoor success {_rate(r, 'backdoor success %')} of triggered "
            f"test {items} against {_rate(r, 'target top-1 on clean images %')} without the trigger; clean {metric} "
            f"{r[f'clean {metric}']:.1f}" for _, r in top.iterrows()]


def robustness_findings(attacks: AttackRun, defence: pd.DataFrame, poisoning: pd.DataFrame, cfg: dict) -> Findings:
    """The sentences of notebooks 05 and 06, computed from their tables (the clean metric is mAP for Emotic, mean
    R@1 for Flickr8k)."""
    metric = "mAP" if "clean mAP" in defence.columns else "mean R@1"
    items = "persons" if metric == "mAP" else "images"
    at_max = attacks.curve[attacks.curve.pixels == max(cfg["pixels"])].set_index("model")
    lines = (attack_lines(attacks, cfg, items) + attacks.sentences + defence_lines(defence, metric, items, max(cfg["pixels"]))
             + poisoning_lines(poisoning, cfg, metric, items))
    targets = {"attacked": {m: int(r["attacked"]) for m, r in at_max.iterrows()},
               "success_at_max_k_%": {m: float(r["success %"]) for m, r in at_max.iterrows()},
               "settled": {m: bool(v) for m, v in attacks.status["settled"].items()},
               "verdicts": {f"{a} vs {b}": v for (a, b), v in zip(attacks.pairs, attacks.verdicts)}}
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


__all__ = ["AttackRun", "MEMBERS", "attack_models", "attacked_rows", "emotic_pipelines", "flickr_pipelines",
           "members", "budget_statement", "run_label", "pixels_needed", "attack_items", "attack_chunk", "merge_needed",
           "ensemble_needed", "budget_status", "summarise", "success_table", "median_pixels", "paired_attack_tests",
           "pair_verdict", "NO_VERDICT", "paired_sentence", "attack_payload", "successes", "transfer_through_filter",
           "defence_table", "adaptive_attack", "emotic_defence", "emotic_poisoning", "flickr_poisoning",
           "flickr_defence", "backdoor_columns", "robustness_findings", "attack_lines", "defence_lines",
           "poisoning_lines", "emotic_gallery", "flickr_gallery", "rank1_rows", "emotic_right", "top_category",
           "emotic_chance"]
