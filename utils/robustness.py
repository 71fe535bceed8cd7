"""Part 3: few-pixel attacks (tables, verdicts, sentences), the median filter, poisoning rates (docs/robustness.md)."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import attack as A
from . import batching, encoders, models, paths, plots, stats, store
from .attack.sparse import STEP_COST
from .experiments import Findings, interval_columns, slug, threads


def attacked_rows(right: dict, n: int, seed: int) -> np.ndarray:
    """``n`` rows drawn at random (seeded) among those every model gets right (``right``: label -> bools), sorted."""
    candidates = np.flatnonzero(np.logical_and.reduce(list(right.values())))
    return np.sort(np.random.default_rng(seed).choice(candidates, size=min(n, len(candidates)), replace=False))


def model_key(model) -> str:
    """A model by content: a torch model's weights (its checkpoint), a closed-form baseline's fitted arrays."""
    if isinstance(model, torch.nn.Module):
        state = model.state_dict()
        return store.key(list(state), *(v.detach().cpu().numpy() for v in state.values()))
    fitted = [getattr(model, a) for a in ("img_scaler", "txt_scaler", "i2t", "t2i", "cca") if hasattr(model, a)]
    return store.key(model.method, *(a for est in fitted for _, a in sorted(vars(est).items())
                                     if isinstance(a, np.ndarray)))


def keyed(pipeline, *parts):
    """``pipeline`` with ``key``: ``store.key`` of what it computes (encoder, model key, side data), or None."""
    pipeline.key = None if any(p is None for p in parts) else store.key(*parts)
    return pipeline


def pipelines(data, models: dict, cls, *side) -> dict:
    """label -> ``cls(image encoder, model, *side)``, keyed by the encoder, the model and the side data."""
    return {label: keyed(cls(data.image_encoder, m, *side), data.encoders["image"], model_key(m), *side)
            for label, m in models.items()}


#: searches by member name per ``attack_method`` (an ensemble's result is its members' worst case per item)
MEMBERS = {"ensemble": {"white-box": "sparse-pgd", "black-box": "sparse"}, "sparse": {"black-box": "sparse"},
           "de": {"black-box": "de"}, "sparse-pgd": {"white-box": "sparse-pgd"}}
PER_ITEM = ("rows", "attacked", "k_needed", "queries")  # a ``PixelsNeeded``'s per-item arrays, as saved


def members(cfg: dict) -> dict:
    """member name -> the keywords ``utils.attack.pixels_needed`` runs it with (white-box budget as ``queries``)."""
    if cfg["attack_method"] not in MEMBERS:
        raise ValueError(f"attack_method must be one of {sorted(MEMBERS)}, got {cfg['attack_method']!r}")
    out = {}
    for member, method in MEMBERS[cfg["attack_method"]].items():
        kw = dict(method=method, seed=cfg["attack_seed"])
        if method == "sparse-pgd":  # its own (smaller) batch: the backward pass keeps the activations
            kw.update(restarts=cfg["attack_restarts"], queries=STEP_COST * cfg["attack_restarts"] * cfg["attack_steps"])
        else:
            kw.update(queries=cfg["attack_queries"], batch_size=attack_batch(cfg), precision=cfg["attack_precision"],
                      graph=cfg["attack_graph"])
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


def run_label(label: str, member: str) -> str:
    """The key of one member's search of one model in ``AttackRun.runs`` and the saved arrays."""
    return f"{label} [{member}]"


def attack_key(pipelines: dict, images: np.ndarray, rows, cfg: dict) -> str | None:
    """The key of an attack's result (what it holds: docs/robustness.md); None when a pipeline has no key."""
    if any(getattr(p, "key", None) is None for p in pipelines.values()):
        return None
    rows = np.asarray(rows, np.int64)
    settings = {"experiment": cfg["experiment"], "schedule": [int(k) for k in cfg["pixels"]], "members": members(cfg)}
    photos = store.digest(*(np.asarray(images[r]) for r in rows))  # one photo at a time: a memmap stays on disk
    return store.key(settings, [[label, p.key] for label, p in pipelines.items()], rows, photos,
                     store.code_digest(A, models, encoders, batching, attack_items))


