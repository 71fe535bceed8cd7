"""Differential evolution (Su, Vargas & Sakurai 2019), every image's children scored together; the searches by
name, the white-box-then-black-box ensemble, and the pixels each image needs (docs/attacks.md)."""

import dataclasses
import time
from typing import Sequence

import numpy as np

from .pipelines import AttackReport, PixelPipeline, Scorer, assemble_report, prepare_attack
from .sparse import sparse_pgd, sparse_rs

WHERE = "utils/attack/search.py"


@dataclasses.dataclass
class DEImage:
    """Search state of one image."""
    index: int  # position in the attacked batch
    rng: np.random.Generator
    pop: np.ndarray  # (P, 5k) float
    fit: np.ndarray  # (P,) margins of the population (lower is better; < 0 is a success), inf before scoring
    keys: list[bytes] = dataclasses.field(default_factory=list)  # decoded population, for duplicate detection
    queries: int = 0
    generations: int = 0
    found: np.ndarray | None = None  # (k,5) int candidate confirmed as a success
    found_scores: np.ndarray | None = None  # its fp32 scores


def decode(vec: np.ndarray, k: int) -> np.ndarray:
    """Continuous DE vectors (..., 5k), already within bounds -> integer pixels (..., k, 5)."""
    return np.rint(vec).astype(np.int64).reshape(*vec.shape[:-1], k, 5)


def initial_population(rng: np.random.Generator, popsize: int, upper: np.ndarray, k: int,
                       init: np.ndarray | None = None) -> np.ndarray:
    """Su et al.: positions uniform, colours ~ N(128, 127), clipped to ``upper``; ``init`` starts member 0."""
    pop = np.empty((popsize, 5 * k))
    for c in range(5):  # x, y, then r, g, b
        pop[:, c::5] = rng.uniform(0, upper[c], (popsize, k)) if c < 2 else rng.normal(128, 127, (popsize, k))
    if init is not None:
        init = np.asarray(init)[np.asarray(init)[:, 0] >= 0][:k]
        pop[0, :5 * len(init)] = init.reshape(-1)
    return np.clip(pop, 0.0, upper)


def mutants(rng: np.random.Generator, pop: np.ndarray, f: float, upper: np.ndarray) -> np.ndarray:
    """DE/rand/1 without crossover: x_r1 + F (x_r2 - x_r3), r1, r2, r3 distinct and different from the parent."""
    p = len(pop)
    a, b, c = (rng.integers(0, p - d, p) for d in (1, 2, 3))
    b = b + (b >= a)  # three distinct draws from {0..p-2} by skipping the ones already taken
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    c = c + (c >= lo)
    c = c + (c >= hi)
    a, b, c = (r + (r >= np.arange(p)) for r in (a, b, c))  # ... then skip the parent itself
    return np.clip(pop[a] + f * (pop[b] - pop[c]), 0.0, upper)


def score_unique(scorer: Scorer, states: list[DEImage], cands: list[np.ndarray]) -> list[tuple]:
    """Per image (fit, success, scores of successes, 1-based order among the queries sent, 0 = reused) of its
    candidates (P,k,5), scored in shared batches; a candidate known to the image is sent once."""
    jobs_i, jobs_c, plans = [], [], []
    for st, cand in zip(states, cands):
        base, known, keys = len(jobs_i), dict(zip(st.keys, st.fit)), [c.tobytes() for c in cand]
        slot: dict[bytes, int] = {}
        for j, key in enumerate(keys):
            if key not in known and key not in slot:
                slot[key] = len(jobs_i)
                jobs_i.append(st.index)
                jobs_c.append(cand[j])
        st.queries += len(slot)
        plans.append((keys, known, slot, base))
    idx = np.array(jobs_i, dtype=np.int64)
    margin, success, hits = scorer.search(idx, np.stack(jobs_c) if jobs_c else np.zeros((0, 1, 5), np.int64))
    out = []
    for keys, known, slot, base in plans:
        fit = np.array([margin[slot[k]] if k in slot else known[k] for k in keys])
        ok = np.array([bool(success[slot[k]]) if k in slot else False for k in keys])
        sc = {j: hits[slot[k]] for j, k in enumerate(keys) if k in slot and slot[k] in hits}
        order = np.array([slot[k] - base + 1 if k in slot else 0 for k in keys], dtype=np.int64)
        out.append((fit, ok, sc, order))
    return out


