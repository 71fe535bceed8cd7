"""Few-pixel attack by differential evolution (Su, Vargas & Sakurai 2019), batched across images.

A candidate is ``k x (x, y, r, g, b)``; the search is DE/rand/1 without crossover, as in the paper:
``child = a + F (b - c)`` from three other members of the image's population, and a child replaces its parent when
it scores at least as well. Paper settings: population 400, at most 100 generations, F = 0.5, untargeted, early
stop per image on success.

Why batched: ``torchattacks.OnePixel`` and ART's ``PixelAttack`` run one DE loop per image, so the model sees one
population at a time. Here every still-active image contributes its children to one queue and the queue goes
through the model in large batches. Wasted queries are avoided: a solved image stops at once, and a child whose
decoded (integer) pixels equal a candidate already scored in its population reuses that score.

Each image's search state is a :class:`DEImage` with its own RNG seeded by ``(seed, row)``, so an image's result
does not depend on which other images share the batch (or the process).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .pipelines import PixelPipeline, Scorer, prepare_attack
from .results import AttackReport, assemble_report

__all__ = ["differential_evolution", "few_pixel_attack", "DEImage", "mutants", "initial_population"]

WHERE = "utils/attack/de.py"


@dataclass
class DEImage:
    """Search state of one image."""

    index: int  # position in the attacked batch
    rng: np.random.Generator
    pop: np.ndarray  # (P, 5k) float
    fit: np.ndarray | None = None  # (P,) margins of the population (lower is better; < 0 is a success)
    keys: list[bytes] = field(default_factory=list)  # decoded population, for duplicate detection
    queries: int = 0
    generations: int = 0
    found: np.ndarray | None = None  # (k,5) int candidate confirmed as a success
    found_scores: np.ndarray | None = None  # its fp32 scores

    @property
    def active(self) -> bool:
        return self.found is None


@dataclass
class Scored:
    """Margins and successes of one image's candidates, with the scores of its successful ones; ``order`` is each
    candidate's 1-based position among the queries sent for the image in this call (0: reused, not sent)."""

    fit: np.ndarray
    success: np.ndarray
    hits: dict[int, np.ndarray]
    order: np.ndarray


def bounds(h: int, w: int, k: int) -> np.ndarray:
    return np.tile(np.array([w - 1, h - 1, 255, 255, 255], dtype=np.float64), k)


def decode(vec: np.ndarray, k: int) -> np.ndarray:
    """Continuous DE vectors (..., 5k) -> integer pixels (..., k, 5); the vectors are already within bounds."""
    return np.rint(vec).astype(np.int64).reshape(*vec.shape[:-1], k, 5)


def initial_population(rng: np.random.Generator, popsize: int, h: int, w: int, k: int,
                       init: np.ndarray | None = None) -> np.ndarray:
    """Su et al.: positions uniform over the image, colours ~ N(128, 127), clipped to the bounds.

    ``init`` (<=k, 5) (e.g. the best pixels of a smaller k) replaces the first pixels of member 0; rows with a
    negative x are padding and ignored."""
    pop = np.empty((popsize, 5 * k))
    pop[:, 0::5] = rng.uniform(0, w - 1, (popsize, k))
    pop[:, 1::5] = rng.uniform(0, h - 1, (popsize, k))
    for c in (2, 3, 4):
        pop[:, c::5] = rng.normal(128, 127, (popsize, k))
    if init is not None:
        init = np.asarray(init)[np.asarray(init)[:, 0] >= 0][:k]
        pop[0, :5 * len(init)] = init.reshape(-1)
    return np.clip(pop, 0.0, bounds(h, w, k))


def mutants(rng: np.random.Generator, pop: np.ndarray, f: float, upper: np.ndarray) -> np.ndarray:
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


def score_unique(scorer: Scorer, states: list[DEImage], cands: list[np.ndarray]) -> list[Scored]:
    """Score each image's candidates (P,k,5) in shared batches. A candidate equal to one already scored in the
    image's population, or twice among its children, is sent once; only the sent ones count as queries."""
    jobs_i, jobs_c, plans = [], [], []
    for st, cand in zip(states, cands):
        base = len(jobs_i)
        known = dict(zip(st.keys, st.fit)) if st.fit is not None else {}
        keys = [c.tobytes() for c in cand]
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
        out.append(Scored(fit, ok, sc, order))
    return out