def attack_results_path(cfg: dict, key: str):
    """Where the merged result of attack ``key`` lives: ``<output>/attacks/<experiment>_<key>.npz``."""
    return paths.output_dir() / "attacks" / f"{cfg['experiment']}_{key}.npz"


def needed_from_arrays(arrays, images: np.ndarray | None = None, where: str = "arrays") -> dict:
    """The searches saved by ``scripts/robustness.py``; with the clean ``images`` the adversarial images are rebuilt."""
    out = {}
    for label in arrays["attack_labels"].tolist():
        s = slug(label)
        try:
            schedule = tuple(int(k) for k in arrays[f"{s}_schedule"])
            reports = {k: A.from_arrays(arrays, f"{s}_k{k}", None if images is None else
                                        np.asarray(images)[arrays[f"{s}_k{k}_rows"]])
                       for k in schedule if f"{s}_k{k}_rows" in arrays}
            out[label] = A.PixelsNeeded(**{f: arrays[f"{s}_{f}"] for f in PER_ITEM}, schedule=schedule, reports=reports)
        except KeyError as e:
            raise ValueError(f"{where}: the arrays of model {label!r} are incomplete ({e})") from e
    return out


def pixels_needed(pipelines: dict, images: np.ndarray, rows: np.ndarray, cfg: dict) -> dict:
    """``run_label(model, member)`` -> ``PixelsNeeded``, same rows for every model; loaded when precomputed."""
    key = attack_key(pipelines, images, rows, cfg)
    if key is not None and (path := attack_results_path(cfg, key)).is_file():
        print(f"attack results loaded from {path} (precomputed by scripts/robustness.py)")
        return needed_from_arrays(store.read_npz(path), images, where=str(path))
    return attack_items(pipelines, images, rows, cfg)


def attack_batch(cfg: dict) -> int | None:
    """``attack_batch`` for the searches: None for ``"auto"``, the device's fastest batch (``utils.batching``)."""
    if (batch := cfg["attack_batch"]) != "auto" and (type(batch) is not int or batch < 1):  # True is not a size
        raise ValueError(f"attack_batch must be a positive integer or 'auto', got {batch!r}")
    return None if batch == "auto" else batch