def settle(scorer: Scorer, states: list[DEImage], cands: list[np.ndarray], scored: list[tuple]) -> None:
    """Stop each image whose first successful candidate holds in fp32 (its ``queries`` end at that query); an
    unconfirmed one gets its fp32 margin, so selection sees what really happened."""
    todo = []
    for st, cand, (fit, ok, hits, order) in zip(states, cands, scored):
        if ok.any():
            j = int(np.flatnonzero(ok)[np.argmin(order[ok])])
            if scorer.exact:  # an eager fp32 search already is the confirming pass
                st.found, st.found_scores = cand[j], hits[j]
                st.queries -= int(order.max() - order[j])
            else:
                todo.append((st, j, cand[j], fit, order))
    if not todo:
        return
    margin, ok, sc = scorer.confirm(np.array([t[0].index for t in todo]), np.stack([t[2] for t in todo]))
    for (st, j, c, fit, order), m, good, scores in zip(todo, margin, ok, sc):
        st.queries += 1
        if good:
            st.found, st.found_scores = c, scores
            st.queries -= int(order.max() - order[j])
        else:
            fit[j] = m


def differential_evolution(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth: np.ndarray | None = None,
                           *, pixels: int = 1, popsize: int = 400, generations: int = 100, F: float = 0.5,
                           batch_size: int | None = None, seed: int = 0, precision: str = "float32",
                           graph: str = "traced", init: np.ndarray | None = None) -> AttackReport:
    """Fool each correctly scored image changing at most ``pixels`` pixels with at most ``popsize`` (``generations``
    + 1) queries; a success of a cheaper ``precision`` or a traced ``graph`` is confirmed in eager fp32."""
    if popsize < 4 or generations < 0:
        raise ValueError(f"{WHERE}: need popsize >= 4 (DE/rand/1 draws 3 others) and generations >= 0")
    scorer = prepare_attack(pipeline, images, rows, truth, pixels, batch_size, WHERE, precision, graph)
    h, w = scorer.images.shape[1:3]
    k, upper = pixels, np.tile(np.array([w - 1, h - 1, 255, 255, 255], dtype=np.float64), pixels)
    settings = dict(method="de", pixels=k, popsize=popsize, generations=generations, F=F,
                    batch_size=scorer.batch_size, channels_last=pipeline.channels_last, seed=seed, precision=precision,
                    graph=graph, strategy="DE/rand/1, no crossover, child replaces parent if <=")
    states = [DEImage(index=int(i), rng=(rng := np.random.default_rng([seed, int(scorer.rows[i])])),
                      pop=initial_population(rng, popsize, upper, k, None if init is None else init[i]),
                      fit=np.full(popsize, np.inf)) for i in np.flatnonzero(scorer.attacked)]
    for generation in range(generations + 1):  # generation 0 scores the initial populations
        if not (active := [st for st in states if st.found is None]):
            break
        children = [mutants(st.rng, st.pop, F, upper) if generation else st.pop for st in active]
        decoded = [decode(c, k) for c in children]
        scored = score_unique(scorer, active, decoded)
        settle(scorer, active, decoded, scored)
        for st, child, d, (fit, *_) in zip(active, children, decoded, scored):
            better = fit <= st.fit if generation else np.ones(len(fit), bool)  # a child replaces its parent if as good
            st.pop[better], st.fit[better] = child[better], fit[better]
            st.keys = [d[j].tobytes() if better[j] else st.keys[j] for j in range(len(fit))]
            st.generations = generation
    # final pixels: the confirmed success, else the population's best (scored in fp32 by assemble_report)
    final = {st.index: st.found if st.found is not None else decode(st.pop[np.argmin(st.fit)], k) for st in states}
    found = {st.index: st.found_scores for st in states if st.found is not None}
    return assemble_report(scorer, final, found, {st.index: st.queries for st in states},
                           {st.index: st.generations for st in states}, settings)


def ensemble(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth: np.ndarray | None = None, *,
             pixels: int = 1, queries: int = 1000, steps: int = 100, restarts: int = 2, seed: int = 0,
             batch_size: int | None = None, black_box_all: bool = False, init: np.ndarray | None = None,
             **search) -> AttackReport:
    """Sparse-PGD on every attacked image, then ``sparse_rs`` (``queries``, ``batch_size``, other keywords) on those
    it left unfooled (all with ``black_box_all``), as Sparse-AutoAttack; a result's ``queries`` add up."""
    t_start = time.perf_counter()
    images = np.asarray(images)
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    white = sparse_pgd(pipeline, images, rows, truth, pixels=pixels, steps=steps, restarts=restarts, seed=seed,
                       init=init)
    attacked, w_ok = np.array([(r.attacked, r.success) for r in white.results], bool).reshape(-1, 2).T
    ran = attacked if black_box_all else attacked & ~w_ok
    idx = np.flatnonzero(ran)
    black = sparse_rs(pipeline, images[idx], rows[idx], None if truth is None else np.asarray(truth)[idx],
                      pixels=pixels, queries=queries, batch_size=batch_size, seed=seed,
                      init=None if init is None else np.asarray(init)[idx], **search)
    b_ok, results = np.zeros(len(images), bool), list(white.results)
    for i, rb in zip(idx, black.results):
        b_ok[i], rw = rb.success, white.results[i]
        if not rw.success:  # the black-box member's success, else the white-box member's image; both spends
            kept = rb if rb.success else rw
            results[i] = dataclasses.replace(kept, attacked=rw.attacked, queries=rw.queries + rb.queries)
    member = ["white-box" if w else "black-box" if b and a else "" for w, b, a in zip(w_ok, b_ok, attacked)]
    settings = dict(method="ensemble", pixels=int(pixels), queries=int(queries), steps=int(steps),
                    restarts=int(restarts), seed=int(seed), black_box_all=bool(black_box_all),
                    order="white-box (sparse-PGD) first, then black-box (sparse search) on "
                          + ("every attacked image" if black_box_all else "the images it left unfooled"),
                    member=member, white_box_success=w_ok.tolist(), black_box_ran=ran.tolist(),
                    black_box_success=(b_ok & ran).tolist(), white_box=white.settings, black_box=black.settings)
    costs = {f: getattr(white, f) + getattr(black, f) for f in ("model_queries", "search_seconds", "model_seconds")}
    return AttackReport(results=results, settings=settings, seconds=time.perf_counter() - t_start, **costs,
                        members={"white-box": white, "black-box": black})


