"""The two L0 searches of Sparse-AutoAttack: Sparse-RS (Croce et al., AAAI 2022), batched across images with
speculative proposals, and white-box Sparse-PGD (Zhong & Liu 2024, arXiv 2405.05075) (docs/attacks.md)."""

import time
from types import SimpleNamespace

import numpy as np
import torch

from .pipelines import AttackReport, PixelPipeline, Scorer, assemble_report, prepare_attack, to_input

WHERE = "utils/attack/sparse.py"

#: Sparse-RS's L0 schedule: alpha = p_init / divisor once more than ``breakpoint`` of 10,000 queries are used
_BREAKS = np.array([0, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])
_DIVISORS = np.array([1, 2, 4, 5, 6, 8, 10, 12, 15, 20], dtype=np.float64)
_SLOTS, _POSITIONS, _COLOURS = 1, 2, 3  # purposes of the random numbers of one query
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def alpha_schedule(used, budget: int, p_init: float = 0.3):
    """Fraction of the k pixels to resample after ``used`` (scalar or array) of ``budget`` queries."""
    it = (np.asarray(used) / budget * 10000).astype(np.int64)
    return p_init / _DIVISORS[np.searchsorted(_BREAKS, it, side="left")]


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 with full avalanche."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def random_bits(seed: int, rows, t, purpose: int, n: int) -> np.ndarray:
    """(len(rows), n) random uint64, a pure function of (seed, row, query number t, purpose, column)."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(rows, np.uint64) + _mix(np.uint64(seed) + _GOLD))
        h = _mix(h + np.asarray(t, np.uint64) * _GOLD + np.uint64(purpose))
        return _mix(h[:, None] + (np.arange(1, n + 1, dtype=np.uint64) * _GOLD)[None])


def _fresh_positions(bits_of, taken: np.ndarray, m: np.ndarray, hw: int) -> np.ndarray:
    """(P, max m) flat positions in [0, hw), distinct within a row and outside its ``taken`` (P, k), from the row's
    own random numbers ``bits_of(n, rows)``: rejection sampling from 2 m + 8 draws, else the exact free set."""
    p, big = len(taken), int(m.max(initial=0))
    n = 2 * big + 8
    draw = (bits_of(n, np.arange(p)) % np.uint64(hw)).astype(np.int64)  # (P, n)
    ok = ~(draw[:, :, None] == taken[:, None, :]).any(2) & (np.arange(n)[None] < 2 * m[:, None] + 8)
    order = np.argsort(draw, axis=1, kind="stable")
    sorted_ = np.take_along_axis(draw, order, 1)
    repeat = np.zeros_like(ok)
    np.put_along_axis(repeat, order[:, 1:], sorted_[:, 1:] == sorted_[:, :-1], 1)  # later copies of a value
    ok &= ~repeat
    pick = np.argsort(~ok, axis=1, kind="stable")[:, :big]  # the first acceptable draws, in draw order
    out = np.take_along_axis(draw, pick, 1)
    short = np.flatnonzero(ok.sum(1) < m)
    for r, key in zip(short, bits_of(hw, short) if len(short) else ()):
        if len(free := np.setdiff1d(np.arange(hw), taken[r])) < m[r]:
            raise ValueError(f"{WHERE}: cannot place {m[r]} new pixels, only {len(free)} positions are free")
        out[r, :m[r]] = free[np.argsort(key[free], kind="stable")[:m[r]]]
    return out


def _corners(bits: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Corner colours (..., 3) uniformly among the 8 corners of the RGB cube other than ``original`` (..., 3)."""
    is_corner = ((original == 0) | (original == 255)).all(-1)
    own = np.where(is_corner, (original[..., 0] > 0) * 4 + (original[..., 1] > 0) * 2 + (original[..., 2] > 0), 8)
    u = (bits % np.where(is_corner, 7, 8).astype(np.uint64)).astype(np.int64)
    c = u + (u >= own)
    return np.stack([(c >> 2) & 1, (c >> 1) & 1, c & 1], -1) * 255