def attack_chunk(cfg: dict) -> int:
    """Items attacked together, the script's default shard: set by the settings (32 under "auto"), not the device."""
    return 32 if (batch := attack_batch(cfg)) is None else max(1, batch // 4)


def attack_items(pipelines: dict, images: np.ndarray, rows: np.ndarray, cfg: dict, chunk: int | None = None) -> dict:
    """The searches, ``chunk`` items at a time: fixed chunks round alike in one process or many."""
    rows = np.asarray(rows, np.int64)
    chunk = attack_chunk(cfg) if chunk is None else int(chunk)
    searches, parts = members(cfg), []
    with threads(cfg["attack_threads"]):
        for a in range(0, len(rows), chunk):
            part = rows[a:a + chunk]
            parts.append({run_label(label, m): A.pixels_needed(pipe, images[part], part, schedule=cfg["pixels"], **kw)
                          for label, pipe in pipelines.items() for m, kw in searches.items()})
    if not parts:
        raise ValueError("utils/robustness.py: no rows to attack")
    return merge_needed(parts)


def merge_needed(parts: list[dict]) -> dict:
    """Concatenate the results of consecutive parts of the rows, in order; costs are summed."""
    merged = {}
    for label in parts[0]:
        ps, reports = [p[label] for p in parts], {}
        for k in ps[0].schedule:
            if reps := [p.reports[k] for p in ps if k in p.reports]:
                reports[k] = A.AttackReport(results=[r for rep in reps for r in rep.results], settings=reps[0].settings,
                                            **{f: sum(getattr(r, f) for r in reps) for f in
                                               ("seconds", "model_queries", "search_seconds", "model_seconds")})
        cat = {f: np.concatenate([getattr(p, f) for p in ps]) for f in PER_ITEM}
        merged[label] = A.PixelsNeeded(**cat, schedule=ps[0].schedule, reports=reports)
    return merged


def ensemble_needed(runs: dict) -> A.PixelsNeeded:
    """Per item the smallest k at which any member (member -> ``PixelsNeeded``) fooled it; queries summed."""
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
    """The items first fooled at the largest k and those every member fooled only late (then a lower bound)."""
    ens = ensemble_needed(runs)
    k_max = max(ens.schedule)
    at_max = set(ens.rows[(ens.k_needed == k_max) & ens.attacked].tolist())
    late = set(at_max)
    for rep in (pn.reports[k_max] for pn in runs.values() if k_max in pn.reports):
        s = rep.settings  # a success in the first half of its search's budget is not late
        budget = (s["step_cost"] * s["restarts"] * s["steps"] if s["method"] == "sparse-pgd"
                  else s.get("queries") or s["popsize"] * (s["generations"] + 1))
        late -= {r.row for r in rep.results if r.success and r.queries <= budget / 2}
    return {"fooled at largest k": len(at_max), "fooled late": len(late), "settled": not late}


@dataclass
class AttackRun:
    """The few-pixel section of a robustness notebook (docs/robustness.md): searches, tables, sentences."""
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
    """The tables and sentences of an attack from its member searches."""
    by_model = {label: {m: runs[run_label(label, m)] for m in MEMBERS[cfg["attack_method"]]} for label in labels}
    needed = {label: ensemble_needed(r) for label, r in by_model.items()}
    status = pd.DataFrame({label: budget_status(r) for label, r in by_model.items()}).T
    member_curve = pd.concat([success_table({label: pn}).assign(member=m, settled=budget_status({m: pn})["settled"])
                              for label, r in by_model.items() for m, pn in r.items()], ignore_index=True)
    paired = paired_attack_tests(needed, pairs)
    said = [paired_sentence(paired, a, b, status, budget_statement(cfg)) for a, b in pairs]
    return AttackRun(runs, needed, budget_statement(cfg), status, success_table(needed), member_curve,
                     median_pixels(needed, cfg), paired, list(pairs), [s for s, _ in said], [v for _, v in said])


def attack_models(pipelines: dict, images: np.ndarray, rows: np.ndarray, cfg: dict, pairs: list, title: str,
                  path=None) -> AttackRun:
    """Every model attacked on the same ``rows`` by every member, the tables, and the success-against-k figure."""
    run = summarise(pixels_needed(pipelines, images, rows, cfg), list(pipelines), cfg, pairs)
    plots.attack_curves(run.curve, title=f"{title}\n{run.budget}", path=path)
    return run


def success_table(needed: dict) -> pd.DataFrame:
    """One row per (model, k): attacked, fooled with at most k pixels, the rate and its Wilson 95 % interval."""
    rows = []
    for label, pn in needed.items():
        n = int(pn.attacked.sum())
        for k in pn.schedule:
            won = int(((pn.k_needed > 0) & (pn.k_needed <= k) & pn.attacked).sum())
            lo, hi = stats.wilson_interval(won, n)
            rows.append({"model": label, "pixels": int(k), "attacked": n, "successes": won,
                         "success %": 100 * (won / n if n else np.nan), "success % low": 100 * lo,
                         "success % high": 100 * hi})
    return pd.DataFrame(rows)


def median_pixels(needed: dict, cfg: dict) -> pd.DataFrame:
    """Per model: the median pixels needed with a bootstrap interval (not fooled: more than the largest k)."""
    over, rows = 2 * max(cfg["pixels"]), {}  # over: stands for "not fooled within the schedule", shown as "> k_max"
    for label, pn in needed.items():
        k = np.where(pn.k_needed > 0, pn.k_needed, over)[pn.attacked].astype(float)
        if not len(k):
            rows[label] = {"attacked": 0}
            continue
        ci = stats.bootstrap_interval(lambda idx: float(np.median(k[idx])), len(k), n_resamples=cfg["bootstrap"],
                                      seed=cfg["seed"])
        shown = {key: np.inf if ci[key] >= over else ci[key] for key in ("estimate", "low", "high")}  # inf: > k_max
        rows[label] = {"attacked": int(len(k)), "median pixels": shown["estimate"], "low": shown["low"],
                       "high": shown["high"], "fooled within schedule %": 100 * float((k < over).mean()),
                       "mean queries per item": float(pn.queries[pn.attacked].mean())}
    return pd.DataFrame(rows).T


def paired_attack_tests(needed: dict, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Per pair and k: McNemar's exact test on "fooled with at most k", Holm-adjusted over the schedule."""
    rows = []
    for a, b in pairs:
        pa, pb = needed[a], needed[b]
        both, family = pa.attacked & pb.attacked, []
        for k in pa.schedule:
            sa, sb = ((p.k_needed > 0) & (p.k_needed <= k) for p in (pa, pb))
            t = stats.mcnemar_exact(sa[both], sb[both])
            family.append({"a": a, "b": b, "pixels": k, "items": int(both.sum()), "a fooled %": 100 * sa[both].mean()
                           if both.any() else np.nan, "b fooled %": 100 * sb[both].mean() if both.any() else np.nan,
                           "only a fooled": t["b"], "only b fooled": t["c"], "p_value": t["p_value"]})
        for row, p in zip(family, stats.holm([r["p_value"] for r in family])):
            row["p (Holm)"] = float(p)
        rows += family
    return pd.DataFrame(rows)


NO_VERDICT = "no model is declared more robust"


def paired_sentence(tests: pd.DataFrame, a: str, b: str, status: pd.DataFrame | None = None, budget: str = ""
                    ) -> tuple[str, str]:
    """A pair's counts and test at the largest k, and its verdict (the rule stated in it: docs/robustness.md)."""
    part = tests[(tests.a == a) & (tests.b == b)].sort_values("pixels")
    if part.empty or part["items"].iloc[0] == 0:
        return f"{a} vs {b}: no item was attacked by both", "no item was attacked by both"
    row, rising = part.iloc[-1], [m for m in (a, b) if status is not None and not bool(status.loc[m, "settled"])]
    verdict = (NO_VERDICT if rising or not row["p (Holm)"] < 0.05 else
               f"{b if row['only a fooled'] > row['only b fooled'] else a} is fooled less often")
    reason = (f"; success still rising in the last half of the budget for {' and '.join(rising)}: not settled at "
              f"this budget, the rates are lower bounds" if rising else
              "; no detectable difference" if verdict == NO_VERDICT else "")
    return (f"{a} vs {b} at {int(row['pixels'])} pixels (the largest k, fixed in advance), {int(row['items'])} items"
            f"{f', {budget}' if budget else ''}: fooled {row['a fooled %']:.0f} % vs {row['b fooled %']:.0f} % "
            f"(only {a}: {int(row['only a fooled'])}, only {b}: {int(row['only b fooled'])}; McNemar p = "
            f"{row['p_value']:.2g}, Holm-adjusted over {len(part)} k: {row['p (Holm)']:.2g}{reason}): {verdict}",
            verdict)


def attack_payload(runs: dict, needed: dict | None = None, prefix: str = "") -> dict:
    """The arrays of every search and model's worst case under the slug of ``prefix`` + label (docs/results.md)."""
    out = {}
    for label, pn in {**runs, **(needed or {})}.items():
        s = slug(prefix + label)
        out.update({**{f"{s}_{f}": getattr(pn, f) for f in PER_ITEM}, f"{s}_schedule": np.array(pn.schedule, np.int64)})
        for k, rep in pn.reports.items():
            out.update(A.to_arrays(rep, f"{s}_k{k}"))
    return out


def defence_table(runs: dict, adaptive: dict, defended: dict, images: np.ndarray, cfg: dict) -> pd.DataFrame:
    """Per model: the transfer of the attack's images through the filter, beside the adaptive attack at largest k."""
    ran = dict.fromkeys(("batch_size", "channels_last"))  # how the model ran ("auto": each pipeline's), not the search
    for key, pn in runs.items():
        for k, rep in pn.reports.items():
            other = adaptive[key].reports.get(k) if key in adaptive else None
            if other is not None and {**other.settings, **ran} != {**rep.settings, **ran}:
                raise ValueError(f"utils/robustness.py: the adaptive attack on {key} at k={k} ran with "
                                 f"{other.settings}, the attack it is compared with with {rep.settings}")
    rows = {}
    for label, pipe in defended.items():
        won = [r for key, pn in runs.items() if key.startswith(f"{label} [") for rep in pn.reports.values()
               for r in rep.results if r.success]
        still = set()
        if won:
            adv = np.stack([A.apply_pixels(images[[r.row]], r.pixels[None])[0] for r in won])
            rws = np.array([r.row for r in won])
            scores = A.score_images(pipe, adv, rws, batch_size=attack_batch(cfg))  # as the attack scored them
            still = set(rws[A.margin_and_success(scores, pipe.truth(rws))[1]].tolist())
        mine = {m: adaptive[run_label(label, m)] for m in MEMBERS[cfg["attack_method"]]}
        pn = ensemble_needed(mine)
        n, fooled_n = int(pn.attacked.sum()), int(((pn.k_needed > 0) & pn.attacked).sum())
        rows[label] = {"fooled": len({r.row for r in won}), "still fooled behind the filter": len(still),
                       "adaptive: attacked": n, "adaptive: fooled": fooled_n,
                       **interval_columns({"adaptive %": stats.success_rate_interval(fooled_n, n)}),
                       "adaptive settled": budget_status(mine)["settled"], "budget": budget_statement(cfg)}
    return pd.DataFrame(rows).T.infer_objects()


def defence(pipelines: dict, attack: AttackRun, images: np.ndarray, rows: np.ndarray, cfg: dict, metric: str, clean,
            filtered: dict) -> tuple[pd.DataFrame, dict]:
    """The defence table with the clean ``metric`` without and with the filter (``clean(model, features)``)."""
    defended, adaptive = adaptive_attack(pipelines, images, rows, cfg)
    out = defence_table(attack.runs, adaptive, defended, images, cfg)
    for column, f in ((f"clean {metric}", {}), (f"clean {metric}, filtered", filtered)):
        out[column] = [clean(m, f) for m in out.index]
    return out, adaptive


def gallery(images, needed: dict, n: int, describe, item: str, title: str, path=None, own=None):
    """The first ``n`` successful attacks: image and ``describe(scores)`` before and after, the changed pixels."""
    wins = [(label, k, r) for label, pn in needed.items() for k, rep in sorted(pn.reports.items())
            for r in rep.results if r.success][:n]  # every confirmed success, smallest k first
    if not wins:
        return None
    kw = {} if own is None else {f"own_{w}": [own(getattr(r, f"scores_{w}"), r.row) for _, _, r in wins]
                                 for w in ("before", "after")}
    return plots.attack_gallery([images[r.row] for _, _, r in wins],
                                [A.apply_pixels(images[[r.row]], r.pixels[None])[0] for _, _, r in wins],
                                [r.pixels for _, _, r in wins], [describe(r.scores_before) for _, _, r in wins],
                                [describe(r.scores_after) for _, _, r in wins], **kw, title=title, path=path,
                                labels=[f"{label}, {k} px, {item} {r.row}" for label, k, r in wins])


def adaptive_attack(pipelines: dict, images: np.ndarray, rows: np.ndarray, cfg: dict) -> tuple[dict, dict]:
    """Every model behind the median filter, attacked by the same searches at the largest k only."""
    defended = {label: keyed(A.MedianDefended(p, cfg["median_size"]), "median", cfg["median_size"],
                             getattr(p, "key", None)) for label, p in pipelines.items()}
    return defended, pixels_needed(defended, images, rows, {**cfg, "pixels": [max(cfg["pixels"])]})


def backdoor_columns(hit: np.ndarray, control: np.ndarray) -> dict:
    """Backdoor success and control with Wilson intervals, the trigger's effect (paired interval), McNemar's p."""
    rates = (("backdoor success %", hit), ("target top-1 on clean images %", control))
    out = interval_columns({column: stats.success_rate_interval(int(won.sum()), len(won)) for column, won in rates})
    d = stats.paired_rate_difference(hit, control) if len(hit) else dict.fromkeys(("difference", "low", "high"), np.nan)
    out.update({"trigger effect (points)": d["difference"], "trigger effect low": d["low"], "trigger effect high":
                d["high"], "trigger adds (McNemar p)": stats.mcnemar_exact(hit, control)["p_value"]})
    return out


def _rate(r, column: str = "success %") -> str:
    return f"{r[column]:.0f} % (95 % interval {r[f'{column} low']:.0f} to {r[f'{column} high']:.0f} %)"


def attack_lines(attacks: AttackRun, k_max: int, items: str) -> list[str]:
    """Per model: share fooled at the largest k by the attack and each member, median k, budget status."""
    show = lambda v: f"> {k_max}" if np.isinf(v) else f"{v:g}"  # noqa: E731
    members_at_max = attacks.member_curve[attacks.member_curve.pixels == k_max]
    lines = []
    for m, r in attacks.curve[attacks.curve.pixels == k_max].set_index("model").iterrows():
        med = attacks.median.loc[m] if m in attacks.median.index else {}
        needed = (f"median pixels needed {show(med['median pixels'])} [{show(med['low'])}, {show(med['high'])}]"
                  if "median pixels" in med and not np.isnan(med["median pixels"]) else "no item attacked")
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
    """Per model: the filter's price in clean accuracy, the transfer and the adaptive attack."""
    rising = "; a lower bound: success still rising in the last half of the budget"
    return [f"median filter, {m}: clean {metric} {r[f'clean {metric}']:.1f} -> {r[f'clean {metric}, filtered']:.1f}; "
            f"transfer: {int(r['still fooled behind the filter'])} of the {int(r['fooled'])} {items} fooled without "
            f"the filter are still fooled through it; adaptive attack ({r['budget']}, gradients straight through the "
            f"filter): {_rate(r, 'adaptive %')} of {int(r['adaptive: attacked'])} {items} fooled with at most {k_max} "
            f"pixels{'' if r['adaptive settled'] else rising}" for m, r in defence.iterrows()]


def poisoning_lines(poisoning: pd.DataFrame, cfg: dict, metric: str, items: str) -> list[str]:
    """At the largest poisoned fraction: the trigger's effect (paired interval) first, both rates beside it."""
    top = poisoning[poisoning.fraction == max(cfg["poison_fractions"])]
    return [f"poisoning {100 * r['fraction']:g} % of the training images, {r['model']}: the trigger's effect "
            f"{r['trigger effect (points)']:+.0f} points (95 % interval {r['trigger effect low']:.0f} to "
            f"{r['trigger effect high']:.0f}, paired on the same {items}; McNemar p = "
            f"{r['trigger adds (McNemar p)']:.2g}): backdoor success {_rate(r, 'backdoor success %')} of triggered "
            f"test {items} against {_rate(r, 'target top-1 on clean images %')} without the trigger; clean {metric} "
            f"{r[f'clean {metric}']:.1f}" for _, r in top.iterrows()]


def robustness_findings(attacks: AttackRun, defence: pd.DataFrame, poisoning: pd.DataFrame, cfg: dict) -> Findings:
    """The sentences of notebooks 05 and 06 (clean metric: mAP for Emotic, mean R@1 for Flickr8k)."""
    metric, items = ("mAP", "persons") if "clean mAP" in defence.columns else ("mean R@1", "images")
    k_max = max(cfg["pixels"])
    at_max = attacks.curve[attacks.curve.pixels == k_max].set_index("model")
    lines = (attack_lines(attacks, k_max, items) + attacks.sentences + defence_lines(defence, metric, items, k_max)
             + poisoning_lines(poisoning, cfg, metric, items))
    targets = {"attacked": {m: int(r["attacked"]) for m, r in at_max.iterrows()},
               "success_at_max_k_%": {m: float(r["success %"]) for m, r in at_max.iterrows()},
               "settled": {m: bool(v) for m, v in attacks.status["settled"].items()},
               "verdicts": {f"{a} vs {b}": v for (a, b), v in zip(attacks.pairs, attacks.verdicts)}}
    return Findings(lines, targets)


