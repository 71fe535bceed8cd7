"""Batched sparse random search for few-pixel attacks, in the manner of Sparse-RS (Croce et al., AAAI 2022).

State per image: ``k`` distinct pixel positions and their colours, each colour a corner of the RGB cube (every
channel 0 or 255). Each step proposes changes that resample a fraction ``alpha`` of the k pixels: a pixel leaves
(its original colour comes back) and a new, currently unused position gets a new corner colour. A proposal is kept
when the margin loss (max true score - max other score) does not get worse; the search stops for an image as soon
as a proposal succeeds (confirmed in fp32). ``alpha`` starts at ``p_init`` and shrinks piecewise over the query
budget following Sparse-RS's L0 schedule, defined on 10,000 queries and rescaled to the budget.

Why several proposals per image and step: Sparse-RS sends one proposal per image per step. On a CPU a model call
costs far less per image in a large batch, so when few images remain active each sends ``candidates`` proposals
(all derived from the same current state; the best is kept if it is not worse), keeping the batch large.
The budget counts every proposal as a query, so the comparison with other searches stays per query.

Each image's RNG is seeded by ``(seed, row)``, so results do not depend on which images share the batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from .pipelines import PixelPipeline, Scorer, prepare_attack
from .results import AttackReport, assemble_report

__all__ = ["sparse_rs", "SparseImage", "alpha_schedule", "propose", "initial_pixels"]

WHERE = "utils/attack/sparse.py"

#: Sparse-RS's L0 schedule: alpha = p_init / divisor once more than ``breakpoint`` of 10,000 queries are used
_L0_SCHEDULE = ((0, 2), (50, 4), (200, 5), (500, 6), (1000, 8), (2000, 10), (4000, 12), (6000, 15), (8000, 20))


def alpha_schedule(used: int, budget: int, p_init: float = 0.3) -> float:
    """Fraction of the k pixels to resample after ``used`` of ``budget`` queries (Sparse-RS L0, rescaled)."""
    it = int(used / budget * 10000)
    alpha = p_init
    for breakpoint, divisor in _L0_SCHEDULE:
        if it > breakpoint:
            alpha = p_init / divisor
    return alpha


@dataclass
class SparseImage:
    """Search state of one image: its current best pixels and their margin."""

    index: int  # position in the attacked batch
    rng: np.random.Generator
    pixels: np.ndarray  # (k,5) int64: x, y, r, g, b, distinct positions, corner colours
    margin: float = np.inf
    queries: int = 0
    steps: int = 0
    found: np.ndarray | None = None  # (k,5) candidate confirmed as a success
    found_scores: np.ndarray | None = None

    @property
    def active(self) -> bool:
        return self.found is None


def _corner_colours(rng: np.random.Generator, original: np.ndarray) -> np.ndarray:
    """A corner of the RGB cube for each pixel (n,3), different from the pixel's original colour (else no change)."""
    colours = rng.integers(0, 2, original.shape) * 255
    same = (colours == original).all(1)
    while same.any():
        colours[same] = rng.integers(0, 2, (int(same.sum()), 3)) * 255
        same = (colours == original).all(1)
    return colours


def _fresh_positions(rng: np.random.Generator, n: int, taken: np.ndarray, h: int, w: int) -> np.ndarray:
    """``n`` distinct flat positions in [0, h*w) outside ``taken``, uniformly (rejection sampling: k << h*w)."""
    free = h * w - len(np.unique(taken))
    if n > free:
        raise ValueError(f"{WHERE}: cannot place {n} new pixels, only {free} positions are free")
    chosen: list[int] = []
    blocked = set(taken.tolist())
    while len(chosen) < n:
        for p in rng.integers(0, h * w, 2 * (n - len(chosen)) + 4).tolist():
            if p not in blocked:
                blocked.add(p)
                chosen.append(p)
                if len(chosen) == n:
                    break
    return np.array(chosen, dtype=np.int64)