def settle(scorer: Scorer, states: list[DEImage], cands: list[np.ndarray], scored: list[Scored]) -> None:
    """Stop each image whose first successful candidate holds in fp32 (re-checked unless the search was exact fp32);
    an unconfirmed candidate gets its fp32 margin, so selection sees what really happened. A stopped image's
    ``queries`` become the query that fooled it: the children sent after it in the same call do not count."""
    todo = []
    for st, cand, s in zip(states, cands, scored):
        if s.success.any():
            j = int(np.flatnonzero(s.success)[np.argmin(s.order[s.success])])
            if scorer.exact:
                st.found, st.found_scores = cand[j], s.hits[j]
                st.queries -= int(s.order.max() - s.order[j])
            else:
                todo.append((st, j, cand[j], s))
    if not todo:
        return
    margin, ok, sc = scorer.confirm(np.array([st.index for st, *_ in todo]), np.stack([c for _, _, c, _ in todo]))
    for (st, j, c, s), m, good, scores in zip(todo, margin, ok, sc):
        st.queries += 1
        if good:
            st.found, st.found_scores = c, scores
            st.queries -= int(s.order.max() - s.order[j])
        else:
            s.fit[j] = m


def select(st: DEImage, child: np.ndarray, decoded: np.ndarray, fit: np.ndarray) -> None:
    """The paper's selection: a child replaces its parent if it is at least as good."""
    better = fit <= st.fit
    st.pop[better], st.fit[better] = child[better], fit[better]
    st.keys = [decoded[j].tobytes() if better[j] else st.keys[j] for j in range(len(fit))]
    st.generations += 1


def differential_evolution(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth: np.ndarray | None = None,
                           *, pixels: int = 1, popsize: int = 400, generations: int = 100, F: float = 0.5,
                           batch_size: int | None = None, seed: int = 0, precision: str = "float32",
                           compile: bool = False,
                           progress: bool = True, init: np.ndarray | None = None) -> AttackReport:
    """Attack every image that the pipeline gets right; return one result per image.

    ``images`` (N,H,W,3) uint8 are the clean photos of pipeline rows ``rows`` (default ``0..N-1``); ``truth``
    (N,S) bool defaults to ``pipeline.truth(rows)``. Budget per image: the initial population (``popsize``) plus
    ``generations`` generations of ``popsize`` children, fewer after an early stop or duplicate reuse.
    ``precision`` ("float32", "bfloat16", "float16") applies to the search only; a success found in a lower
    precision is re-checked by an fp32 pass on its uint8 image before the image stops.
    ``compile=True`` runs the search through ``torch.compile`` (see :meth:`PixelPipeline.compiled`); it pays only
    for long runs; its successes are re-checked in eager fp32.
    ``init`` (N, <=k, 5), optional: pixels to start member 0 of each image's population from (rows with x < 0
    are padding), e.g. the best pixels found with a smaller k.
    """
    t_start = time.perf_counter()
    if popsize < 4 or generations < 0:
        raise ValueError(f"{WHERE}: need popsize >= 4 (DE/rand/1 draws 3 others) and generations >= 0")
    inp = prepare_attack(pipeline, images, rows, truth, pixels, batch_size, WHERE)
    batch_size = inp.batch_size  # as given, else the device's fastest for this pipeline
    h, w = inp.shape
    k, upper = pixels, bounds(h, w, pixels)
    settings = dict(method="de", pixels=k, popsize=popsize, generations=generations, F=F, batch_size=batch_size,
                    channels_last=pipeline.channels_last, seed=seed, precision=precision, compile=compile,
                    strategy="DE/rand/1, no crossover, child replaces parent if <=")
    scorer = Scorer(pipeline, inp, batch_size, precision, compile)
    states = [DEImage(index=int(i), rng=(rng := np.random.default_rng([seed, int(inp.rows[i])])),
                      pop=initial_population(rng, popsize, h, w, k, None if init is None else init[i]))
              for i in np.flatnonzero(inp.attacked)]

    t_search = time.perf_counter()
    decoded = [decode(st.pop, k) for st in states]  # generation 0: the initial population, scored once
    scored = score_unique(scorer, states, decoded)
    settle(scorer, states, decoded, scored)
    for st, d, s in zip(states, decoded, scored):
        st.fit, st.keys = s.fit, [c.tobytes() for c in d]

    bar = tqdm(total=generations, desc=f"{k}-pixel DE", disable=not progress, leave=False)
    for _ in range(generations):
        active = [st for st in states if st.active]
        if not active:
            break
        children = [mutants(st.rng, st.pop, F, upper) for st in active]
        decoded = [decode(c, k) for c in children]
        scored = score_unique(scorer, active, decoded)
        settle(scorer, active, decoded, scored)
        for st, child, d, s in zip(active, children, decoded, scored):
            select(st, child, d, s.fit)
        bar.update(1)
        bar.set_postfix(active=len(active), solved=sum(not st.active for st in states))
    bar.close()
    search_seconds = time.perf_counter() - t_search

    # Final pixels: the confirmed success, else the population's best (scored in fp32 by assemble_report).
    final = {st.index: st.found if st.found is not None else decode(st.pop[np.argmin(st.fit)], k) for st in states}
    found = {st.index: st.found_scores for st in states if st.found is not None}
    return assemble_report(scorer, final, found, {st.index: st.queries for st in states},
                           {st.index: st.generations for st in states}, settings,
                           time.perf_counter() - t_start, search_seconds)


#: the name the notebooks use
few_pixel_attack = differential_evolution