METHODS = {"de": differential_evolution, "sparse": sparse_rs, "sparse-pgd": sparse_pgd, "ensemble": ensemble}


def attack(pipeline: PixelPipeline, images: np.ndarray, rows=None, k: int = 1, method: str = "de",
           **budget) -> AttackReport:
    """Attack ``images`` (N,H,W,3 uint8, pipeline rows ``rows``) changing at most ``k`` pixels each; ``queries=``
    is the budget per image for every method (DE: ``generations = queries // popsize - 1``)."""
    if method not in METHODS:
        raise ValueError(f"utils/attack: method must be one of {sorted(METHODS)}, got {method!r}")
    queries = budget.pop("queries", None)
    if queries is not None and method == "de":
        if queries < (popsize := budget.get("popsize", 400)):
            raise ValueError(f"utils/attack: queries={queries} is less than one DE population ({popsize})")
        budget["generations"] = int(queries) // popsize - 1
    elif queries is not None:
        budget["queries"] = int(queries)
    return METHODS[method](pipeline, images, rows, pixels=int(k), **budget)


@dataclasses.dataclass
class PixelsNeeded:
    """Per image, the smallest k of the schedule at which the attack succeeded (-1: none, or not attacked)."""
    rows: np.ndarray  # (N,)
    attacked: np.ndarray  # (N,) bool: correct before the attack
    k_needed: np.ndarray  # (N,) int, -1 when no k of the schedule succeeded within its budget
    queries: np.ndarray  # (N,) queries spent on the image over all k it was attacked at
    schedule: tuple[int, ...]
    reports: dict[int, AttackReport]  # by k; each holds only the images still unsolved at that k


def pixels_needed(pipeline, images: np.ndarray, rows=None, truth=None, *,
                  schedule: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256), method: str = "sparse",
                  queries: int = 1000, warm_start: bool = True, **budget) -> PixelsNeeded:
    """The smallest k of ``schedule`` at which each image is fooled within ``queries`` queries per k: a fooled
    image leaves, and (``warm_start``) the next k starts from the previous k's best pixels plus new ones."""
    schedule = tuple(int(k) for k in schedule)
    if not schedule or any(k < 1 for k in schedule) or any(b <= a for a, b in zip(schedule, schedule[1:])):
        raise ValueError(f"{WHERE}: schedule must be increasing positive integers, got {schedule}")
    images, truth = np.asarray(images), None if truth is None else np.asarray(truth)
    n = len(images)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    k_needed, spent, attacked = np.full(n, -1, np.int64), np.zeros(n, np.int64), np.zeros(n, bool)
    best = np.full((n, max(schedule), 5), -1, np.int64)  # each image's best pixels so far (-1 = padding)
    todo, reports = np.arange(n), {}
    for j, k in enumerate(schedule):
        if not len(todo):
            break
        init = best[todo, :k] if warm_start and j else None
        rep = reports[k] = attack(pipeline, images[todo], rows[todo], k, method=method, queries=queries,
                                  truth=None if truth is None else truth[todo], init=init, **budget)
        for i, r in zip(todo, rep.results):
            attacked[i] |= r.attacked  # set at the first k: later ones attack only images attacked there
            spent[i] += r.queries
            best[i] = -1
            best[i, :len(r.pixels)] = r.pixels
            if r.success:
                k_needed[i] = k
        todo = np.array([i for i, r in zip(todo, rep.results) if r.attacked and not r.success], dtype=np.int64)
    return PixelsNeeded(rows=rows, attacked=attacked, k_needed=k_needed, queries=spent, schedule=schedule,
                        reports=reports)