def _pixels_at(image: np.ndarray, flat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixels (n,5) at flat positions with new corner colours."""
    h, w = image.shape[:2]
    y, x = flat // w, flat % w
    return np.column_stack([x, y, _corner_colours(rng, image[y, x].astype(np.int64))]).astype(np.int64)


def initial_pixels(rng: np.random.Generator, image: np.ndarray, k: int, init: np.ndarray | None = None) -> np.ndarray:
    """k distinct random positions with corner colours; ``init`` (<=k,5) rows, if given, are kept (rows with a
    negative x are padding; repeated positions are dropped) and the rest drawn at random."""
    h, w = image.shape[:2]
    keep = np.zeros((0, 5), np.int64)
    if init is not None:
        init = np.asarray(init, np.int64)
        init = init[init[:, 0] >= 0]
        _, first = np.unique(init[:, 1] * w + init[:, 0], return_index=True)
        keep = init[np.sort(first)][:k]
    taken = keep[:, 1] * w + keep[:, 0]
    return np.concatenate([keep, _pixels_at(image, _fresh_positions(rng, k - len(keep), taken, h, w), rng)])


def propose(rng: np.random.Generator, image: np.ndarray, pixels: np.ndarray, m: int) -> np.ndarray:
    """A copy of ``pixels`` (k,5) in which ``m`` of them moved to new unused positions with new corner colours."""
    h, w = image.shape[:2]
    out = pixels.copy()
    slots = rng.choice(len(pixels), size=m, replace=False)
    taken = pixels[:, 1] * w + pixels[:, 0]
    out[slots] = _pixels_at(image, _fresh_positions(rng, m, taken, h, w), rng)
    return out


def _step(scorer: Scorer, states: list[SparseImage], proposals: list[np.ndarray]) -> None:
    """Score every active image's proposals in shared batches; stop the images whose best successful proposal
    holds in fp32; for the others keep the best proposal when its margin is not worse than the current one."""
    idx = np.concatenate([np.full(len(p), st.index) for st, p in zip(states, proposals)]).astype(np.int64)
    margin, success, hits = scorer.search(idx, np.concatenate(proposals))
    bounds = np.cumsum([0] + [len(p) for p in proposals])
    fits = [margin[s:e].copy() for s, e in zip(bounds[:-1], bounds[1:])]
    todo = []
    for st, props, f, s in zip(states, proposals, fits, bounds):
        st.queries += len(props)
        st.steps += 1
        ok = success[s:s + len(props)]
        if ok.any():
            j = int(np.flatnonzero(ok)[0])  # the first query that fooled it; the ones after it do not count
            if scorer.exact:
                st.found, st.found_scores = props[j], hits[s + j]
                st.queries -= len(props) - 1 - j
            else:
                todo.append((st, props[j], f, j))
    if todo:
        m32, ok32, sc = scorer.confirm(np.array([st.index for st, *_ in todo]), np.stack([c for _, c, _, _ in todo]))
        for (st, cand, f, j), m, good, scores in zip(todo, m32, ok32, sc):
            st.queries += 1
            if good:
                st.found, st.found_scores = cand, scores
                st.queries -= len(f) - 1 - j
            else:  # a success of the cheap precision only: it competes with its fp32 margin
                f[j] = m
    for st, props, f in zip(states, proposals, fits):
        j = int(np.argmin(f))
        if st.active and f[j] <= st.margin:
            st.pixels, st.margin = props[j], float(f[j])


def sparse_rs(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth: np.ndarray | None = None, *,
              pixels: int = 1, queries: int = 1000, candidates: int = 4, p_init: float = 0.3,
              batch_size: int = 128, seed: int = 0, precision: str = "float32", compile: bool = False,
              progress: bool = True, init: np.ndarray | None = None) -> AttackReport:
    """Sparse random search changing at most ``pixels`` pixels per image, ``queries`` model queries per image.

    Same inputs and result as :func:`utils.attack.de.differential_evolution`: only the images the pipeline gets
    right are attacked, every success is confirmed in eager fp32 on its uint8 image. ``candidates``: proposals
    per image and step (1 = Sparse-RS exactly). ``init`` (N, <=k, 5): pixels to start from (e.g. the best pixels of
    a smaller k); their colours are kept as given.
    """
    t_start = time.perf_counter()
    if queries < 1 or candidates < 1 or not 0 < p_init <= 1:
        raise ValueError(f"{WHERE}: need queries >= 1, candidates >= 1 and 0 < p_init <= 1")
    inp = prepare_attack(pipeline, images, rows, truth, pixels, batch_size, WHERE)
    h, w = inp.shape
    k = pixels
    settings = dict(method="sparse", pixels=k, queries=queries, candidates=candidates, p_init=p_init,
                    schedule="Sparse-RS L0, rescaled to the budget", batch_size=batch_size, seed=seed,
                    precision=precision, compile=compile, colours="RGB cube corners",
                    acceptance="best proposal kept if margin <=")
    scorer = Scorer(pipeline, inp, batch_size, precision, compile)
    states = []
    for i in np.flatnonzero(inp.attacked):
        rng = np.random.default_rng([seed, int(inp.rows[i])])
        px = initial_pixels(rng, inp.images[i], k, None if init is None else init[i])
        states.append(SparseImage(index=int(i), rng=rng, pixels=px))

    t_search = time.perf_counter()
    if states:  # the starting pixels are the first query, as in Sparse-RS
        _step(scorer, states, [st.pixels[None] for st in states])
        for st in states:
            st.steps = 0
    bar = tqdm(total=queries, desc=f"{k}-pixel sparse search", disable=not progress, leave=False)
    while True:
        active = [st for st in states if st.active and st.queries < queries]
        if not active:
            break
        proposals = []
        for st in active:
            m = max(int(alpha_schedule(st.queries, queries, p_init) * k), 1)
            n = min(candidates, queries - st.queries)
            proposals.append(np.stack([propose(st.rng, inp.images[st.index], st.pixels, m) for _ in range(n)]))
        _step(scorer, active, proposals)
        bar.n = min(st.queries for st in active)
        bar.set_postfix(active=len(active), solved=sum(not st.active for st in states))
        bar.refresh()
    bar.close()
    search_seconds = time.perf_counter() - t_search

    final = {st.index: st.found if st.found is not None else st.pixels for st in states}
    found = {st.index: st.found_scores for st in states if st.found is not None}
    return assemble_report(scorer, final, found, {st.index: st.queries for st in states},
                           {st.index: st.steps for st in states}, settings, time.perf_counter() - t_start,
                           search_seconds)