def _pixels_at(images: np.ndarray, which: np.ndarray, flat: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Pixels (P, m, 5) at flat positions (P, m) of images ``images[which]`` with new corner colours."""
    y, x = np.divmod(flat, images.shape[2])
    original = images[which[:, None], y, x].astype(np.int64)
    return np.concatenate([x[..., None], y[..., None], _corners(bits, original)], -1)


def initial_pixels(image: np.ndarray, k: int, row: int = 0, seed: int = 0, init: np.ndarray | None = None
                   ) -> np.ndarray:
    """``init``'s pixels (x < 0 = padding), then fresh ones from query 0's randoms of ``row``, k in all."""
    h, w = image.shape[:2]
    init = np.zeros((0, 5), np.int64) if init is None else np.asarray(init, np.int64)
    init = init[init[:, 0] >= 0]
    _, first = np.unique(init[:, 1] * w + init[:, 0], return_index=True)
    keep = init[np.sort(first)][:k]
    taken = (keep[:, 1] * w + keep[:, 0])[None]
    flat = _fresh_positions(lambda n, _: random_bits(seed, [row], [0], _POSITIONS, n), taken,
                            np.array([k - len(keep)]), h * w)
    new = _pixels_at(image[None], np.zeros(1, np.int64), flat, random_bits(seed, [row], [0], _COLOURS, flat.shape[1]))
    return np.concatenate([keep, new[0]])


def propose(images: np.ndarray, owner: np.ndarray, pixels: np.ndarray, rows: np.ndarray, t: np.ndarray,
            m: np.ndarray, seed: int) -> np.ndarray:
    """Proposals (P, k, 5): proposal p moves ``m[p]`` of ``pixels[p]`` (on ``images[owner[p]]``) to new unused
    positions with new corner colours, drawing the random numbers of query ``t[p]`` of ``rows[p]``."""
    k, (h, w), big = pixels.shape[1], images.shape[1:3], int(m.max(initial=0))
    slots = np.argsort(random_bits(seed, rows, t, _SLOTS, k), axis=1)[:, :big]  # which pixels leave
    taken = pixels[..., 1] * w + pixels[..., 0]
    flat = _fresh_positions(lambda n, sel: random_bits(seed, rows[sel], t[sel], _POSITIONS, n), taken, m, h * w)
    new = _pixels_at(images, owner, flat, random_bits(seed, rows, t, _COLOURS, big))
    out, use = pixels.copy(), np.arange(big)[None] < m[:, None]
    out[np.nonzero(use)[0], slots[use]] = new[use]
    return out


def sparse_rs(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth: np.ndarray | None = None, *,
              pixels: int = 1, queries: int = 1000, candidates: int | None = None, p_init: float = 0.3,
              batch_size: int | None = None, seed: int = 0, precision: str = "float32", graph: str = "traced",
              init: np.ndarray | None = None) -> AttackReport:
    """Sparse-RS changing at most ``pixels`` pixels, ``queries`` per image; ``candidates`` caps proposals per call;
    proposals scored in ``precision`` through ``graph`` ("traced": frozen graphs), successes confirmed eagerly."""
    if queries < 1 or (candidates is not None and candidates < 1) or not 0 < p_init <= 1:
        raise ValueError(f"{WHERE}: need queries >= 1, candidates >= 1 and 0 < p_init <= 1")
    scorer = prepare_attack(pipeline, images, rows, truth, pixels, batch_size, WHERE, precision, graph)
    k = pixels
    settings = dict(method="sparse", pixels=k, queries=queries, candidates=candidates or "adaptive", p_init=p_init,
                    schedule="Sparse-RS L0, rescaled to the budget", batch_size=scorer.batch_size,
                    channels_last=pipeline.channels_last, seed=seed, precision=precision, graph=graph,
                    colours="RGB cube corners", acceptance="strict: kept only if the margin decreases (Sparse-RS)",
                    proposals="whole batches per call: one per active image, speculative ones spread evenly to "
                              "fill the last batch (same trajectory as one at a time)")
    idx = np.flatnonzero(scorer.attacked)  # attacked images, by position in the batch
    px = np.stack([initial_pixels(scorer.images[i], k, int(scorer.rows[i]), seed, None if init is None else init[i])
                   for i in idx]) if len(idx) else np.zeros((0, k, 5), np.int64)
    used, accepted, found = _search(scorer, idx, px, queries, candidates, p_init, seed)
    return assemble_report(scorer, {int(i): px[a] for a, i in enumerate(idx)}, found,
                           {int(i): int(used[a]) for a, i in enumerate(idx)},
                           {int(i): int(accepted[a]) - 1 for a, i in enumerate(idx)}, settings)


def _search(scorer: Scorer, idx: np.ndarray, px: np.ndarray, queries: int, candidates: int | None, p_init: float,
            seed: int):
    """Update ``px`` in place; return queries used, proposals accepted and confirmed successes' fp32 scores."""
    n, k = len(idx), px.shape[1]
    used = np.zeros(n, np.int64)  # queries per image (the starting pixels are the first, as in Sparse-RS)
    margin, accepted, done = np.full(n, np.inf), np.zeros(n, np.int64), np.zeros(n, bool)
    found, first = {}, True  # confirmed successes' fp32 scores; query 1 is the starting pixels
    while len(act := np.flatnonzero(~done & (used < queries))):
        if first or candidates is not None:
            per = 1 if first else candidates
        else:  # whole model batches, spread evenly: a call of 3 or a 3 + 2 split runs slower per image than 4 + 4
            total = -(-len(act) // scorer.batch_size) * scorer.batch_size
            per = total // len(act) + (np.arange(len(act)) < total % len(act))
        sizes = np.minimum(per, queries - used[act])
        owner, starts = np.repeat(act, sizes), np.cumsum(sizes) - sizes
        within = np.arange(len(owner)) - np.repeat(starts, sizes)  # each proposal's place among its image's
        if first:  # query 1: the starting pixels themselves
            cand, first = px[act], False
        else:
            t = used[owner] + within  # queries used before each proposal
            m = np.maximum((alpha_schedule(t, queries, p_init) * k).astype(np.int64), 1)
            cand = propose(scorer.images, idx[owner], px[owner], scorer.rows[idx[owner]], t, m, seed)
        f, ok, hits = scorer.search(idx[owner], cand)
        event = np.where(ok | (f < margin[owner]), within, np.iinfo(np.int64).max)  # strict: equal margins rejected
        j = np.minimum.reduceat(event, starts).clip(max=sizes)  # each image's first kept proposal (sizes: none)
        hit = j < sizes
        used[act] += np.where(hit, j + 1, sizes)
        at = starts[hit] + j[hit]  # the kept (or successful) proposal of each image that has one
        imgs, win = act[hit], ok[at]
        if win.any() and not scorer.exact:  # a success of a cheaper precision or a traced graph must hold eagerly
            f32, ok32, sc32 = scorer.confirm(idx[imgs[win]], cand[at[win]])
            used[imgs[win]] += 1
            f[at[win]] = f32
            hits = {int(a): s for a, s, good in zip(at[win], sc32, ok32) if good}
            win[win] = ok32  # only the confirmed ones
        found.update({int(idx[i]): hits[int(a)] for a, i in zip(at[win], imgs[win])})
        done[imgs[win]] = True
        better = ~win & (f[at] < margin[imgs])  # unconfirmed successes still count by their fp32 margin
        px[imgs[win | better]] = cand[at[win | better]]
        margin[imgs[better]] = f[at[better]]
        accepted[imgs[win | better]] += 1
    return used, accepted, found


# ------------------------------------------------------------------------ white-box Sparse-PGD
VARIANTS = ("unprojected", "projected")
STEP_COST = 3  # forward-equivalent queries of one forward + backward pass
ALPHA, BETA, PATIENCE = 0.25, 0.25, 3  # magnitude step, mask step (times sqrt(H W)), steps before a fresh mask


def project_mask(mask: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 mask (B,1,H,W) with ones at the k largest entries of ``mask`` (B,1,H,W) per image."""
    flat = mask.flatten(1)
    return torch.zeros_like(flat).scatter_(1, flat.topk(k, dim=1).indices, 1.0).view_as(mask)


class _Compose(torch.autograd.Function):
    """Forward: the masked pixels at their rounded colours; backward: straight through rounding and projection."""

    @staticmethod
    def forward(ctx, clean, p, soft, hard, p_route):
        colours = torch.round((clean + p) * 255).clamp_(0, 255) / 255
        ctx.save_for_backward(colours - clean, soft if p_route == "unprojected" else hard)
        return torch.where(hard > 0, colours, clean)

    @staticmethod
    def backward(ctx, grad):
        delta, route = ctx.saved_tensors
        return None, grad * route, (grad * delta).sum(1, keepdim=True), None, None


def _draw(rng: np.random.Generator, clean: np.ndarray, init: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The paper's fresh start: magnitude uniform in [-1, 1] clipped to the image's range, a standard normal mask;
    given pixels ``init`` (<=k,5; negative x = padding) come first in the mask, their colours as the magnitude."""
    x = clean.transpose(2, 0, 1).astype(np.float32) / 255
    p = np.clip(rng.uniform(-1, 1, x.shape).astype(np.float32), -x, 1 - x)
    mask = rng.standard_normal((1, *x.shape[1:])).astype(np.float32)
    if init is not None:
        init = np.asarray(init, np.int64)
        init = init[init[:, 0] >= 0]
        xs, ys = init[:, 0], init[:, 1]
        mask[0, ys, xs] = 10.0  # above any standard normal draw the other pixels get
        p[:, ys, xs] = (init[:, 2:5].T - clean[ys, xs].T.astype(np.float32)) / 255
    return p, mask


def sparse_pgd(pipeline: PixelPipeline, images: np.ndarray, rows=None, truth: np.ndarray | None = None, *,
               pixels: int = 1, steps: int = 100, restarts: int = 2, queries: int | None = None, seed: int = 0,
               batch_size: int = 16, init: np.ndarray | None = None) -> AttackReport:
    """Sparse-PGD changing at most ``pixels`` pixels per image: ``restarts`` runs of at most ``steps`` steps;
    ``queries`` count forward-equivalents (``STEP_COST`` per step, 1 per confirmation) and, if given, set ``steps``."""
    if queries is not None:
        steps = int(queries) // (STEP_COST * max(int(restarts), 1))
    if steps < 1 or restarts < 1:
        raise ValueError(f"{WHERE}: need steps >= 1 (queries >= {STEP_COST * max(restarts, 1)}) and restarts >= 1")
    scorer = prepare_attack(pipeline, images, rows, truth, pixels, batch_size, WHERE)
    settings = dict(method="sparse-pgd", pixels=pixels, steps=steps, restarts=restarts,
                    variants=[VARIANTS[r % 2] for r in range(restarts)], alpha=ALPHA, beta=BETA,
                    patience=PATIENCE, loss="margin of the scores", step_cost=STEP_COST,
                    queries_counted=f"{STEP_COST} per step (forward + backward), 1 per fp32 confirmation",
                    colours="rounded to uint8 in every forward pass", batch_size=batch_size, seed=seed,
                    precision="float32")
    todo, n = np.flatnonzero(scorer.attacked), len(scorer.images)
    books = SimpleNamespace(  # per image (position in the batch): RNG, cost, steps, best margin and pixels
        rngs={int(i): np.random.default_rng([seed, int(scorer.rows[i])]) for i in todo},
        spent=np.zeros(n, np.int64), taken=np.zeros(n, np.int64), best=np.full(n, np.inf),
        final={}, found={})  # final, found: pixels and confirmed scores of the attacked images
    for r in range(restarts):
        left = np.setdiff1d(todo, list(books.found))  # not fooled yet
        for s in range(0, len(left), batch_size):
            _run(scorer, books, left[s:s + batch_size], VARIANTS[r % 2], steps, pixels, init if r == 0 else None)
    return assemble_report(scorer, books.final, books.found, {int(i): int(books.spent[i]) for i in todo},
                           {int(i): int(books.taken[i]) for i in todo}, settings)


def _run(scorer: Scorer, books: SimpleNamespace, ids: np.ndarray, variant: str, steps: int, k: int, init) -> None:
    """One restart on images ``ids`` (positions in the attacked batch): each leaves when its success holds in fp32."""
    pipeline, dev = scorer.pipeline, scorer.pipeline.device
    draws = [_draw(books.rngs[int(i)], scorer.images[i], None if init is None else init[i]) for i in ids]
    clean = to_input(scorer.images[ids], dev, pipeline.channels_last)
    p, mask = (torch.from_numpy(np.stack(a)).to(dev) for a in zip(*draws))
    p = p.contiguous(memory_format=torch.channels_last) if pipeline.channels_last else p  # the clean image's layout
    rows = torch.as_tensor(scorer.rows[ids], device=dev)
    still = np.zeros(len(ids), np.int64)  # steps for which the projected mask has not changed
    h, w = scorer.images.shape[1:3]
    for _ in range(steps):
        p.requires_grad_(True)
        mask.requires_grad_(True)
        with torch.enable_grad():
            soft = torch.sigmoid(mask)
            hard = project_mask(mask.detach(), k)  # the order of sigmoid(m~), without its float32 ties at 1.0
            x = _Compose.apply(clean, p, soft, hard, variant)
            truth = torch.as_tensor(scorer.truth[ids], device=dev)
            t0 = time.perf_counter()
            scores, margin, g_p, g_m = _margin_gradients(pipeline, x, rows, truth, p, mask)
            scorer.model_seconds += time.perf_counter() - t0
        scorer.queries += STEP_COST * len(ids)
        with torch.no_grad():
            p, mask = p.detach(), mask.detach()
            hit = (~truth.gather(1, scores.argmax(1, keepdim=True)).squeeze(1)).cpu().numpy()  # not a true entry
            done = _record(scorer, books, ids, _candidates(x, hard, k), margin.detach().cpu().numpy(), hit)
            # descend the margin: signed step for the magnitude, normalised step for the continuous mask
            p = torch.minimum(torch.maximum(p - ALPHA * g_p.sign(), -clean), 1 - clean)
            mask = mask - BETA * np.sqrt(h * w) * g_m / g_m.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
            still = np.where((project_mask(mask, k) == hard).flatten(1).all(1).cpu().numpy(), still + 1, 0)
            for j in np.flatnonzero((still >= PATIENCE) & ~done):  # the paper's random re-initialisation
                fresh = books.rngs[int(ids[j])].standard_normal((1, h, w)).astype(np.float32)
                mask[j] = torch.from_numpy(fresh).to(dev)
                still[j] = 0
            if not len(keep := np.flatnonzero(~done)):
                return
            if len(keep) < len(ids):
                kt = torch.as_tensor(keep, device=dev)
                ids, still = ids[keep], still[keep]
                clean, p, mask, rows = clean[kt], p[kt], mask[kt], rows[kt]


def _record(scorer: Scorer, books: SimpleNamespace, ids: np.ndarray, cands: np.ndarray, margin: np.ndarray,
            hit: np.ndarray) -> np.ndarray:
    """Book one step's cost and best candidates; confirm its successes in fp32; which images are done."""
    books.spent[ids] += STEP_COST
    books.taken[ids] += 1
    better = margin < books.best[ids]
    books.best[ids[better]] = margin[better]
    books.final.update(zip(ids[better].tolist(), cands[better]))
    done = np.zeros(len(ids), bool)
    if len(j_hit := np.flatnonzero(hit)):
        _, ok, sc = scorer.confirm(ids[j_hit], cands[j_hit])
        books.spent[ids[j_hit]] += 1
        done[j_hit[ok]] = True
        books.final.update(zip(ids[j_hit[ok]].tolist(), cands[j_hit[ok]]))
        books.found.update(zip(ids[j_hit[ok]].tolist(), sc[ok]))
    return done


def _margin_gradients(pipeline: PixelPipeline, x, rows, truth, p, mask):
    """Scores, margins and their gradients for p and the mask, or an error naming a non-differentiable pipeline."""
    why = (f"{WHERE}: {type(pipeline).__name__}.scores is not differentiable from the pixels, so the white-box "
           "attack cannot run on it (use method='sparse' for this pipeline)")
    try:  # a tensor made under inference_mode, or a detour through numpy, breaks the graph with a RuntimeError
        scores = pipeline.scores(x, rows).float()
        neg = torch.tensor(-torch.inf, device=scores.device, dtype=scores.dtype)  # the margin, differentiable
        margin = torch.where(truth, scores, neg).amax(1) - torch.where(truth, neg, scores).amax(1)
        g_p, g_m = torch.autograd.grad(margin.sum(), (p, mask), allow_unused=True)
    except RuntimeError as e:
        raise ValueError(f"{why}: {e}") from e
    if g_p is None or g_m is None:
        raise ValueError(why)
    return scores, margin, g_p, g_m


def _candidates(x: torch.Tensor, hard: torch.Tensor, k: int) -> np.ndarray:
    """The (B,k,5) pixels of each scored image: the mask's k positions with their uint8 colours."""
    b, _, h, w = hard.shape
    pos = hard.flatten(1).topk(k, dim=1).indices  # the k ones
    colours = torch.round(x.flatten(2) * 255).to(torch.int64).gather(2, pos[:, None, :].expand(b, 3, k))
    pos = pos.cpu().numpy()
    return np.concatenate([np.stack([pos % w, pos // w], -1), colours.permute(0, 2, 1).cpu().numpy()], -1)
